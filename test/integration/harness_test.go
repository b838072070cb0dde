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

// Package integration runs the real Tagger server in-process against an
// embedded etcd and real registries on 127.0.0.1, and drives it with the
// generated clientset.
package integration

import (
	"context"
	"net"
	"net/http"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/random"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"k8s.io/apimachinery/pkg/util/wait"
	etcd3testing "k8s.io/apiserver/pkg/storage/etcd3/testing"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"

	"tagger.dev/tagger/pkg/apiserver"
	"tagger.dev/tagger/pkg/cmd/server"
	taggerclient "tagger.dev/tagger/pkg/generated/clientset/versioned"
	"tagger.dev/tagger/pkg/localregistry"
	"tagger.dev/tagger/pkg/sources"
)

// testServer is a running Tagger.
type testServer struct {
	client     taggerclient.Interface
	config     *rest.Config
	kubeconfig string
	server     *apiserver.TaggerServer
	stop       func()
}

// serverOptions tune a test server.
type serverOptions struct {
	// etcd is the endpoint list to use; empty starts a new embedded etcd.
	etcd []string
	// mirror is the mirror registry address (plain http); empty means none.
	mirror string
	// configure changes the configuration before the server is built.
	configure func(*apiserver.Config)
}

// startServer runs Tagger in local-mode authentication against embedded etcd.
func startServer(t *testing.T, so serverOptions) *testServer {
	t.Helper()
	if len(so.etcd) == 0 {
		_, etcdConfig := etcd3testing.NewUnsecuredEtcd3TestClientServer(t)
		so.etcd = etcdConfig.Transport.ServerList
	}
	o := server.NewOptions()
	o.Local = true
	o.LocalDir = t.TempDir()
	o.LocalRegistryAddress = ""
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	o.RecommendedOptions.SecureServing.Listener = ln
	o.RecommendedOptions.SecureServing.BindPort = ln.Addr().(*net.TCPAddr).Port
	if err := o.Complete(); err != nil {
		t.Fatal(err)
	}
	o.RecommendedOptions.Etcd.StorageConfig.Transport.ServerList = so.etcd
	if so.mirror != "" {
		o.LocalMirror = sources.MirrorConfig{Address: so.mirror, Insecure: true}
	}
	if err := o.Validate(); err != nil {
		t.Fatal(err)
	}
	cfg, err := o.Config()
	if err != nil {
		t.Fatal(err)
	}
	// Attempts a few milliseconds apart keep the ten-attempt cases short.
	cfg.ExtraConfig.ImportOptions.Backoff = wait.Backoff{Duration: 5 * time.Millisecond, Factor: 1.5, Cap: 50 * time.Millisecond}
	if so.configure != nil {
		so.configure(cfg)
	}
	s, err := cfg.Complete().New()
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Run(ctx) }()
	stopped := false
	stop := func() {
		if stopped {
			return
		}
		stopped = true
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("server: %v", err)
			}
		case <-time.After(60 * time.Second):
			t.Errorf("server did not stop")
		}
	}
	t.Cleanup(stop)

	if err := o.WriteKubeconfig(); err != nil {
		t.Fatal(err)
	}
	kubeconfig := filepath.Join(o.LocalDir, "kubeconfig")
	restConfig, err := clientcmd.BuildConfigFromFlags("", kubeconfig)
	if err != nil {
		t.Fatal(err)
	}
	client, err := taggerclient.NewForConfig(restConfig)
	if err != nil {
		t.Fatal(err)
	}
	waitReady(t, client)
	return &testServer{client: client, config: restConfig, kubeconfig: kubeconfig, server: s, stop: stop}
}

func waitReady(t *testing.T, client taggerclient.Interface) {
	t.Helper()
	err := wait.PollUntilContextTimeout(context.Background(), 50*time.Millisecond, 30*time.Second, true, func(ctx context.Context) (bool, error) {
		res := client.Discovery().RESTClient().Get().AbsPath("/readyz").Do(ctx)
		var code int
		res.StatusCode(&code)
		return code == http.StatusOK, nil
	})
	if err != nil {
		t.Fatalf("server not ready: %v", err)
	}
}

// testRegistry is a real distribution registry on 127.0.0.1.
type testRegistry struct {
	*localregistry.Registry
}

// startRegistry runs an in-memory registry; wrap, if set, sees every request.
func startRegistry(t *testing.T, wrap func(http.Handler) http.Handler) *testRegistry {
	t.Helper()
	r, err := localregistry.New(context.Background(), localregistry.Options{Handler: wrap})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = r.Close() })
	return &testRegistry{r}
}

// push writes a random image to repo:tag and returns its digest.
func (r *testRegistry) push(t *testing.T, repoTag string) v1.Hash {
	t.Helper()
	img, err := random.Image(512, 2)
	if err != nil {
		t.Fatal(err)
	}
	return r.pushImage(t, repoTag, img)
}

func (r *testRegistry) pushImage(t *testing.T, repoTag string, img v1.Image) v1.Hash {
	t.Helper()
	ref, err := name.ParseReference(r.Addr()+"/"+repoTag, name.Insecure)
	if err != nil {
		t.Fatal(err)
	}
	if err := remote.Write(ref, img); err != nil {
		t.Fatal(err)
	}
	d, err := img.Digest()
	if err != nil {
		t.Fatal(err)
	}
	return d
}

// pushIndex writes a two-platform index and returns its digest.
func (r *testRegistry) pushIndex(t *testing.T, repoTag string) v1.Hash {
	t.Helper()
	idx, err := random.Index(256, 1, 2)
	if err != nil {
		t.Fatal(err)
	}
	ref, err := name.ParseReference(r.Addr()+"/"+repoTag, name.Insecure)
	if err != nil {
		t.Fatal(err)
	}
	if err := remote.WriteIndex(ref, idx); err != nil {
		t.Fatal(err)
	}
	d, err := idx.Digest()
	if err != nil {
		t.Fatal(err)
	}
	return d
}

// head returns the digest the registry serves for ref, or an error.
func (r *testRegistry) head(ref string) (v1.Hash, error) {
	parsed, err := name.ParseReference(r.Addr()+"/"+ref, name.Insecure)
	if err != nil {
		return v1.Hash{}, err
	}
	desc, err := remote.Head(parsed)
	if err != nil {
		return v1.Hash{}, err
	}
	return desc.Digest, nil
}

// gate, once armed, holds manifest reads until it is released.
type gate struct {
	armed atomic.Bool
	open  chan struct{}
}

func newGate() *gate { return &gate{open: make(chan struct{})} }

func (g *gate) wrap(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if g.armed.Load() && strings.Contains(r.URL.Path, "/manifests/") && (r.Method == http.MethodHead || r.Method == http.MethodGet) {
			select {
			case <-g.open:
			case <-r.Context().Done():
				return
			}
		}
		next.ServeHTTP(w, r)
	})
}

func (g *gate) arm()     { g.armed.Store(true) }
func (g *gate) release() { close(g.open) }
