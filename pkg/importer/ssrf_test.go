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

package importer_test

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"tagger.dev/tagger/pkg/importer"
)

// deniedTarget is a listener standing for an address imports must never
// reach (a metadata service, an internal admin port): it counts the
// connections it accepts.
type deniedTarget struct {
	addr     string
	accepted atomic.Int32
}

func newDeniedTarget(t *testing.T) *deniedTarget {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	d := &deniedTarget{addr: l.Addr().String()}
	srv := &http.Server{
		Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			// What a secret internal service would answer.
			_, _ = w.Write([]byte(`{"token":"internal-secret-from-denied-port"}`))
		}),
		ConnState: func(_ net.Conn, s http.ConnState) {
			if s == http.StateNew {
				d.accepted.Add(1)
			}
		},
		ReadHeaderTimeout: 10 * time.Second,
	}
	go func() { _ = srv.Serve(l) }()
	t.Cleanup(func() { _ = srv.Close() })
	return d
}

// check fails the test if the denied target was reached.
func (d *deniedTarget) check(t *testing.T) {
	t.Helper()
	time.Sleep(20 * time.Millisecond) // let a racing connection be counted
	if n := d.accepted.Load(); n != 0 {
		t.Errorf("the denied address %s accepted %d connections", d.addr, n)
	}
}

// wantPolicyRefusal checks that err is a permanent policy refusal naming
// the refused host:port, in its text and in its Reason.
func wantPolicyRefusal(t *testing.T, err error, hostport, why string) {
	t.Helper()
	var pe *importer.PolicyError
	if !errors.As(err, &pe) {
		t.Fatalf("error %q (%T) is not a policy refusal", err, err)
	}
	if !importer.Permanent(err) {
		t.Errorf("policy refusal %q is not permanent", err)
	}
	reason := importer.Reason(err)
	t.Logf("Reason: %s", reason)
	for _, text := range []string{err.Error(), reason} {
		if !strings.Contains(text, "connection to "+hostport+" is not allowed") || !strings.Contains(text, why) {
			t.Errorf("%q does not name the refused connection %s and %q", text, hostport, why)
		}
		for _, leak := range []string{"socks", "internal-secret"} {
			if strings.Contains(text, leak) {
				t.Errorf("%q contains %q", text, leak)
			}
		}
	}
}

// bearerRealm answers every request without credentials with a Bearer
// challenge whose realm is realm.
func bearerRealm(realm string) func(http.Handler) http.Handler {
	return func(h http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if r.Header.Get("Authorization") == "" {
				w.Header().Set("WWW-Authenticate", fmt.Sprintf(`Bearer realm=%q,service="registry"`, realm))
				w.Header().Set("Content-Type", "application/json")
				w.WriteHeader(http.StatusUnauthorized)
				_, _ = w.Write([]byte(`{"errors":[{"code":"UNAUTHORIZED","message":"token required"}]}`))
				return
			}
			h.ServeHTTP(w, r)
		})
	}
}

func TestTokenRealmOnDeniedAddress(t *testing.T) {
	denied := newDeniedTarget(t)
	reg := newRegistry(t, regOpts{wrap: bearerRealm("http://" + denied.addr + "/token")})
	imp := importer.New(importer.Options{Policy: importer.Policy{Deny: []string{denied.addr}}})
	t.Cleanup(func() { _ = imp.Close() })

	err := importErr(t, imp, importer.Request{From: reg.Addr() + "/app:v1", Insecure: true,
		Credentials: []importer.Credential{{Username: "u", Password: "password-1"}}})
	denied.check(t)
	wantPolicyRefusal(t, err, denied.addr, fmt.Sprintf("deny-list entry %q", denied.addr))
	if !strings.Contains(err.Error(), "http://"+denied.addr+"/token") {
		t.Errorf("error %q does not say what needed the connection", err)
	}
}

func TestTokenRealmOutsideAllowList(t *testing.T) {
	denied := newDeniedTarget(t)
	reg := newRegistry(t, regOpts{wrap: bearerRealm("http://" + denied.addr + "/token")})
	imp := importer.New(importer.Options{Policy: importer.Policy{Allow: []string{reg.Addr()}}})
	t.Cleanup(func() { _ = imp.Close() })

	err := importErr(t, imp, importer.Request{From: reg.Addr() + "/app:v1", Insecure: true})
	denied.check(t)
	wantPolicyRefusal(t, err, denied.addr, "no allow-list entry")
}

// redirectBlobs sends blob downloads to target once armed.
func redirectBlobs(target string, armed *atomic.Bool) func(http.Handler) http.Handler {
	return func(h http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if armed.Load() && r.Method == http.MethodGet && strings.Contains(r.URL.Path, "/blobs/sha256:") {
				http.Redirect(w, r, "http://"+target+"/blob?X-Amz-Signature=s3cr3t-signature", http.StatusTemporaryRedirect)
				return
			}
			h.ServeHTTP(w, r)
		})
	}
}

func TestBlobRedirectToDeniedAddress(t *testing.T) {
	denied := newDeniedTarget(t)
	var armed atomic.Bool
	src := newRegistry(t, regOpts{wrap: redirectBlobs(denied.addr, &armed)})
	dst := newRegistry(t, regOpts{})
	src.pushImage(t, "app:v1", randomImage(t, 1024, 2))
	armed.Store(true)
	imp := importer.New(importer.Options{Policy: importer.Policy{Deny: []string{denied.addr}}})
	t.Cleanup(func() { _ = imp.Close() })

	err := importErr(t, imp, importer.Request{From: src.Addr() + "/app:v1", Insecure: true,
		Mirror: &importer.Mirror{Repository: dst.Addr() + "/mirror/app", Insecure: true}})
	denied.check(t)
	wantPolicyRefusal(t, err, denied.addr, "deny-list entry")
	if r := importer.Reason(err); strings.Contains(r, "s3cr3t-signature") {
		t.Errorf("Reason %q carries the signed URL", r)
	}
}

// mirrorUploadsTo rewrites the upload Location a mirror answers with, as a
// malicious or misconfigured mirror could.
func mirrorUploadsTo(target string) func(http.Handler) http.Handler {
	return func(h http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if r.Method == http.MethodPost && strings.HasSuffix(r.URL.Path, "/blobs/uploads/") {
				h.ServeHTTP(rewriteLocation{w, "http://" + target + "/upload"}, r)
				return
			}
			h.ServeHTTP(w, r)
		})
	}
}

type rewriteLocation struct {
	http.ResponseWriter
	to string
}

func (rw rewriteLocation) WriteHeader(code int) {
	if rw.Header().Get("Location") != "" {
		rw.Header().Set("Location", rw.to)
	}
	rw.ResponseWriter.WriteHeader(code)
}

func TestMirrorIsAllowedButNotWhereItRedirects(t *testing.T) {
	denied := newDeniedTarget(t)
	src := newRegistry(t, regOpts{})
	good := newRegistry(t, regOpts{})
	bad := newRegistry(t, regOpts{wrap: mirrorUploadsTo(denied.addr)})
	want := src.pushImage(t, "app:v1", randomImage(t, 1024, 2))
	// Only the source is allowed: the configured mirror is allowed too,
	// being the mirror; what it sends the client to is not.
	imp := importer.New(importer.Options{Policy: importer.Policy{Allow: []string{src.Addr()}}})
	t.Cleanup(func() { _ = imp.Close() })

	res := mustImport(t, imp, importer.Request{From: src.Addr() + "/app:v1", Insecure: true,
		Mirror: &importer.Mirror{Repository: good.Addr() + "/mirror/app", Insecure: true}})
	if res.ImageReference != good.Addr()+"/mirror/app@"+want.String() {
		t.Errorf("ImageReference = %s", res.ImageReference)
	}

	err := importErr(t, imp, importer.Request{From: src.Addr() + "/app:v1", Insecure: true,
		Mirror: &importer.Mirror{Repository: bad.Addr() + "/mirror/app", Insecure: true}})
	denied.check(t)
	wantPolicyRefusal(t, err, denied.addr, "no allow-list entry")

	// The deny list applies to the mirror itself.
	imp2 := importer.New(importer.Options{Policy: importer.Policy{Deny: []string{good.Addr()}}})
	t.Cleanup(func() { _ = imp2.Close() })
	good.counter.reset()
	err = importErr(t, imp2, importer.Request{From: src.Addr() + "/app:v1", Insecure: true,
		Mirror: &importer.Mirror{Repository: good.Addr() + "/mirror/app", Insecure: true}})
	if n := good.counter.get("GET other") + good.counter.get("HEAD manifests") + good.counter.get("POST blobs/uploads"); n != 0 {
		t.Errorf("the denied mirror saw %d requests", n)
	}
	wantPolicyRefusal(t, err, good.Addr(), "deny-list entry")
}

// lookup resolves names from a table, through a function the test may
// change between calls.
type lookup struct {
	calls atomic.Int32
	fn    func(call int32, host string) ([]netip.Addr, error)
}

func (l *lookup) LookupIP(_ context.Context, host string) ([]netip.Addr, error) {
	return l.fn(l.calls.Add(1), host)
}

func TestGuardResolvesWithPolicyLookup(t *testing.T) {
	reg := newRegistry(t, regOpts{})
	want := reg.pushImage(t, "app:v1", randomImage(t, 1024, 1))
	_, port, _ := net.SplitHostPort(reg.Addr())
	l := &lookup{fn: func(_ int32, host string) ([]netip.Addr, error) {
		if host == "registry.test" {
			return []netip.Addr{netip.MustParseAddr("127.0.0.1")}, nil
		}
		return nil, &net.DNSError{Err: "no such host", Name: host, IsNotFound: true}
	}}
	imp := importer.New(importer.Options{Policy: importer.Policy{LookupIP: l.LookupIP}})
	t.Cleanup(func() { _ = imp.Close() })

	// Only the policy's resolver knows registry.test: the connection is
	// made by the guard, to the address the policy saw.
	res := mustImport(t, imp, importer.Request{From: "registry.test:" + port + "/app:v1", Insecure: true})
	if res.Digest != want.String() {
		t.Errorf("Digest = %s, want %s", res.Digest, want)
	}

	// A name that does not exist fails for good, with the lookup's error.
	err := importErr(t, imp, importer.Request{From: "nowhere.test/app:v1", Insecure: true})
	var dns *net.DNSError
	if !errors.As(err, &dns) || !dns.IsNotFound || !importer.Permanent(err) {
		t.Errorf("error %q (%#v) is not a permanent DNS not-found error", err, err)
	}
	if r := importer.Reason(err); !strings.Contains(r, "no such host") || strings.Contains(r, "socks") {
		t.Errorf("Reason %q", r)
	}
}

func TestDNSRebinding(t *testing.T) {
	reg := newRegistry(t, regOpts{})
	reg.pushImage(t, "app:v1", randomImage(t, 1024, 1))
	reg.counter.reset()
	_, port, _ := net.SplitHostPort(reg.Addr())
	// The name looks fine when the import is validated, then resolves to
	// the denied address when containers/image connects.
	l := &lookup{fn: func(call int32, host string) ([]netip.Addr, error) {
		if call == 1 {
			return []netip.Addr{netip.MustParseAddr("127.0.0.2")}, nil
		}
		return []netip.Addr{netip.MustParseAddr("127.0.0.1")}, nil
	}}
	policy := importer.Policy{Deny: []string{reg.Addr()}, LookupIP: l.LookupIP}
	from := "rebind.test:" + port + "/app:v1"
	if err := policy.Check(from); err != nil {
		t.Fatalf("validation refused %s: %v", from, err)
	}
	l.calls.Store(0)
	imp := importer.New(importer.Options{Policy: policy})
	t.Cleanup(func() { _ = imp.Close() })

	err := importErr(t, imp, importer.Request{From: from, Insecure: true})
	if n := reg.counter.get("GET other") + reg.counter.get("HEAD manifests") + reg.counter.get("GET manifests"); n != 0 {
		t.Errorf("the denied registry saw %d requests", n)
	}
	wantPolicyRefusal(t, err, "rebind.test:"+port, fmt.Sprintf("deny-list entry %q", reg.Addr()))

	// Rebinding to a metadata address is refused whatever the lists say.
	l.fn = func(call int32, host string) ([]netip.Addr, error) {
		if call == 1 {
			return []netip.Addr{netip.MustParseAddr("127.0.0.1")}, nil
		}
		return []netip.Addr{netip.MustParseAddr("169.254.169.254")}, nil
	}
	l.calls.Store(0)
	imp2 := importer.New(importer.Options{Policy: importer.Policy{LookupIP: l.LookupIP}})
	t.Cleanup(func() { _ = imp2.Close() })
	err = importErr(t, imp2, importer.Request{From: "metadata.test/app:v1"})
	wantPolicyRefusal(t, err, "metadata.test:443", "always-denied network 169.254.0.0/16")
}

func TestCloseStopsImports(t *testing.T) {
	reg := newRegistry(t, regOpts{})
	reg.pushImage(t, "app:v1", randomImage(t, 1024, 1))
	imp := importer.New(importer.Options{})
	mustImport(t, imp, importer.Request{From: reg.Addr() + "/app:v1", Insecure: true})
	if err := imp.Close(); err != nil {
		t.Fatal(err)
	}
	if err := imp.Close(); err != nil {
		t.Errorf("second Close: %v", err)
	}
	err := importErr(t, imp, importer.Request{From: reg.Addr() + "/app:v1", Insecure: true})
	if importer.Permanent(err) {
		t.Errorf("an import refused at shutdown is permanent: %v", err)
	}
}
