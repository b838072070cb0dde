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
	"errors"
	"fmt"
	"net/netip"
	"strings"
	"testing"

	"go.podman.io/image/v5/docker"
)

func TestNormalize(t *testing.T) {
	const d = "sha256:" + "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"
	for _, tc := range []struct{ in, want string }{
		{"nginx", "docker.io/library/nginx:latest"},
		{"nginx:1.27", "docker.io/library/nginx:1.27"},
		{"library/nginx", "docker.io/library/nginx:latest"},
		{"docker.io/nginx", "docker.io/library/nginx:latest"},
		{"user/app", "docker.io/user/app:latest"},
		{"registry.example.com/org/app", "registry.example.com/org/app:latest"},
		{"localhost:5000/app:v1", "localhost:5000/app:v1"},
		{" 127.0.0.1:5000/a/b/c ", "127.0.0.1:5000/a/b/c:latest"},
		{"nginx@" + d, "docker.io/library/nginx@" + d},
		{"registry.example.com/org/app:v1@" + d, "registry.example.com/org/app:v1@" + d},
	} {
		got, err := Normalize(tc.in)
		if err != nil || got != tc.want {
			t.Errorf("Normalize(%q) = %q, %v; want %q", tc.in, got, err, tc.want)
		}
	}
	for _, bad := range []string{"", "UPPER/case", "nginx:", "a@sha256:short", "http://registry.example.com/app"} {
		if got, err := Normalize(bad); err == nil {
			t.Errorf("Normalize(%q) = %q, want an error", bad, got)
		}
	}
}

func TestPolicy(t *testing.T) {
	dns := map[string][]string{
		"metadata.internal":    {"169.254.169.254"},
		"sneaky.example.com":   {"10.0.0.5", "fd00:ec2::254"},
		"mapped.example.com":   {"::ffff:169.254.1.1"},
		"registry.example.com": {"3.3.3.3"},
		"registry-1.docker.io": {"4.4.4.4"},
		"a.corp.example":       {"10.1.2.3"},
		"b.corp.example":       {"10.1.2.4", "8.8.8.8"},
		"localhost":            {"127.0.0.1", "::1"},
		"v6.example.com":       {"2001:db8::1", "fe80::1"},
	}
	lookup := func(_ context.Context, host string) ([]netip.Addr, error) {
		ips, ok := dns[host]
		if !ok {
			return nil, fmt.Errorf("no such host %s", host)
		}
		var out []netip.Addr
		for _, ip := range ips {
			out = append(out, netip.MustParseAddr(ip))
		}
		return out, nil
	}
	for _, tc := range []struct {
		name        string
		allow, deny []string
		ref         string
		wantErr     string // substring; empty means allowed
	}{
		{name: "metadata IP", ref: "169.254.169.254/x", wantErr: "link-local"},
		{name: "metadata IP with port", ref: "169.254.169.254:80/x:v1", wantErr: "link-local"},
		{name: "name resolving to metadata", ref: "metadata.internal/x", wantErr: "link-local"},
		{name: "one bad address is enough", ref: "sneaky.example.com/x", wantErr: "fd00:ec2::254"},
		{name: "IPv4-mapped", ref: "mapped.example.com/x", wantErr: "link-local"},
		{name: "IPv6 link-local", ref: "v6.example.com/x", wantErr: "fe80::/10"},
		// containers/image's reference grammar has no IPv6 literals.
		{name: "IPv6 literal", ref: "[fe80::1]:5000/x", wantErr: "invalid image reference"},
		{name: "link-local beats allow", allow: []string{"169.254.0.0/16", "*"}, ref: "169.254.169.254/x", wantErr: "link-local"},
		{name: "default allows", ref: "registry.example.com/org/app"},
		{name: "docker hub", ref: "nginx"},
		{name: "loopback allowed by default", ref: "127.0.0.1:5000/x"},
		{name: "unresolvable not refused here", ref: "nowhere.example/x"},
		{name: "allow host", allow: []string{"registry.example.com"}, ref: "registry.example.com/x"},
		{name: "allow host refuses others", allow: []string{"registry.example.com"}, ref: "other.example.com/x", wantErr: "no allow-list entry"},
		{name: "allow docker.io", allow: []string{"docker.io"}, ref: "nginx"},
		{name: "allow wildcard", allow: []string{"*.corp.example"}, ref: "a.corp.example/x"},
		{name: "wildcard is one label", allow: []string{"*.example"}, ref: "a.corp.example/x", wantErr: "no allow-list entry"},
		{name: "allow port", allow: []string{"localhost:5000"}, ref: "localhost:5000/x"},
		{name: "allow port refuses other port", allow: []string{"localhost:5000"}, ref: "localhost:5001/x", wantErr: "no allow-list entry"},
		{name: "allow without port takes any port", allow: []string{"localhost"}, ref: "localhost:5001/x"},
		{name: "allow CIDR", allow: []string{"10.0.0.0/8"}, ref: "a.corp.example/x"},
		{name: "allow CIDR needs every address", allow: []string{"10.0.0.0/8"}, ref: "b.corp.example/x", wantErr: "no allow-list entry"},
		{name: "allow CIDR unresolvable", allow: []string{"10.0.0.0/8"}, ref: "nowhere.example/x", wantErr: "no allow-list entry"},
		{name: "allow IP literal", allow: []string{"127.0.0.1"}, ref: "127.0.0.1:5000/x"},
		{name: "deny host", deny: []string{"registry.example.com"}, ref: "registry.example.com/x", wantErr: `deny-list entry "registry.example.com"`},
		{name: "deny beats allow", allow: []string{"*.corp.example"}, deny: []string{"a.corp.example"}, ref: "a.corp.example/x", wantErr: "deny-list"},
		{name: "deny CIDR any address", deny: []string{"8.8.8.0/24"}, ref: "b.corp.example/x", wantErr: "deny-list"},
		{name: "deny loopback", deny: []string{"127.0.0.0/8", "::1/128"}, ref: "localhost:5000/x", wantErr: "deny-list"},
		{name: "deny other", deny: []string{"other.example.com"}, ref: "registry.example.com/x"},
		{name: "invalid reference", ref: "Not A Ref", wantErr: "invalid image reference"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := Policy{Allow: tc.allow, Deny: tc.deny, LookupIP: lookup}
			err := p.Check(tc.ref)
			switch {
			case tc.wantErr == "" && err != nil:
				t.Errorf("Check(%q) = %v, want nil", tc.ref, err)
			case tc.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tc.wantErr)):
				t.Errorf("Check(%q) = %v, want an error containing %q", tc.ref, err, tc.wantErr)
			}
		})
	}
}

func TestIsAuthError(t *testing.T) {
	for _, tc := range []struct {
		err  error
		want bool
	}{
		{nil, false},
		{docker.ErrUnauthorizedForCredentials{Err: errors.New("x")}, true},
		{fmt.Errorf("wrapped: %w", docker.ErrUnauthorizedForCredentials{Err: errors.New("x")}), true},
		{docker.UnexpectedHTTPStatusError{StatusCode: 403}, true},
		{docker.UnexpectedHTTPStatusError{StatusCode: 500}, false},
		{errors.New(`reading digest latest in x: StatusCode: 403, ""`), true},
		{errors.New(`reading digest latest in x: StatusCode: 404, ""`), false},
		{context.Canceled, false},
		{errors.New("dial tcp 127.0.0.1:1: connect: connection refused"), false},
	} {
		if got := isAuthError(tc.err); got != tc.want {
			t.Errorf("isAuthError(%v) = %v, want %v", tc.err, got, tc.want)
		}
	}
}

func TestImportErrorRedacts(t *testing.T) {
	cred := &Credential{Username: "someuser", Password: "hunter22", Token: "tok-abcdef"}
	inner := docker.ErrUnauthorizedForCredentials{Err: errors.New("server said: hunter22 / tok-abcdef / " + "c29tZXVzZXI6aHVudGVyMjI=" + " for someuser")}
	err := error(&importError{op: "resolving x", err: fmt.Errorf("ctx: %w", inner), secrets: cred.Secrets()})
	for _, text := range []string{err.Error(), Reason(err)} {
		for _, s := range []string{"hunter22", "tok-abcdef", "c29tZXVzZXI6aHVudGVyMjI=", "someuser"} {
			if strings.Contains(text, s) {
				t.Errorf("%q still contains %q", text, s)
			}
		}
	}
	if !isAuthError(err) || !Permanent(err) {
		t.Error("redaction lost the error's type")
	}
	if (*Credential)(nil).Secrets() != nil {
		t.Error("nil credential has secrets")
	}
}

func TestMirrorTag(t *testing.T) {
	if got := MirrorTag("sha256:abc"); got != "tagger-sha256-abc" {
		t.Errorf("MirrorTag = %s", got)
	}
}
