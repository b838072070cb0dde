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

package imagecopy

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/opencontainers/go-digest"
	"k8s.io/client-go/rest"

	"tagger.dev/tagger/pkg/imagecopy/imagecopytest"
	"tagger.dev/tagger/pkg/registryproxy"
)

const fakePullPath = "/apis/tagger.dev/v1beta1/namespaces/ns/images/app/pull/"

// fakePull serves images/pull of ns/app from an OCI layout, as Tagger
// relays the mirror: manifests with their media type, blobs with Range.
type fakePull struct {
	dir string
	// cut, when set, names a blob whose first answer breaks off midway.
	cut string
	// ignoreRange answers every blob request whole.
	ignoreRange bool
	// corrupt, when set, names a blob served with one byte changed.
	corrupt string
	// gzip labels blob answers Content-Encoding: gzip.
	gzip bool
	// refuse answers everything with this metav1.Status code.
	refuse int
	// upgrade answers blob requests that ask for it on the upgraded
	// connection (registryproxy.BlobStreamProtocol), as Tagger does.
	upgrade bool
	// refuseUpgrade answers blob requests asking for an upgrade as
	// kube-apiserver does when the server behind it answers them as
	// usual: 503.
	refuseUpgrade bool

	mu        sync.Mutex
	cutDone   bool
	ranges    []string
	encodings []string
	upgrades  int
}

func (f *fakePull) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if f.refuse != 0 {
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(f.refuse)
		_, _ = w.Write([]byte(`{"kind":"Status","apiVersion":"v1","status":"Failure","reason":"Forbidden","code":403,` +
			`"message":"images.tagger.dev \"app\" is forbidden: User \"alice\" cannot get resource \"images/pull\""}`))
		return
	}
	rest, ok := strings.CutPrefix(r.URL.Path, fakePullPath)
	kind, d, _ := strings.Cut(rest, "/")
	if !ok || r.Method != http.MethodGet || r.URL.Query().Get("method") != http.MethodGet {
		http.Error(w, "unexpected request", http.StatusBadRequest)
		return
	}
	b, err := os.ReadFile(filepath.Join(f.dir, "blobs", "sha256", strings.TrimPrefix(d, "sha256:")))
	if err != nil {
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(http.StatusNotFound)
		_, _ = w.Write([]byte(`{"errors":[{"code":"BLOB_UNKNOWN","message":"blob unknown to registry"}]}`))
		return
	}
	if kind == "manifests" {
		var m struct {
			MediaType string `json:"mediaType"`
		}
		_ = json.Unmarshal(b, &m)
		w.Header().Set("Content-Type", m.MediaType)
		_, _ = w.Write(b)
		return
	}
	f.mu.Lock()
	f.encodings = append(f.encodings, r.Header.Get("Accept-Encoding"))
	if rg := r.Header.Get("Range"); rg != "" {
		f.ranges = append(f.ranges, rg)
	}
	cut := d == f.cut && !f.cutDone
	f.cutDone = f.cutDone || cut
	f.mu.Unlock()
	if d == f.corrupt {
		b = bytes.Clone(b)
		b[len(b)/3] ^= 0xff
	}
	if f.ignoreRange {
		r.Header.Del("Range")
	}
	if f.refuseUpgrade && r.Header.Get("Upgrade") != "" {
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(http.StatusServiceUnavailable)
		_, _ = w.Write([]byte(`{"kind":"Status","apiVersion":"v1","status":"Failure","code":503,"message":"invalid upgrade response: status code 200"}`))
		return
	}
	if f.upgrade && r.Header.Get("Upgrade") == registryproxy.BlobStreamProtocol {
		f.mu.Lock()
		f.upgrades++
		f.mu.Unlock()
		f.serveUpgraded(w, r, b, cut)
		return
	}
	w.Header().Set("Content-Type", "application/octet-stream")
	if f.gzip {
		w.Header().Set("Content-Encoding", "gzip")
	}
	if cut {
		w.Header().Set("Content-Length", strconv.Itoa(len(b)))
		w.WriteHeader(http.StatusOK)
		_, _ = w.Write(b[:len(b)/2])
		w.(http.Flusher).Flush()
		panic(http.ErrAbortHandler) // the connection breaks
	}
	http.ServeContent(w, r, "", time.Time{}, bytes.NewReader(b))
}

// serveUpgraded answers 101, then the blob's answer on the bare connection.
func (f *fakePull) serveUpgraded(w http.ResponseWriter, r *http.Request, b []byte, cut bool) {
	conn, rw, err := w.(http.Hijacker).Hijack()
	if err != nil {
		return
	}
	defer conn.Close()
	status, body, headers := http.StatusOK, b, ""
	var from int
	if _, err := fmt.Sscanf(r.Header.Get("Range"), "bytes=%d-", &from); err == nil {
		status, body = http.StatusPartialContent, b[from:]
		headers = fmt.Sprintf("Content-Range: bytes %d-%d/%d\r\n", from, len(b)-1, len(b))
	}
	if f.gzip {
		headers += "Content-Encoding: gzip\r\n"
	}
	fmt.Fprintf(rw, "HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: %s\r\n\r\n", registryproxy.BlobStreamProtocol)
	fmt.Fprintf(rw, "HTTP/1.1 %d %s\r\nContent-Length: %d\r\n%s\r\n", status, http.StatusText(status), len(body), headers)
	if cut {
		body = body[:len(body)/2]
	}
	_, _ = rw.Write(body)
	_ = rw.Flush()
}

// pullFixture writes an image of two layers as an OCI layout and serves it
// as images/pull; it returns the image's digest, its biggest blob and
// the layout.
func pullFixture(t *testing.T, f *fakePull) (Target, digest.Digest, string) {
	t.Helper()
	img, err := imagecopytest.Image(2, 1<<20, v1.Platform{OS: "linux", Architecture: "amd64"})
	if err != nil {
		t.Fatal(err)
	}
	f.dir = filepath.Join(t.TempDir(), "layout")
	d, err := imagecopytest.WriteOCILayout(f.dir, img)
	if err != nil {
		t.Fatal(err)
	}
	layers, err := img.Layers()
	if err != nil {
		t.Fatal(err)
	}
	ld, err := layers[1].Digest()
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewTLSServer(f)
	t.Cleanup(srv.Close)
	target := Target{
		Config:    &rest.Config{Host: srv.URL, TLSClientConfig: rest.TLSClientConfig{Insecure: true}},
		Namespace: "ns", Name: "app",
	}
	return target, digest.Digest(d.String()), ld.String()
}

// sameBlobs checks that every blob of layout want is in layout got, byte
// for byte.
func sameBlobs(t *testing.T, want, got string) {
	t.Helper()
	entries, err := os.ReadDir(filepath.Join(want, "blobs", "sha256"))
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range entries {
		w, _ := os.ReadFile(filepath.Join(want, "blobs", "sha256", e.Name()))
		g, err := os.ReadFile(filepath.Join(got, "blobs", "sha256", e.Name()))
		if err != nil || !bytes.Equal(w, g) {
			t.Errorf("blob %s not pulled as it is (%v)", e.Name(), err)
		}
	}
}

// answers runs test with images/pull answering blobs as usual, and on
// upgraded connections.
func answers(t *testing.T, test func(t *testing.T, upgrade bool)) {
	t.Run("ordinary", func(t *testing.T) { test(t, false) })
	t.Run("upgraded", func(t *testing.T) { test(t, true) })
}

func TestPullResumesACutBlob(t *testing.T) { answers(t, testPullResumesACutBlob) }

func testPullResumesACutBlob(t *testing.T, upgrade bool) {
	f := &fakePull{upgrade: upgrade}
	target, d, layer := pullFixture(t, f)
	f.cut = layer
	out := filepath.Join(t.TempDir(), "out")
	if err := Pull(context.Background(), PullOptions{Target: target, Digest: d, Dest: "oci:" + out}); err != nil {
		t.Fatal(err)
	}
	sameBlobs(t, f.dir, out)
	b, _ := os.ReadFile(filepath.Join(f.dir, "blobs", "sha256", strings.TrimPrefix(layer, "sha256:")))
	if want := "bytes=" + strconv.Itoa(len(b)/2) + "-"; len(f.ranges) != 1 || f.ranges[0] != want {
		t.Errorf("Range requests %q, want one %q", f.ranges, want)
	}
	for _, e := range f.encodings {
		if e != "identity" {
			t.Errorf("a blob was asked for with Accept-Encoding %q, want identity", e)
		}
	}
	if upgrade && f.upgrades != len(f.encodings) {
		t.Errorf("%d of %d blob requests asked for an upgraded connection", f.upgrades, len(f.encodings))
	}
}

func TestPullFailures(t *testing.T) {
	cases := map[string]struct {
		setup func(f *fakePull, layer string)
		want  []string
	}{
		"a resume answered from the start": {
			setup: func(f *fakePull, layer string) { f.cut, f.ignoreRange = layer, true },
			want:  []string{"did not resume", "200 OK"},
		},
		"a changed byte": {
			setup: func(f *fakePull, layer string) { f.corrupt = layer },
			want:  []string{"Digest did not match"},
		},
		"a compressed blob": {
			setup: func(f *fakePull, _ string) { f.gzip = true },
			want:  []string{"Content-Encoding"},
		},
		"the API server's refusal": {
			setup: func(f *fakePull, _ string) { f.refuse = http.StatusForbidden },
			want:  []string{`cannot get resource "images/pull"`, "get on images/pull"},
		},
	}
	for name, tc := range cases {
		t.Run(name, func(t *testing.T) {
			answers(t, func(t *testing.T, upgrade bool) {
				f := &fakePull{upgrade: upgrade}
				target, d, layer := pullFixture(t, f)
				tc.setup(f, layer)
				err := Pull(context.Background(), PullOptions{Target: target, Digest: d, Dest: "oci:" + filepath.Join(t.TempDir(), "out")})
				if err == nil {
					t.Fatal("pulled")
				}
				for _, w := range tc.want {
					if !strings.Contains(err.Error(), w) {
						t.Errorf("%v: lacks %q", err, w)
					}
				}
			})
		})
	}
}

func TestPullUnknownManifest(t *testing.T) {
	f := &fakePull{}
	target, _, _ := pullFixture(t, f)
	err := Pull(context.Background(), PullOptions{Target: target, Digest: digest.FromString("nothing"), Dest: "oci:" + filepath.Join(t.TempDir(), "out")})
	if err == nil || !strings.Contains(err.Error(), "blob unknown to registry") {
		t.Fatalf("got %v, want the registry's error", err)
	}
}

// TestPullFromAServerThatDoesNotUpgrade: through kube-apiserver, a Tagger
// server that answers upgraded blob requests as usual gets them refused
// (503); the pull asks again without the upgrade.
func TestPullFromAServerThatDoesNotUpgrade(t *testing.T) {
	f := &fakePull{refuseUpgrade: true}
	target, d, _ := pullFixture(t, f)
	out := filepath.Join(t.TempDir(), "out")
	if err := Pull(context.Background(), PullOptions{Target: target, Digest: d, Dest: "oci:" + out}); err != nil {
		t.Fatal(err)
	}
	sameBlobs(t, f.dir, out)
}
