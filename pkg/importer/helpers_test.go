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
	"crypto/tls"
	"encoding/base64"
	"encoding/json"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"sync"
	"testing"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/random"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/sirupsen/logrus"
	"golang.org/x/crypto/bcrypt"

	"tagger.dev/tagger/pkg/localregistry"
)

// ambientUser/ambientPassword are valid for every private test registry and
// sit in the auth files the environment points at: an importer that read
// ambient configuration would get in where the tests expect a refusal.
const (
	ambientUser     = "ambient"
	ambientPassword = "ambient-pass"
)

func TestMain(m *testing.M) {
	logrus.SetOutput(io.Discard)
	dir, err := os.MkdirTemp("", "importer-test-home")
	if err != nil {
		panic(err)
	}
	auth := `{"auths":{}}`
	for _, d := range []string{"docker", "containers"} {
		if err := os.MkdirAll(filepath.Join(dir, d), 0o700); err != nil {
			panic(err)
		}
	}
	_ = os.WriteFile(filepath.Join(dir, "docker", "config.json"), []byte(auth), 0o600)
	_ = os.WriteFile(filepath.Join(dir, "containers", "auth.json"), []byte(auth), 0o600)
	os.Setenv("HOME", dir)
	os.Setenv("DOCKER_CONFIG", filepath.Join(dir, "docker"))
	os.Setenv("REGISTRY_AUTH_FILE", filepath.Join(dir, "containers", "auth.json"))
	os.Setenv("XDG_CONFIG_HOME", dir)
	os.Setenv("XDG_RUNTIME_DIR", dir)
	code := m.Run()
	_ = os.RemoveAll(dir)
	os.Exit(code)
}

func basic(user, pass string) string {
	return base64.StdEncoding.EncodeToString([]byte(user + ":" + pass))
}

var (
	ambientMu    sync.Mutex
	ambientHosts []string
)

// addAmbient adds host to the ambient auth files with the ambient
// credentials; containers/image matches auth file keys by host:port.
func addAmbient(t *testing.T, host string) {
	t.Helper()
	ambientMu.Lock()
	defer ambientMu.Unlock()
	ambientHosts = append(ambientHosts, host)
	auths := map[string]map[string]string{}
	for _, h := range ambientHosts {
		auths[h] = map[string]string{"auth": basic(ambientUser, ambientPassword)}
	}
	b, err := json.Marshal(map[string]any{"auths": auths})
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range []string{filepath.Join(os.Getenv("DOCKER_CONFIG"), "config.json"), os.Getenv("REGISTRY_AUTH_FILE")} {
		if err := os.WriteFile(f, b, 0o600); err != nil {
			t.Fatal(err)
		}
	}
}

// counter counts registry requests by "METHOD kind", kind being manifests,
// blobs, uploads or other.
type counter struct {
	mu sync.Mutex
	n  map[string]int
}

var kindRE = regexp.MustCompile(`^/v2/.+/(manifests|blobs/uploads|blobs)/`)

func (c *counter) wrap(h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		kind := "other"
		if m := kindRE.FindStringSubmatch(r.URL.Path); m != nil {
			kind = m[1]
		}
		c.mu.Lock()
		if c.n == nil {
			c.n = map[string]int{}
		}
		c.n[r.Method+" "+kind]++
		c.mu.Unlock()
		h.ServeHTTP(w, r)
	})
}

func (c *counter) get(key string) int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.n[key]
}

func (c *counter) reset() {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.n = nil
}

// testRegistry is a running registry plus how to talk to it with
// go-containerregistry (to seed and inspect it).
type testRegistry struct {
	*localregistry.Registry
	counter *counter
	caPEM   []byte
	opts    []remote.Option
}

type regOpts struct {
	tls     bool
	users   map[string]string
	wrap    func(http.Handler) http.Handler
	counted bool
}

func newRegistry(t *testing.T, o regOpts) *testRegistry {
	t.Helper()
	tr := &testRegistry{counter: &counter{}}
	lo := localregistry.Options{}
	if o.tls {
		cfg, caPEM, err := localregistry.SelfSignedTLS()
		if err != nil {
			t.Fatal(err)
		}
		lo.TLS, tr.caPEM = cfg, caPEM
		transport := http.DefaultTransport.(*http.Transport).Clone()
		transport.TLSClientConfig = &tls.Config{InsecureSkipVerify: true} //nolint:gosec // test registry
		tr.opts = append(tr.opts, remote.WithTransport(transport))
	}
	if o.users != nil {
		users := map[string]string{ambientUser: ambientPassword}
		for u, p := range o.users {
			users[u] = p
		}
		lo.Htpasswd = filepath.Join(t.TempDir(), "htpasswd")
		if err := localregistry.WriteHtpasswd(lo.Htpasswd, users, bcrypt.MinCost); err != nil {
			t.Fatal(err)
		}
		for u, p := range o.users {
			tr.opts = append(tr.opts, remote.WithAuth(&authn.Basic{Username: u, Password: p}))
			break
		}
	}
	lo.Handler = func(h http.Handler) http.Handler {
		if o.wrap != nil {
			h = o.wrap(h)
		}
		return tr.counter.wrap(h)
	}
	r, err := localregistry.New(context.Background(), lo)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = r.Close() })
	tr.Registry = r
	if o.users != nil {
		addAmbient(t, r.Addr())
	}
	return tr
}

// certDir returns a containers-style certs.d directory trusting r.
func (r *testRegistry) certDir(t *testing.T) string {
	t.Helper()
	dir := t.TempDir()
	hostDir := filepath.Join(dir, r.Addr())
	if err := os.MkdirAll(hostDir, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(hostDir, "ca.crt"), r.caPEM, 0o644); err != nil {
		t.Fatal(err)
	}
	return dir
}

func (r *testRegistry) pushImage(t *testing.T, repoTag string, img v1.Image) v1.Hash {
	t.Helper()
	ref, err := name.NewTag(r.Addr() + "/" + repoTag)
	if err != nil {
		t.Fatal(err)
	}
	if err := remote.Write(ref, img, r.opts...); err != nil {
		t.Fatalf("seeding %s: %v", ref, err)
	}
	d, err := img.Digest()
	if err != nil {
		t.Fatal(err)
	}
	return d
}

func (r *testRegistry) pushIndex(t *testing.T, repoTag string, idx v1.ImageIndex) v1.Hash {
	t.Helper()
	ref, err := name.NewTag(r.Addr() + "/" + repoTag)
	if err != nil {
		t.Fatal(err)
	}
	if err := remote.WriteIndex(ref, idx, r.opts...); err != nil {
		t.Fatalf("seeding %s: %v", ref, err)
	}
	d, err := idx.Digest()
	if err != nil {
		t.Fatal(err)
	}
	return d
}

// head returns the digest r serves for ref ("repo:tag" or "repo@digest"),
// or an error.
func (r *testRegistry) head(ref string, opts ...remote.Option) (v1.Hash, error) {
	parsed, err := name.ParseReference(r.Addr() + "/" + ref)
	if err != nil {
		return v1.Hash{}, err
	}
	desc, err := remote.Head(parsed, append(append([]remote.Option{}, r.opts...), opts...)...)
	if err != nil {
		return v1.Hash{}, err
	}
	return desc.Digest, nil
}

func randomImage(t *testing.T, size int64, layers int) v1.Image {
	t.Helper()
	img, err := random.Image(size, int64(layers))
	if err != nil {
		t.Fatal(err)
	}
	return img
}

// twoPlatformIndex returns an index of two images for platforms the test
// machine is not, so an importer that picked "its" platform would fail.
func twoPlatformIndex(t *testing.T) (v1.ImageIndex, []v1.Hash) {
	t.Helper()
	a, b := randomImage(t, 1024, 2), randomImage(t, 1024, 2)
	idx := mutate.AppendManifests(empty.Index,
		mutate.IndexAddendum{Add: a, Descriptor: v1.Descriptor{Platform: &v1.Platform{OS: "linux", Architecture: "s390x"}}},
		mutate.IndexAddendum{Add: b, Descriptor: v1.Descriptor{Platform: &v1.Platform{OS: "linux", Architecture: "ppc64le"}}},
	)
	da, _ := a.Digest()
	db, _ := b.Digest()
	return idx, []v1.Hash{da, db}
}
