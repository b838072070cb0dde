/*
Copyright The Tagger Authors.

Licensed under the Apache License, Version 2.0 (the "License");
you may not use this file except in compliance with the License.
You may obtain a copy of the License at

    http://www.apache.org/licenses/LICENSE-2.0

Unless required by applicable law or agreed to in writing, software
distributed under the License is distributed on an "AS IS" BASIS,
WITHOUT WARRANTIES OR CONDITIONS OF ANY KIND, either express or implied.
See the License for the specific language governing permissions and
limitations under the License.
*/

package importer

import (
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"net/url"
	"os"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/docker/distribution/registry/api/errcode"
	v2 "github.com/docker/distribution/registry/api/v2"
	"go.podman.io/image/v5/docker"
	"go.podman.io/image/v5/docker/reference"
)

func TestPermanent(t *testing.T) {
	dial := func(errno syscall.Errno) error {
		return &net.OpError{Op: "dial", Net: "tcp", Addr: &net.TCPAddr{IP: net.IPv4(10, 0, 0, 1), Port: 443}, Err: os.NewSyscallError("connect", errno)}
	}
	urlErr := func(err error) error { return &url.Error{Op: "Get", URL: "https://r.example/v2/", Err: err} }
	wrap := func(err error) error {
		return &importError{op: "resolving r.example/app:v1", err: fmt.Errorf("pinging container registry r.example: %w", err)}
	}
	for _, tc := range []struct {
		name string
		err  error
		want bool
	}{
		{"nil", nil, false},
		{"marked", NewPermanent(errors.New("no mirror configured")), true},
		{"marked and wrapped", fmt.Errorf("x: %w", NewPermanent(io.EOF)), true},
		{"policy", wrap(&PolicyError{Subject: "connection to 10.0.0.1:443", Why: "it matches deny-list entry"}), true},
		{"manifest unknown code", wrap(v2.ErrorCodeManifestUnknown), true},
		{"manifest unknown error", wrap(v2.ErrorCodeManifestUnknown.WithMessage("manifest unknown")), true},
		{"name unknown", wrap(errcode.Errors{v2.ErrorCodeNameUnknown.WithDetail("x")}), true},
		{"name invalid", wrap(v2.ErrorCodeNameInvalid), true},
		{"unauthorized", wrap(docker.ErrUnauthorizedForCredentials{Err: errcode.ErrorCodeUnauthorized}), true},
		{"denied", wrap(errcode.ErrorCodeDenied.WithMessage("requested access to the resource is denied")), true},
		{"HTTP 404", wrap(docker.UnexpectedHTTPStatusError{StatusCode: 404}), true},
		{"HTTP 403", wrap(docker.UnexpectedHTTPStatusError{StatusCode: 403}), true},
		{"HTTP 400", wrap(docker.UnexpectedHTTPStatusError{StatusCode: 400}), true},
		{"invalid reference", wrap(reference.ErrReferenceInvalidFormat), true},
		{"name too long", wrap(reference.ErrNameTooLong), true},
		{"DNS not found", wrap(urlErr(&net.OpError{Op: "dial", Err: &net.DNSError{Err: "no such host", Name: "nowhere.example", IsNotFound: true}})), true},
		{"untrusted certificate", wrap(urlErr(x509.UnknownAuthorityError{})), true},
		{"plain http", wrap(urlErr(errors.New("http: server gave HTTP response to HTTPS client"))), true},

		{"HTTP 500", wrap(docker.UnexpectedHTTPStatusError{StatusCode: 500}), false},
		{"HTTP 503", wrap(docker.UnexpectedHTTPStatusError{StatusCode: 503}), false},
		{"HTTP 429", wrap(docker.UnexpectedHTTPStatusError{StatusCode: 429}), false},
		{"HTTP 408", wrap(docker.UnexpectedHTTPStatusError{StatusCode: 408}), false},
		{"too many requests", wrap(docker.ErrTooManyRequests), false},
		{"too many requests code", wrap(errcode.ErrorCodeTooManyRequests.WithMessage("slow down")), false},
		{"unavailable", wrap(errcode.ErrorCodeUnavailable), false},
		{"unknown code", wrap(errcode.ErrorCodeUnknown.WithMessage("storage backend hiccup")), false},
		{"upload unknown", wrap(v2.ErrorCodeBlobUploadUnknown), false},
		{"connection refused", wrap(urlErr(dial(syscall.ECONNREFUSED))), false},
		{"connection reset", wrap(urlErr(dial(syscall.ECONNRESET))), false},
		{"DNS temporary", wrap(urlErr(&net.DNSError{Err: "server misbehaving", Name: "r.example", IsTemporary: true})), false},
		{"DNS timeout", wrap(&net.DNSError{Err: "i/o timeout", Name: "r.example", IsTimeout: true}), false},
		{"deadline", wrap(urlErr(context.DeadlineExceeded)), false},
		{"canceled", wrap(context.Canceled), false},
		{"EOF", wrap(urlErr(io.EOF)), false},
		{"unexpected EOF", wrap(io.ErrUnexpectedEOF), false},
		{"unknown", wrap(errors.New("something odd")), false},
		// The outermost decided error wins: a timeout talking to a token
		// server that had answered 401 before is still a timeout.
		{"outermost wins", wrap(fmt.Errorf("%w: %w", context.DeadlineExceeded, docker.UnexpectedHTTPStatusError{StatusCode: 401})), false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := Permanent(tc.err); got != tc.want {
				t.Errorf("Permanent(%v) = %v, want %v", tc.err, got, tc.want)
			}
		})
	}
}

func TestNewPermanentKeepsChain(t *testing.T) {
	base := &net.DNSError{Err: "no such host", Name: "x", IsNotFound: true}
	err := NewPermanent(fmt.Errorf("mirror: %w", base))
	var dns *net.DNSError
	if !errors.As(err, &dns) || dns != base || err.Error() != "mirror: lookup x: no such host" {
		t.Errorf("NewPermanent changed the error: %v", err)
	}
	if NewPermanent(nil) != nil {
		t.Error("NewPermanent(nil) != nil")
	}
}

func TestRetryAfter(t *testing.T) {
	if d := RetryAfter(docker.UnexpectedHTTPStatusError{StatusCode: 429}); d != 0 {
		t.Errorf("RetryAfter without header = %s", d)
	}
	err := &importError{op: "resolving x", err: WithRetryAfter(docker.ErrTooManyRequests, 7*time.Second)}
	if d := RetryAfter(err); d != 7*time.Second {
		t.Errorf("RetryAfter = %s, want 7s", d)
	}
	if Permanent(err) {
		t.Error("429 with Retry-After is permanent")
	}
	if WithRetryAfter(nil, time.Second) != nil {
		t.Error("WithRetryAfter(nil) != nil")
	}
}

func TestReasonDescribes(t *testing.T) {
	long := strings.Repeat("blah ", 8000)
	for _, tc := range []struct {
		name string
		err  error
		want string
		not  []string
	}{
		{"manifest unknown", &importError{op: "resolving r/app:v1", err: fmt.Errorf("reading manifest v1 in r/app: %w", v2.ErrorCodeManifestUnknown)},
			"resolving r/app:v1: reading manifest v1 in r/app: manifest unknown", nil},
		{"unauthorized", &importError{op: "resolving r/app:v1", err: docker.ErrUnauthorizedForCredentials{Err: errcode.ErrorCodeUnauthorized.WithMessage("authentication required")}},
			"resolving r/app:v1: unable to retrieve auth token: invalid username/password: unauthorized: authentication required", nil},
		{"errcode message bounded", &importError{op: "resolving r/app:v1", err: errcode.ErrorCodeDenied.WithMessage(long)},
			"", []string{strings.Repeat("blah ", 100)}},
		{"HTTP status without server text", &importError{op: "resolving r/app:v1", err: fmt.Errorf("reading manifest: %w", docker.UnexpectedHTTPStatusError{StatusCode: 502})},
			"resolving r/app:v1: reading manifest: registry answered HTTP 502 (Bad Gateway)", nil},
		{"policy", &importError{op: "resolving r/app:v1", err: &PolicyError{Subject: "connection to 10.0.0.1:80", Why: `it matches deny-list entry "10.0.0.0/8"`, URL: "http://10.0.0.1/token"}},
			`resolving r/app:v1: connection to 10.0.0.1:80 is not allowed: it matches deny-list entry "10.0.0.0/8"; needed for http://10.0.0.1/token`, nil},
		{"network", &importError{op: "resolving r/app:v1", err: &url.Error{Op: "Get", URL: "https://u:pw@r.example/v2/?_state=abc", Err: &net.OpError{Op: "dial", Net: "tcp", Addr: &net.TCPAddr{IP: net.IPv4(10, 0, 0, 1), Port: 443}, Err: os.NewSyscallError("connect", syscall.ECONNREFUSED)}}},
			`resolving r/app:v1: Get "https://r.example/v2/?<redacted>": dial tcp 10.0.0.1:443: connect: connection refused`, nil},
		{"bearer token body", &importError{op: "resolving r/app:v1", err: fmt.Errorf(`decoding bearer token (last URL "https://auth.example/token", body start "{\"secret\":\"internal-data\"..."): %w`, errors.New("unexpected end of JSON input"))},
			`resolving r/app:v1: decoding bearer token (last URL "https://auth.example/token"): unexpected end of JSON input`, []string{"internal-data"}},
		{"status body", &importError{op: "resolving r/app:v1", err: errors.New(`reading manifest: StatusCode: 400, "internal-data here"`)},
			"resolving r/app:v1: reading manifest: StatusCode: 400", []string{"internal-data"}},
		{"joined", errors.Join(errors.New("first"), &PolicyError{Subject: "registry x", Why: "no"}), "first; registry x is not allowed: no", nil},
		{"nil", nil, "", nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got := Reason(tc.err)
			if tc.want != "" && got != tc.want {
				t.Errorf("Reason\n got %q\nwant %q", got, tc.want)
			}
			for _, n := range tc.not {
				if strings.Contains(got, n) {
					t.Errorf("Reason %q contains %q", got, n)
				}
			}
			if tc.err != nil && strings.Contains(tc.err.Error(), "internal-data") {
				t.Errorf("Error() %q carries the body", tc.err.Error())
			}
			if len(got) > 1024 {
				t.Errorf("Reason is %d bytes", len(got))
			}
		})
	}
}

func TestCheckConn(t *testing.T) {
	a := func(s ...string) []netip.Addr {
		var out []netip.Addr
		for _, x := range s {
			out = append(out, netip.MustParseAddr(x))
		}
		return out
	}
	for _, tc := range []struct {
		name        string
		allow, deny []string
		host        string
		port        int
		addrs       []netip.Addr
		skipAllow   bool
		wantErr     string
	}{
		{name: "default allows", host: "registry.example.com", port: 443, addrs: a("3.3.3.3")},
		{name: "metadata", host: "registry.example.com", port: 443, addrs: a("169.254.169.254"), wantErr: "always-denied"},
		{name: "metadata via NAT64", host: "x.example", port: 80, addrs: a("64:ff9b::a9fe:a9fe"), wantErr: "always-denied"},
		{name: "unspecified", host: "0.0.0.0", port: 5000, addrs: a("0.0.0.0"), wantErr: "always-denied"},
		{name: "unspecified v6", host: "::", port: 5000, addrs: a("::"), wantErr: "always-denied"},
		{name: "metadata even for the mirror", host: "mirror.example", port: 443, addrs: a("169.254.169.254"), skipAllow: true, wantErr: "always-denied"},
		{name: "deny IP:port", deny: []string{"127.0.0.1:5001"}, host: "127.0.0.1", port: 5001, addrs: a("127.0.0.1"), wantErr: `deny-list entry "127.0.0.1:5001"`},
		{name: "deny IP:port other port", deny: []string{"127.0.0.1:5001"}, host: "127.0.0.1", port: 5002, addrs: a("127.0.0.1")},
		{name: "deny IP:port by resolved name", deny: []string{"127.0.0.1:5001"}, host: "rebind.example", port: 5001, addrs: a("127.0.0.1"), wantErr: "deny-list"},
		{name: "deny even for the mirror", deny: []string{"10.0.0.0/8"}, host: "mirror.example", port: 443, addrs: a("10.1.1.1"), skipAllow: true, wantErr: "deny-list"},
		{name: "allow list", allow: []string{"quay.io"}, host: "cdn.quay.io", port: 443, addrs: a("3.3.3.3"), wantErr: "no allow-list entry"},
		{name: "allow list skipped for the mirror", allow: []string{"quay.io"}, host: "mirror.example", port: 443, addrs: a("3.3.3.3"), skipAllow: true},
		{name: "docker.io means registry-1.docker.io", allow: []string{"docker.io"}, host: "registry-1.docker.io", port: 443, addrs: a("4.4.4.4")},
		{name: "docker.io is not auth.docker.io", allow: []string{"docker.io"}, host: "auth.docker.io", port: 443, addrs: a("4.4.4.5"), wantErr: "no allow-list entry"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := Policy{Allow: tc.allow, Deny: tc.deny}.checkConn(tc.host, tc.port, tc.addrs, tc.skipAllow)
			switch {
			case tc.wantErr == "" && err != nil:
				t.Errorf("checkConn = %v, want nil", err)
			case tc.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tc.wantErr)):
				t.Errorf("checkConn = %v, want an error containing %q", err, tc.wantErr)
			case err != nil:
				var pe *PolicyError
				if !errors.As(err, &pe) || !strings.Contains(err.Error(), "connection to ") || !Permanent(err) {
					t.Errorf("checkConn error %#v is not a permanent PolicyError naming the connection", err)
				}
			}
		})
	}
}

func TestOwnHost(t *testing.T) {
	for _, tc := range []struct {
		mirror   string
		insecure bool
		host     string
		port     int
		want     bool
	}{
		{"", false, "x", 443, false},
		{"mirror.example:5000", false, "mirror.example", 5000, true},
		{"mirror.example:5000", false, "MIRROR.example", 5000, true},
		{"mirror.example:5000", false, "mirror.example", 443, false},
		{"mirror.example:5000", false, "other.example", 5000, false},
		{"mirror.example", false, "mirror.example", 443, true},
		{"mirror.example", false, "mirror.example", 80, false},
		{"mirror.example", true, "mirror.example", 80, true},
		{"docker.io", false, "registry-1.docker.io", 443, true},
		{"[::1]:5000", false, "::1", 5000, true},
	} {
		if got := ownHost(tc.mirror, tc.insecure)(tc.host, tc.port); got != tc.want {
			t.Errorf("ownHost(%q, %v)(%q, %d) = %v, want %v", tc.mirror, tc.insecure, tc.host, tc.port, got, tc.want)
		}
	}
}

func TestValidateMirrorRepository(t *testing.T) {
	ok := "mirror.example:5000/" + strings.Repeat("a", MaxRepositoryLength-len("mirror.example:5000/"))
	if err := ValidateMirrorRepository(ok); err != nil {
		t.Errorf("%d characters: %v", len(ok), err)
	}
	for _, bad := range []string{ok + "b", "mirror.example/app:v1", "Mirror.example/UPPER", ""} {
		err := ValidateMirrorRepository(bad)
		if err == nil || !Permanent(err) {
			t.Errorf("ValidateMirrorRepository(%.40q) = %v, want a permanent error", bad, err)
		}
	}
	if err := ValidateMirrorRepository(ok + "b"); !strings.Contains(err.Error(), "255") {
		t.Errorf("error %q does not state the limit", err)
	}
}
