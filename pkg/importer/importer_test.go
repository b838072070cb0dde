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
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/v1/remote"

	"tagger.dev/tagger/pkg/importer"
	"tagger.dev/tagger/pkg/importer/credentials"
)

func mustImport(t *testing.T, imp *importer.Importer, req importer.Request) importer.Result {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	res, err := imp.Import(ctx, req)
	if err != nil {
		t.Fatalf("Import(%s): %v", req.From, err)
	}
	return res
}

func importErr(t *testing.T, imp *importer.Importer, req importer.Request) error {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	res, err := imp.Import(ctx, req)
	if err == nil {
		t.Fatalf("Import(%s) = %+v, want an error", req.From, res)
	}
	return err
}

func TestResolveWithHEAD(t *testing.T) {
	reg := newRegistry(t, regOpts{})
	imgDigest := reg.pushImage(t, "app/plain:v1", randomImage(t, 1024, 2))
	idx, _ := twoPlatformIndex(t)
	idxDigest := reg.pushIndex(t, "app/multi:v1", idx)
	imp := importer.New(importer.Options{})

	for _, tc := range []struct {
		repo string
		want string
	}{
		{"app/plain:v1", imgDigest.String()},
		{"app/multi:v1", idxDigest.String()},
	} {
		t.Run(tc.repo, func(t *testing.T) {
			reg.counter.reset()
			from := reg.Addr() + "/" + tc.repo
			res := mustImport(t, imp, importer.Request{From: from, Insecure: true})
			if res.Digest != tc.want {
				t.Errorf("Digest = %s, want %s", res.Digest, tc.want)
			}
			if res.From != from {
				t.Errorf("From = %s, want %s", res.From, from)
			}
			repo, _, _ := strings.Cut(from, ":v1")
			if want := repo + "@" + tc.want; res.ImageReference != want {
				t.Errorf("ImageReference = %s, want %s", res.ImageReference, want)
			}
			if n := reg.counter.get("HEAD manifests"); n != 1 {
				t.Errorf("%d manifest HEAD requests, want 1", n)
			}
			if n := reg.counter.get("GET manifests"); n != 0 {
				t.Errorf("%d manifest GET requests, want 0", n)
			}
		})
	}
}

func TestResolveFallsBackToGET(t *testing.T) {
	// A registry (or proxy) that drops Docker-Content-Digest from HEAD.
	stripDigest := func(h http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if r.Method == http.MethodHead {
				h.ServeHTTP(dropHeader{w, "Docker-Content-Digest"}, r)
				return
			}
			h.ServeHTTP(w, r)
		})
	}
	reg := newRegistry(t, regOpts{wrap: stripDigest})
	idx, _ := twoPlatformIndex(t)
	want := reg.pushIndex(t, "app/multi:v1", idx)
	reg.counter.reset()

	res := mustImport(t, importer.New(importer.Options{}), importer.Request{From: reg.Addr() + "/app/multi:v1", Insecure: true})
	if res.Digest != want.String() {
		t.Errorf("Digest = %s, want %s", res.Digest, want)
	}
	if n := reg.counter.get("GET manifests"); n != 1 {
		t.Errorf("%d manifest GET requests, want 1 (the fallback)", n)
	}
}

// dropHeader removes one response header before it is written.
type dropHeader struct {
	http.ResponseWriter
	name string
}

func (d dropHeader) WriteHeader(code int) {
	d.Header().Del(d.name)
	d.ResponseWriter.WriteHeader(code)
}

func TestDigestReference(t *testing.T) {
	reg := newRegistry(t, regOpts{})
	want := reg.pushImage(t, "app/plain:v1", randomImage(t, 1024, 1))
	imp := importer.New(importer.Options{})

	from := reg.Addr() + "/app/plain@" + want.String()
	res := mustImport(t, imp, importer.Request{From: from, Insecure: true})
	if res.Digest != want.String() || res.From != from || res.ImageReference != from {
		t.Errorf("got %+v", res)
	}
	// Tag and digest: the digest wins, the tag stays in From.
	both := reg.Addr() + "/app/plain:whatever@" + want.String()
	res = mustImport(t, imp, importer.Request{From: both, Insecure: true})
	if res.Digest != want.String() || res.From != both || res.ImageReference != from {
		t.Errorf("got %+v", res)
	}

	missing := reg.Addr() + "/app/plain@sha256:" + strings.Repeat("0", 64)
	err := importErr(t, imp, importer.Request{From: missing, Insecure: true})
	if !strings.Contains(err.Error(), "manifest unknown") {
		t.Errorf("error %q does not carry the registry's text", err)
	}
}

func TestMirrorIndexKeepsDigest(t *testing.T) {
	src := newRegistry(t, regOpts{})
	dst := newRegistry(t, regOpts{})
	idx, children := twoPlatformIndex(t)
	want := src.pushIndex(t, "app/multi:v1", idx)

	res := mustImport(t, importer.New(importer.Options{}), importer.Request{
		From:     src.Addr() + "/app/multi:v1",
		Insecure: true,
		Mirror:   &importer.Mirror{Repository: dst.Addr() + "/mirror/multi", Insecure: true},
	})
	if res.Digest != want.String() {
		t.Fatalf("Digest = %s, want the index digest %s", res.Digest, want)
	}
	if wantRef := dst.Addr() + "/mirror/multi@" + want.String(); res.ImageReference != wantRef {
		t.Errorf("ImageReference = %s, want %s", res.ImageReference, wantRef)
	}
	if got, err := dst.head("mirror/multi@" + want.String()); err != nil || got != want {
		t.Errorf("mirror serves %s, %v for the index digest", got, err)
	}
	for _, c := range children {
		if got, err := dst.head("mirror/multi@" + c.String()); err != nil || got != c {
			t.Errorf("platform manifest %s missing from mirror: %v", c, err)
		}
	}
	if got, err := dst.head("mirror/multi:" + importer.MirrorTag(want.String())); err != nil || got != want {
		t.Errorf("tag %s points to %s (%v), want %s", importer.MirrorTag(want.String()), got, err, want)
	}
}

func TestMirrorLayout(t *testing.T) {
	src := newRegistry(t, regOpts{})
	dst := newRegistry(t, regOpts{})
	img := randomImage(t, 4096, 3)
	want := src.pushImage(t, "team/app:v2", img)
	imp := importer.New(importer.Options{ParallelCopies: 2})
	req := importer.Request{
		From:     src.Addr() + "/team/app:v2",
		Insecure: true,
		Mirror:   &importer.Mirror{Repository: dst.Addr() + "/mirrors/team/app", Insecure: true},
	}
	res := mustImport(t, imp, req)
	if res.ImageReference != dst.Addr()+"/mirrors/team/app@"+want.String() {
		t.Errorf("ImageReference = %s", res.ImageReference)
	}
	tag := "tagger-sha256-" + strings.TrimPrefix(want.String(), "sha256:")
	if importer.MirrorTag(want.String()) != tag {
		t.Errorf("MirrorTag = %s, want %s", importer.MirrorTag(want.String()), tag)
	}
	if got, err := dst.head("mirrors/team/app:" + tag); err != nil || got != want {
		t.Fatalf("tag %s: %s, %v; want %s", tag, got, err, want)
	}
	// The mirrored image is complete: every layer can be read.
	ref, _ := name.ParseReference(res.ImageReference)
	mirrored, err := remote.Image(ref)
	if err != nil {
		t.Fatal(err)
	}
	wantLayers, _ := img.Layers()
	gotLayers, err := mirrored.Layers()
	if err != nil || len(gotLayers) != len(wantLayers) {
		t.Fatalf("mirror has %d layers (%v), want %d", len(gotLayers), err, len(wantLayers))
	}
	for i := range gotLayers {
		gd, _ := gotLayers[i].Digest()
		wd, _ := wantLayers[i].Digest()
		if gd != wd {
			t.Errorf("layer %d: %s, want %s", i, gd, wd)
		}
		if _, err := remote.Layer(ref.Context().Digest(gd.String())); err != nil {
			t.Errorf("layer %d: %v", i, err)
		}
	}

	// Mirroring again uploads no blob: the mirror has them all.
	dst.counter.reset()
	res2 := mustImport(t, imp, req)
	if !res2.ResolvedAt.After(res.ResolvedAt) {
		t.Errorf("second import resolved at %s, not after the first (%s)", res2.ResolvedAt, res.ResolvedAt)
	}
	res2.ResolvedAt = res.ResolvedAt
	if res.MirroredBytes <= 0 || res2.MirroredBytes != 0 {
		t.Errorf("mirrored bytes %d then %d, want some then none", res.MirroredBytes, res2.MirroredBytes)
	}
	res2.MirroredBytes = res.MirroredBytes
	if res2 != res {
		t.Errorf("second import %+v differs from first %+v", res2, res)
	}
	if n := dst.counter.get("POST blobs/uploads") + dst.counter.get("PUT blobs/uploads") + dst.counter.get("PATCH blobs/uploads"); n != 0 {
		t.Errorf("second mirror made %d upload requests, want 0", n)
	}
}

func TestPrivateSourceOverTLS(t *testing.T) {
	reg := newRegistry(t, regOpts{tls: true, users: map[string]string{"alice": "right-pass"}})
	want := reg.pushImage(t, "private/app:v1", randomImage(t, 1024, 1))
	imp := importer.New(importer.Options{CertDir: reg.certDir(t)})
	from := reg.Addr() + "/private/app:v1"

	res := mustImport(t, imp, importer.Request{From: from, Credentials: []importer.Credential{
		{Username: "alice", Password: "wrong-pass"},
		{Username: "alice", Password: "right-pass"},
	}})
	if res.Digest != want.String() {
		t.Errorf("Digest = %s, want %s", res.Digest, want)
	}

	// Anonymous: refused with the registry's own words, although the
	// ambient auth files hold working credentials.
	err := importErr(t, imp, importer.Request{From: from})
	if !strings.Contains(err.Error(), "authentication required") {
		t.Errorf("error %q does not carry the registry's unauthorized text", err)
	}

	err = importErr(t, imp, importer.Request{From: from, Credentials: []importer.Credential{{Username: "alice", Password: "wrong-pass"}}})
	if !strings.Contains(err.Error(), "authentication required") || strings.Contains(err.Error(), "wrong-pass") {
		t.Errorf("error %q", err)
	}
}

func TestDefaultCredentials(t *testing.T) {
	reg := newRegistry(t, regOpts{tls: true, users: map[string]string{"bob": "pw-from-file"}})
	want := reg.pushImage(t, "private/app:v1", randomImage(t, 1024, 1))
	authFile := filepath.Join(t.TempDir(), "auth.json")
	if err := os.WriteFile(authFile, []byte(`{"auths":{"https://`+reg.Addr()+`/v2/":{"auth":"`+basic("bob", "pw-from-file")+`"}}}`), 0o600); err != nil {
		t.Fatal(err)
	}
	imp := importer.New(importer.Options{CertDir: reg.certDir(t), DefaultCredentials: credentials.AuthFile(authFile)})
	res := mustImport(t, imp, importer.Request{
		From:        reg.Addr() + "/private/app:v1",
		Credentials: []importer.Credential{{Username: "bob", Password: "nope"}},
	})
	if res.Digest != want.String() {
		t.Errorf("Digest = %s, want %s", res.Digest, want)
	}
}

func TestMirrorWithAuth(t *testing.T) {
	src := newRegistry(t, regOpts{})
	dst := newRegistry(t, regOpts{tls: true, users: map[string]string{"pusher": "mirror-s3cret-pw"}})
	want := src.pushImage(t, "app:v1", randomImage(t, 2048, 2))
	imp := importer.New(importer.Options{CertDir: dst.certDir(t)})
	req := func(c *importer.Credential) importer.Request {
		return importer.Request{
			From:     src.Addr() + "/app:v1",
			Insecure: true,
			Mirror:   &importer.Mirror{Repository: dst.Addr() + "/mirror/app", Credential: c},
		}
	}

	res := mustImport(t, imp, req(&importer.Credential{Username: "pusher", Password: "mirror-s3cret-pw"}))
	if res.ImageReference != dst.Addr()+"/mirror/app@"+want.String() {
		t.Errorf("ImageReference = %s", res.ImageReference)
	}
	if got, err := dst.head("mirror/app@" + want.String()); err != nil || got != want {
		t.Errorf("mirror: %s, %v", got, err)
	}

	for _, c := range []*importer.Credential{nil, {Username: "pusher", Password: "wrong-s3cret-pw"}} {
		err := importErr(t, imp, req(c))
		if !strings.Contains(err.Error(), "authentication required") {
			t.Errorf("error %q does not carry the registry's text", err)
		}
		if c != nil && (strings.Contains(err.Error(), c.Password) || strings.Contains(err.Error(), basic(c.Username, c.Password))) {
			t.Errorf("error %q leaks the mirror password", err)
		}
	}
}

func TestTokenCredential(t *testing.T) {
	const token = "opaque-registry-token"
	// A registry that takes bearer tokens it issued itself (as with
	// registry access tokens): anything else gets a Bearer challenge.
	bearerOnly := func(h http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if r.URL.Path == "/token" {
				// The token server refuses every username and password.
				http.Error(w, `{"errors":[{"code":"UNAUTHORIZED","message":"bad credentials"}]}`, http.StatusUnauthorized)
				return
			}
			if r.Header.Get("Authorization") != "Bearer "+token {
				w.Header().Set("WWW-Authenticate", fmt.Sprintf(`Bearer realm="http://%s/token",service="test"`, r.Host))
				w.Header().Set("Content-Type", "application/json")
				w.WriteHeader(http.StatusUnauthorized)
				_, _ = w.Write([]byte(`{"errors":[{"code":"UNAUTHORIZED","message":"token required"}]}`))
				return
			}
			h.ServeHTTP(w, r)
		})
	}
	reg := newRegistry(t, regOpts{wrap: bearerOnly})
	tr := http.DefaultTransport.(*http.Transport).Clone()
	reg.opts = append(reg.opts, remote.WithTransport(&bearerTransport{token, tr}))
	want := reg.pushImage(t, "app:v1", randomImage(t, 1024, 1))
	dst := newRegistry(t, regOpts{wrap: bearerOnly})

	res := mustImport(t, importer.New(importer.Options{}), importer.Request{
		From:        reg.Addr() + "/app:v1",
		Insecure:    true,
		Credentials: []importer.Credential{{Username: "u", Password: "p"}, {Token: token}},
		Mirror:      &importer.Mirror{Repository: dst.Addr() + "/app", Insecure: true, Credential: &importer.Credential{Token: token}},
	})
	if res.Digest != want.String() {
		t.Errorf("Digest = %s, want %s", res.Digest, want)
	}
	dst.opts = append(dst.opts, remote.WithTransport(&bearerTransport{token, tr}))
	if got, err := dst.head("app@" + want.String()); err != nil || got != want {
		t.Errorf("mirror: %s, %v", got, err)
	}
}

type bearerTransport struct {
	token string
	next  http.RoundTripper
}

func (b *bearerTransport) RoundTrip(r *http.Request) (*http.Response, error) {
	r = r.Clone(r.Context())
	r.Header.Set("Authorization", "Bearer "+b.token)
	return b.next.RoundTrip(r)
}

func TestInsecure(t *testing.T) {
	tlsReg := newRegistry(t, regOpts{tls: true})
	want := tlsReg.pushImage(t, "app:v1", randomImage(t, 1024, 1))
	plain := newRegistry(t, regOpts{})
	plain.pushImage(t, "app:v1", randomImage(t, 1024, 1))
	imp := importer.New(importer.Options{})

	err := importErr(t, imp, importer.Request{From: tlsReg.Addr() + "/app:v1"})
	if !strings.Contains(err.Error(), "certificate") {
		t.Errorf("error %q does not mention the certificate", err)
	}
	res := mustImport(t, imp, importer.Request{From: tlsReg.Addr() + "/app:v1", Insecure: true})
	if res.Digest != want.String() {
		t.Errorf("Digest = %s, want %s", res.Digest, want)
	}

	// Plain http only with Insecure.
	importErr(t, imp, importer.Request{From: plain.Addr() + "/app:v1"})
	mustImport(t, imp, importer.Request{From: plain.Addr() + "/app:v1", Insecure: true})

	// The mirror's Insecure is its own.
	err = importErr(t, imp, importer.Request{From: plain.Addr() + "/app:v1", Insecure: true,
		Mirror: &importer.Mirror{Repository: tlsReg.Addr() + "/mirror"}})
	if !strings.Contains(err.Error(), "certificate") {
		t.Errorf("error %q does not mention the certificate", err)
	}
}

func TestServerError(t *testing.T) {
	failing := func(h http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if strings.Contains(r.URL.Path, "/manifests/") {
				http.Error(w, "backend on fire", http.StatusInternalServerError)
				return
			}
			h.ServeHTTP(w, r)
		})
	}
	reg := newRegistry(t, regOpts{wrap: failing})
	err := importErr(t, importer.New(importer.Options{}), importer.Request{
		From:        reg.Addr() + "/app:v1",
		Insecure:    true,
		Credentials: []importer.Credential{{Username: "a", Password: "b"}, {Username: "c", Password: "d"}},
	})
	if !strings.Contains(err.Error(), "500 Internal Server Error") {
		t.Errorf("error %q does not carry the status", err)
	}
	// A server error is not a credential problem: no other credential
	// (nor anonymous) is tried.
	if n := reg.counter.get("HEAD manifests"); n != 1 {
		t.Errorf("%d manifest HEADs, want 1", n)
	}
}

func TestRegistryDown(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	_ = l.Close()
	err = importErr(t, importer.New(importer.Options{}), importer.Request{From: addr + "/app:v1", Insecure: true})
	if !strings.Contains(err.Error(), "connection refused") {
		t.Errorf("error %q does not say the connection was refused", err)
	}
}

func TestPolicyStopsImportBeforeContact(t *testing.T) {
	reg := newRegistry(t, regOpts{})
	reg.pushImage(t, "app:v1", randomImage(t, 1024, 1))
	reg.counter.reset()
	imp := importer.New(importer.Options{Policy: importer.Policy{Deny: []string{"127.0.0.0/8"}}})
	err := importErr(t, imp, importer.Request{From: reg.Addr() + "/app:v1", Insecure: true})
	if !strings.Contains(err.Error(), "not allowed") {
		t.Errorf("error %q", err)
	}
	if n := reg.counter.get("HEAD manifests") + reg.counter.get("GET other"); n != 0 {
		t.Errorf("registry saw %d requests", n)
	}

	err = importErr(t, importer.New(importer.Options{}), importer.Request{From: "169.254.169.254/latest/meta-data:v1"})
	if !strings.Contains(err.Error(), "link-local") {
		t.Errorf("error %q", err)
	}
}

func TestCancel(t *testing.T) {
	started := make(chan struct{}, 16)
	// Blob downloads hang until the client goes away.
	stall := func(h http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if r.Method == http.MethodGet && strings.Contains(r.URL.Path, "/blobs/sha256:") {
				started <- struct{}{}
				<-r.Context().Done()
				return
			}
			h.ServeHTTP(w, r)
		})
	}
	src := newRegistry(t, regOpts{wrap: stall})
	dst := newRegistry(t, regOpts{})
	src.pushImage(t, "app:v1", randomImage(t, 1024, 2))

	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		_, err := importer.New(importer.Options{}).Import(ctx, importer.Request{
			From: src.Addr() + "/app:v1", Insecure: true,
			Mirror: &importer.Mirror{Repository: dst.Addr() + "/app", Insecure: true},
		})
		done <- err
	}()
	select {
	case <-started:
	case err := <-done:
		t.Fatalf("import ended before copying a blob: %v", err)
	case <-time.After(30 * time.Second):
		t.Fatal("no blob download started")
	}
	cancel()
	select {
	case err := <-done:
		if err == nil || !(errors.Is(err, context.Canceled) || strings.Contains(err.Error(), "context canceled")) {
			t.Errorf("err = %v, want context canceled", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("import did not stop after cancel")
	}
}

func TestResolvedAtIsWhenTheRegistryAnswered(t *testing.T) {
	var (
		mu               sync.Mutex
		headAt, uploadAt time.Time
	)
	src := newRegistry(t, regOpts{wrap: func(h http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if r.Method == http.MethodHead && strings.Contains(r.URL.Path, "/manifests/v1") {
				mu.Lock()
				headAt = time.Now()
				mu.Unlock()
			}
			h.ServeHTTP(w, r)
		})
	}})
	// A slow mirror: the copy ends long after the tag was resolved.
	dst := newRegistry(t, regOpts{wrap: func(h http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if r.Method == http.MethodPut && strings.Contains(r.URL.Path, "/manifests/") {
				mu.Lock()
				uploadAt = time.Now()
				mu.Unlock()
				time.Sleep(300 * time.Millisecond)
			}
			h.ServeHTTP(w, r)
		})
	}})
	src.pushImage(t, "app:v1", randomImage(t, 1024, 1))
	imp := importer.New(importer.Options{})
	t.Cleanup(func() { _ = imp.Close() })
	res := mustImport(t, imp, importer.Request{From: src.Addr() + "/app:v1", Insecure: true,
		Mirror: &importer.Mirror{Repository: dst.Addr() + "/app", Insecure: true}})
	done := time.Now()
	mu.Lock()
	defer mu.Unlock()
	if res.ResolvedAt.Before(headAt) || !res.ResolvedAt.Before(uploadAt) || done.Sub(res.ResolvedAt) < 300*time.Millisecond {
		t.Errorf("ResolvedAt %s; HEAD at %s, mirror manifest upload at %s, import done at %s: want the time of the HEAD's answer",
			res.ResolvedAt.Format(time.StampMicro), headAt.Format(time.StampMicro), uploadAt.Format(time.StampMicro), done.Format(time.StampMicro))
	}
}
