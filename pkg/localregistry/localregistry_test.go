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

package localregistry

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"io"
	"net/http"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/distribution/distribution/v3/registry/api/errcode"
	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/v1/random"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/remote/transport"
	"github.com/sirupsen/logrus"
	"golang.org/x/crypto/bcrypt"
)

func TestMain(m *testing.M) {
	logrus.SetOutput(io.Discard)
	m.Run()
}

func start(t *testing.T, opts Options) *Registry {
	t.Helper()
	r, err := New(context.Background(), opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = r.Close() })
	return r
}

// pushAndPull pushes a random image to r and reads it back by digest.
func pushAndPull(t *testing.T, r *Registry, opts ...remote.Option) {
	t.Helper()
	img, err := random.Image(1024, 2)
	if err != nil {
		t.Fatal(err)
	}
	want, err := img.Digest()
	if err != nil {
		t.Fatal(err)
	}
	tag, err := name.NewTag(r.Addr() + "/test/app:v1")
	if err != nil {
		t.Fatal(err)
	}
	if err := remote.Write(tag, img, opts...); err != nil {
		t.Fatalf("push: %v", err)
	}
	got, err := remote.Image(tag.Context().Digest(want.String()), opts...)
	if err != nil {
		t.Fatalf("pull: %v", err)
	}
	layers, err := got.Layers()
	if err != nil || len(layers) != 2 {
		t.Fatalf("layers: %d, %v", len(layers), err)
	}
	for _, l := range layers {
		rc, err := l.Compressed()
		if err != nil {
			t.Fatal(err)
		}
		if _, err := io.Copy(io.Discard, rc); err != nil {
			t.Fatalf("reading layer: %v", err)
		}
		_ = rc.Close()
	}
	desc, err := remote.Head(tag, opts...)
	if err != nil {
		t.Fatal(err)
	}
	if desc.Digest != want {
		t.Fatalf("tag points to %s, want %s", desc.Digest, want)
	}
}

func TestInMemory(t *testing.T) {
	r := start(t, Options{})
	if r.URL() != "http://"+r.Addr() {
		t.Errorf("URL() = %s", r.URL())
	}
	pushAndPull(t, r)
}

func TestFilesystemSurvivesRestart(t *testing.T) {
	dir := t.TempDir()
	r := start(t, Options{Dir: dir})
	img, err := random.Image(512, 1)
	if err != nil {
		t.Fatal(err)
	}
	ref, err := name.NewTag(r.Addr() + "/keep/me:v1")
	if err != nil {
		t.Fatal(err)
	}
	if err := remote.Write(ref, img); err != nil {
		t.Fatal(err)
	}
	if err := r.Close(); err != nil {
		t.Fatal(err)
	}

	r2 := start(t, Options{Dir: dir})
	ref2, _ := name.NewTag(r2.Addr() + "/keep/me:v1")
	want, _ := img.Digest()
	desc, err := remote.Head(ref2)
	if err != nil {
		t.Fatal(err)
	}
	if desc.Digest != want {
		t.Fatalf("after restart tag points to %s, want %s", desc.Digest, want)
	}
}

func TestDeleteEnabled(t *testing.T) {
	r := start(t, Options{})
	img, _ := random.Image(512, 1)
	ref, _ := name.NewTag(r.Addr() + "/del/me:v1")
	if err := remote.Write(ref, img); err != nil {
		t.Fatal(err)
	}
	d, _ := img.Digest()
	if err := remote.Delete(ref.Context().Digest(d.String())); err != nil {
		t.Fatalf("delete: %v", err)
	}
	if _, err := remote.Head(ref); err == nil {
		t.Fatal("manifest still there after delete")
	}
}

func TestTLSAndHtpasswd(t *testing.T) {
	serverTLS, caPEM, err := SelfSignedTLS()
	if err != nil {
		t.Fatal(err)
	}
	htpasswd := filepath.Join(t.TempDir(), "htpasswd")
	if err := WriteHtpasswd(htpasswd, map[string]string{"alice": "s3cret"}, bcrypt.MinCost); err != nil {
		t.Fatal(err)
	}
	r := start(t, Options{TLS: serverTLS, Htpasswd: htpasswd})
	if r.URL() != "https://"+r.Addr() {
		t.Errorf("URL() = %s", r.URL())
	}
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(caPEM)
	tr := http.DefaultTransport.(*http.Transport).Clone()
	tr.TLSClientConfig = &tls.Config{RootCAs: pool}

	pushAndPull(t, r, remote.WithTransport(tr), remote.WithAuth(&authn.Basic{Username: "alice", Password: "s3cret"}))

	ref, _ := name.NewTag(r.Addr() + "/test/app:v1")
	_, err = remote.Head(ref, remote.WithTransport(tr))
	var terr *transport.Error
	if !errors.As(err, &terr) || terr.StatusCode != http.StatusUnauthorized {
		t.Fatalf("anonymous HEAD: got %v, want 401", err)
	}
}

func TestMissingHtpasswdFile(t *testing.T) {
	if _, err := New(context.Background(), Options{Htpasswd: filepath.Join(t.TempDir(), "nope")}); err == nil {
		t.Fatal("want error for a missing htpasswd file")
	}
}

func TestHandlerWrapper(t *testing.T) {
	var n int
	r := start(t, Options{Handler: func(h http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
			n++
			h.ServeHTTP(w, req)
		})
	}})
	resp, err := http.Get(r.URL() + "/v2/")
	if err != nil {
		t.Fatal(err)
	}
	_ = resp.Body.Close()
	if resp.StatusCode != http.StatusOK || n != 1 {
		t.Fatalf("status %d, wrapper saw %d requests", resp.StatusCode, n)
	}
}

// syncBuffer is a bytes.Buffer safe for the registry's goroutines.
type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// The 404s a copy meets while checking what the registry has are ordinary
// answers, not errors worth a log line; 5xx answers still are.
func TestClientErrorsAreNotLogged(t *testing.T) {
	var logs syncBuffer
	logrus.SetOutput(&logs)
	t.Cleanup(func() { logrus.SetOutput(io.Discard) })
	r := start(t, Options{})
	pushAndPull(t, r)
	for _, path := range []string{
		"/v2/test/app/manifests/missing",
		"/v2/test/app/blobs/sha256:0000000000000000000000000000000000000000000000000000000000000000",
		"/v2/nope/tags/list",
	} {
		for _, method := range []string{http.MethodGet, http.MethodHead} {
			if method == http.MethodHead && strings.HasSuffix(path, "/tags/list") {
				continue // 405
			}
			req, _ := http.NewRequest(method, r.URL()+path, nil)
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			_ = resp.Body.Close()
			if resp.StatusCode != http.StatusNotFound {
				t.Fatalf("%s %s: %d, want 404", method, path, resp.StatusCode)
			}
		}
	}
	if got := logs.String(); got != "" {
		t.Fatalf("4xx answers were logged:\n%s", got)
	}

	// What the filter lets through: other messages, and 5xx answers.
	f := &clientErrorFilter{next: &logrus.TextFormatter{DisableTimestamp: true}}
	for _, tc := range []struct {
		entry *logrus.Entry
		kept  bool
	}{
		{logrus.WithField("err.code", errcode.ErrorCodeManifestUnknown), false},
		{logrus.WithField("err.code", errcode.ErrorCodePaginationNumberInvalid), false},
		{logrus.WithField("err.code", errcode.ErrorCodeUnknown), true},
		{logrus.WithField("err.code", errcode.ErrorCodeUnavailable), true},
		{logrus.WithField("other", 1), true},
	} {
		e := tc.entry.WithField("x", 1)
		e.Message, e.Level = responseErrorMessage, logrus.ErrorLevel
		out, err := f.Format(e)
		if err != nil || (len(out) > 0) != tc.kept {
			t.Errorf("%v: formatted %q, %v; want kept %v", e.Data, out, err, tc.kept)
		}
	}
	e := logrus.WithField("err.code", errcode.ErrorCodeManifestUnknown)
	e.Message = "something else"
	if out, _ := f.Format(e); len(out) == 0 {
		t.Error("a message other than the response line was dropped")
	}
}

// "crane catalog" asks for n=1000 entries, which a configuration built in
// code (no parsed defaults) refused with PAGINATION_NUMBER_INVALID.
func TestCatalog(t *testing.T) {
	r := start(t, Options{})
	pushAndPull(t, r)
	reg, err := name.NewRegistry(r.Addr())
	if err != nil {
		t.Fatal(err)
	}
	repos, err := remote.Catalog(context.Background(), reg)
	if err != nil {
		t.Fatalf("catalog: %v", err)
	}
	if len(repos) != 1 || repos[0] != "test/app" {
		t.Fatalf("catalog: %v", repos)
	}
	for _, n := range []string{"1000", "1"} {
		resp, err := http.Get(r.URL() + "/v2/_catalog?n=" + n)
		if err != nil {
			t.Fatal(err)
		}
		_ = resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			t.Fatalf("GET /v2/_catalog?n=%s: %d", n, resp.StatusCode)
		}
	}
}
