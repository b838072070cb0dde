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
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"strings"
	"sync"
	"sync/atomic"
	"testing"

	"tagger.dev/tagger/pkg/importer"
)

// uploadCounter counts, on a mirror, blob data sent (PATCH or PUT of an
// upload) and cross-repository mounts that worked.
type uploadCounter struct {
	mu      sync.Mutex
	uploads int
	mounts  int
}

func (c *uploadCounter) wrap(h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		isUpload := strings.Contains(r.URL.Path, "/blobs/uploads/")
		rec := &statusRecorder{ResponseWriter: w}
		h.ServeHTTP(rec, r)
		c.mu.Lock()
		defer c.mu.Unlock()
		switch {
		case isUpload && (r.Method == http.MethodPatch || r.Method == http.MethodPut):
			c.uploads++
		case isUpload && r.Method == http.MethodPost && r.URL.Query().Get("mount") != "" && rec.status == http.StatusCreated:
			c.mounts++
		}
	})
}

func (c *uploadCounter) get() (uploads, mounts int) {
	c.mu.Lock()
	defer c.mu.Unlock()
	u, m := c.uploads, c.mounts
	c.uploads, c.mounts = 0, 0
	return u, m
}

type statusRecorder struct {
	http.ResponseWriter
	status int
}

func (s *statusRecorder) WriteHeader(code int) {
	s.status = code
	s.ResponseWriter.WriteHeader(code)
}

// TestMirrorMountsBlobsItHas: an import into a second mirror repository of
// an image whose blobs the mirror holds (another Image, or another
// namespace, imported it) mounts every blob and uploads none.
func TestMirrorMountsBlobsItHas(t *testing.T) {
	src := newRegistry(t, regOpts{})
	img := randomImage(t, 4096, 3)
	want := src.pushImage(t, "app:v1", img)
	idx, _ := twoPlatformIndex(t)
	wantIdx := src.pushIndex(t, "multi:v1", idx)
	counter := &uploadCounter{}
	dst := newRegistry(t, regOpts{wrap: counter.wrap})
	imp := importer.New(importer.Options{})
	t.Cleanup(func() { _ = imp.Close() })
	mirror := func(imp *importer.Importer, from, repo string, cred *importer.Credential) importer.Result {
		t.Helper()
		return mustImport(t, imp, importer.Request{From: src.Addr() + "/" + from, Insecure: true,
			Mirror: &importer.Mirror{Repository: dst.Addr() + "/" + repo, Insecure: true, Credential: cred}})
	}

	mirror(imp, "app:v1", "team-a_app", nil)
	if up, _ := counter.get(); up < 4 {
		t.Fatalf("first import: %d uploads, want at least 4 (config and 3 layers)", up)
	}
	res := mirror(imp, "app:v1", "team-b_app", nil)
	if up, mounts := counter.get(); up != 0 || mounts != 4 {
		t.Errorf("import into a second repository: %d uploads and %d mounts, want 0 and 4", up, mounts)
	}
	if res.MirroredBytes != 0 {
		t.Errorf("MirroredBytes = %d, want 0", res.MirroredBytes)
	}
	if got, err := dst.head("team-b_app@" + want.String()); err != nil || got != want {
		t.Errorf("mirror serves %s (%v), want %s", got, err, want)
	}

	// Every platform of an index too.
	mirror(imp, "multi:v1", "team-a_multi", nil)
	counter.get()
	mirror(imp, "multi:v1", "team-c_multi", nil)
	if up, mounts := counter.get(); up != 0 || mounts == 0 {
		t.Errorf("index into a second repository: %d uploads and %d mounts, want 0 and some", up, mounts)
	}
	if got, err := dst.head("team-c_multi@" + wantIdx.String()); err != nil || got != wantIdx {
		t.Errorf("mirror serves %s (%v), want %s", got, err, wantIdx)
	}

	// What the cache learned with one mirror credential is not used with
	// another.
	mirror(imp, "app:v1", "team-d_app", &importer.Credential{Username: "other", Password: "secret"})
	if up, mounts := counter.get(); up < 4 || mounts != 0 {
		t.Errorf("import with another mirror credential: %d uploads and %d mounts, want uploads only", up, mounts)
	}
	// Another importer (a restarted server) knows nothing yet.
	imp2 := importer.New(importer.Options{})
	t.Cleanup(func() { _ = imp2.Close() })
	mirror(imp2, "app:v1", "team-e_app", nil)
	if up, mounts := counter.get(); up < 4 || mounts != 0 {
		t.Errorf("import by a fresh importer: %d uploads and %d mounts, want uploads only", up, mounts)
	}
	// And mounting can be turned off.
	off := importer.New(importer.Options{BlobCacheRecords: -1})
	t.Cleanup(func() { _ = off.Close() })
	mirror(off, "app:v1", "team-f_app", nil)
	mirror(off, "app:v1", "team-g_app", nil)
	if _, mounts := counter.get(); mounts != 0 {
		t.Errorf("%d mounts with BlobCacheRecords < 0", mounts)
	}
}

// tokenRegistry is a registry with bearer token authentication that
// records which credential each token and each manifest request came with.
type tokenRegistry struct {
	*httptest.Server
	manifest []byte
	digest   string

	mu       sync.Mutex
	pings    int
	tokens   map[string]int    // user ("" anonymous) -> tokens issued
	issued   map[string]string // token -> user
	heads    []string          // user of each manifest HEAD
	allowed  map[string]bool
	nextID   int
	tokenURL string
}

func newTokenRegistry(t *testing.T, allowed ...string) *tokenRegistry {
	t.Helper()
	r := &tokenRegistry{tokens: map[string]int{}, issued: map[string]string{}, allowed: map[string]bool{}}
	for _, u := range allowed {
		r.allowed[u] = true
	}
	r.manifest = []byte(`{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a","size":2},"layers":[]}`)
	sum := sha256.Sum256(r.manifest)
	r.digest = "sha256:" + hex.EncodeToString(sum[:])
	r.Server = httptest.NewServer(http.HandlerFunc(r.serve))
	t.Cleanup(r.Close)
	return r
}

func (r *tokenRegistry) serve(w http.ResponseWriter, req *http.Request) {
	r.mu.Lock()
	defer r.mu.Unlock()
	challenge := fmt.Sprintf(`Bearer realm="%s",service="test-registry"`, r.tokenURL)
	switch {
	case req.URL.Path == "/v2/":
		r.pings++
		w.Header().Set("WWW-Authenticate", challenge)
		w.WriteHeader(http.StatusUnauthorized)
	case req.URL.Path == "/token":
		user, pass, ok := req.BasicAuth()
		if ok && pass != user+"-pass" {
			w.WriteHeader(http.StatusUnauthorized)
			return
		}
		if req.URL.Query().Get("scope") != "repository:app:pull" {
			w.WriteHeader(http.StatusBadRequest)
			return
		}
		r.tokens[user]++
		r.nextID++
		tok := fmt.Sprintf("token-%d", r.nextID)
		r.issued[tok] = user
		_ = json.NewEncoder(w).Encode(map[string]any{"token": tok, "expires_in": 300})
	case req.URL.Path == "/v2/app/manifests/v1":
		user, ok := r.issued[strings.TrimPrefix(req.Header.Get("Authorization"), "Bearer ")]
		if !ok || !r.allowed[user] {
			w.Header().Set("WWW-Authenticate", challenge+`,scope="repository:app:pull",error="insufficient_scope"`)
			w.Header().Set("Content-Type", "application/json")
			w.WriteHeader(http.StatusUnauthorized)
			if req.Method == http.MethodGet {
				_, _ = w.Write([]byte(`{"errors":[{"code":"UNAUTHORIZED","message":"authentication required"}]}`))
			}
			return
		}
		if req.Method == http.MethodHead {
			r.heads = append(r.heads, user)
		}
		w.Header().Set("Content-Type", "application/vnd.oci.image.manifest.v1+json")
		w.Header().Set("Docker-Content-Digest", r.digest)
		w.Header().Set("Content-Length", fmt.Sprint(len(r.manifest)))
		w.WriteHeader(http.StatusOK)
		if req.Method == http.MethodGet {
			_, _ = w.Write(r.manifest)
		}
	default:
		w.WriteHeader(http.StatusNotFound)
	}
}

func (r *tokenRegistry) counts() (pings int, tokens map[string]int, heads []string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	tokens = map[string]int{}
	for k, v := range r.tokens {
		tokens[k] = v
	}
	pings, heads = r.pings, r.heads
	r.pings, r.tokens, r.heads = 0, map[string]int{}, nil
	return pings, tokens, heads
}

func (r *tokenRegistry) revokeAll() {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.issued = map[string]string{}
}

// TestResolveCachesPingAndTokens: a resolve is one HEAD once the registry's
// ping and a token for (scope, credential) are known; tokens are never
// shared between credentials, and every connection still goes through the
// egress guard (which resolves the registry's name each time).
func TestResolveCachesPingAndTokens(t *testing.T) {
	reg := newTokenRegistry(t, "alice", "bob")
	_, port, _ := net.SplitHostPort(reg.Listener.Addr().String())
	host := "tokens.test:" + port
	reg.tokenURL = "http://" + host + "/token"
	l := &lookup{fn: func(_ int32, h string) ([]netip.Addr, error) {
		return []netip.Addr{netip.MustParseAddr("127.0.0.1")}, nil
	}}
	imp := importer.New(importer.Options{Policy: importer.Policy{LookupIP: l.LookupIP}})
	t.Cleanup(func() { _ = imp.Close() })
	as := func(user string) importer.Request {
		req := importer.Request{From: host + "/app:v1", Insecure: true}
		if user != "" {
			req.Credentials = []importer.Credential{{Username: user, Password: user + "-pass"}}
		}
		return req
	}

	for n := 0; n < 3; n++ {
		lookups := l.calls.Load()
		if res := mustImport(t, imp, as("alice")); res.Digest != reg.digest {
			t.Fatalf("Digest = %s, want %s", res.Digest, reg.digest)
		}
		if l.calls.Load() == lookups {
			t.Errorf("import %d made no connection through the egress guard", n+1)
		}
	}
	pings, tokens, heads := reg.counts()
	if pings != 1 || tokens["alice"] != 1 || len(heads) != 3 {
		t.Errorf("3 imports as alice: %d pings, %v tokens, %d HEADs; want 1 ping, 1 token, 3 HEADs", pings, tokens, len(heads))
	}

	// Bob gets a token of his own, and his HEAD carries it.
	mustImport(t, imp, as("bob"))
	_, tokens, heads = reg.counts()
	if tokens["bob"] != 1 || len(heads) != 1 || heads[0] != "bob" {
		t.Errorf("import as bob: tokens %v, HEADs by %v; want one token for bob, one HEAD by bob", tokens, heads)
	}

	// Anonymous access never uses a credential's token: it fails.
	err := importErr(t, imp, as(""))
	if !importer.Permanent(err) {
		t.Errorf("anonymous import: %v", err)
	}
	_, tokens, heads = reg.counts()
	if tokens[""] == 0 || len(heads) != 0 {
		t.Errorf("anonymous import: tokens %v, HEADs by %v; want an anonymous token and no successful HEAD", tokens, heads)
	}

	// A token the registry no longer honours is forgotten: the import
	// still works, and the next one asks for a new token once.
	reg.revokeAll()
	mustImport(t, imp, as("alice"))
	mustImport(t, imp, as("alice"))
	_, tokens, _ = reg.counts()
	if tokens["alice"] != 2 {
		t.Errorf("after revocation: %d tokens for alice, want 2 (one by the import that met the revoked token, one cached for the next)", tokens["alice"])
	}

	// Without the cache, every resolve pings and asks for a token.
	plain := importer.New(importer.Options{NoAuthCache: true, Policy: importer.Policy{LookupIP: l.LookupIP}})
	t.Cleanup(func() { _ = plain.Close() })
	mustImport(t, plain, as("alice"))
	mustImport(t, plain, as("alice"))
	pings, tokens, _ = reg.counts()
	if pings < 2 || tokens["alice"] != 2 {
		t.Errorf("NoAuthCache: %d pings, %v tokens; want a ping and a token per import", pings, tokens)
	}
}

// TestMirrorVerifiedWithoutPing: after the copy, the mirror is asked for
// the mirrored manifest by digest with one HEAD and no ping of its own once
// the importer knows the mirror's (containers/image's copy still pings once),
// and a mirror that answers another digest is refused.
func TestMirrorVerifiedWithoutPing(t *testing.T) {
	src := newRegistry(t, regOpts{})
	src.pushImage(t, "app:v1", randomImage(t, 1024, 1))
	var rewrite atomic.Bool
	dst := newRegistry(t, regOpts{wrap: func(h http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if rewrite.Load() && r.Method == http.MethodHead && strings.Contains(r.URL.Path, "/manifests/sha256:") {
				w.Header().Set("Docker-Content-Digest", "sha256:"+strings.Repeat("0", 64))
				w.WriteHeader(http.StatusOK)
				return
			}
			h.ServeHTTP(w, r)
		})
	}})
	imp := importer.New(importer.Options{})
	t.Cleanup(func() { _ = imp.Close() })
	req := func(repo string) importer.Request {
		return importer.Request{From: src.Addr() + "/app:v1", Insecure: true,
			Mirror: &importer.Mirror{Repository: dst.Addr() + "/" + repo, Insecure: true}}
	}
	mustImport(t, imp, req("first"))
	dst.counter.reset()
	mustImport(t, imp, req("second"))
	if pings := dst.counter.get("GET other"); pings != 1 {
		t.Errorf("second import pinged the mirror %d times, want 1 (the copy's own)", pings)
	}
	if heads := dst.counter.get("HEAD manifests"); heads != 1 {
		t.Errorf("second import sent %d manifest HEADs to the mirror, want 1 (the check)", heads)
	}

	rewrite.Store(true)
	err := importErr(t, imp, req("third"))
	if !importer.Permanent(err) || !strings.Contains(err.Error(), "rewritten image") {
		t.Errorf("mirror answering another digest: %v, want a permanent refusal of a rewritten image", err)
	}
}
