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

package bench

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/opencontainers/go-digest"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"

	"tagger.dev/tagger/pkg/cmd/server"
	taggerclient "tagger.dev/tagger/pkg/generated/clientset/versioned"
	"tagger.dev/tagger/pkg/imagecopy"
	"tagger.dev/tagger/pkg/imagecopy/imagecopytest"
	"tagger.dev/tagger/pkg/importer"
	"tagger.dev/tagger/pkg/localmode"
	"tagger.dev/tagger/pkg/sources"
)

// switchableMirror lets each iteration push into a fresh registry without
// restarting the server.
type switchableMirror struct{ addr atomic.Value }

func (m *switchableMirror) Credentials(namespace, from string) ([]importer.Credential, error) {
	return nil, nil
}

func (m *switchableMirror) Mirror(ctx context.Context, namespace, name string) (*importer.Mirror, error) {
	addr, _ := m.addr.Load().(string)
	if addr == "" {
		return nil, fmt.Errorf("no mirror yet")
	}
	return sources.MirrorConfig{Address: addr, Insecure: true}.Mirror(namespace, name), nil
}

// transferFixture is a Tagger server in local mode plus an OCI archive of
// the same 5 x 20 MiB image BenchmarkMirror copies.
type transferFixture struct {
	target     imagecopy.Target
	mirror     *switchableMirror
	archive    string
	digest     v1.Hash
	bytes      int64
	home       string
	kubeconfig string
	rest       *rest.Config
	client     taggerclient.Interface
}

var (
	transferOnce sync.Once
	theTransfer  *transferFixture
	transferErr  error
)

func getTransfer(b *testing.B) *transferFixture {
	b.Helper()
	transferOnce.Do(func() { theTransfer, transferErr = newTransferFixture() })
	if transferErr != nil {
		b.Fatal(transferErr)
	}
	return theTransfer
}

func newTransferFixture() (*transferFixture, error) {
	home, err := os.MkdirTemp("", "tagger-bench-transfer")
	if err != nil {
		return nil, err
	}
	f := &transferFixture{home: home, mirror: &switchableMirror{}, archive: filepath.Join(home, "app.tar")}
	img, err := imagecopytest.Image(layerCount, layerSize, v1.Platform{OS: "linux", Architecture: "amd64"})
	if err != nil {
		return nil, err
	}
	if f.digest, err = imagecopytest.WriteOCIArchive(f.archive, img); err != nil {
		return nil, err
	}
	a, err := imagecopytest.ReadOCIArchive(f.archive)
	if err != nil {
		return nil, err
	}
	for _, size := range a.Blobs {
		f.bytes += size
	}

	etcd, err := localmode.StartEtcd(filepath.Join(home, "etcd"))
	if err != nil {
		return nil, err
	}
	o := server.NewOptions()
	o.Local, o.LocalDir, o.LocalRegistryAddress = true, filepath.Join(home, "local"), ""
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	o.RecommendedOptions.SecureServing.Listener = ln
	o.RecommendedOptions.SecureServing.BindPort = ln.Addr().(*net.TCPAddr).Port
	if err := o.Complete(); err != nil {
		return nil, err
	}
	o.RecommendedOptions.Etcd.StorageConfig.Transport.ServerList = []string{etcd.Endpoint()}
	if err := o.Validate(); err != nil {
		return nil, err
	}
	cfg, err := o.Config()
	if err != nil {
		return nil, err
	}
	cfg.ExtraConfig.Sources = f.mirror
	s, err := cfg.Complete().New()
	if err != nil {
		return nil, err
	}
	go func() { _ = s.Run(context.Background()) }()
	if err := o.WriteKubeconfig(); err != nil {
		return nil, err
	}
	rc, err := clientcmd.BuildConfigFromFlags("", filepath.Join(o.LocalDir, "kubeconfig"))
	if err != nil {
		return nil, err
	}
	f.target = imagecopy.Target{Config: rc, Namespace: "default"}
	f.kubeconfig, f.rest = filepath.Join(o.LocalDir, "kubeconfig"), rc
	rc.QPS, rc.Burst = -1, -1 // the benchmarks make their own load
	client, err := taggerclient.NewForConfig(rc)
	if err != nil {
		return nil, err
	}
	err = wait.PollUntilContextTimeout(context.Background(), 50*time.Millisecond, 30*time.Second, true, func(ctx context.Context) (bool, error) {
		var code int
		client.Discovery().RESTClient().Get().AbsPath("/readyz").Do(ctx).StatusCode(&code)
		return code == http.StatusOK, nil
	})
	if err != nil {
		return nil, fmt.Errorf("server not ready: %w", err)
	}
	f.client = client
	return f, nil
}

// BenchmarkPush pushes the archive into an empty mirror each iteration,
// through images/push, next to skopeo copying the same archive straight
// into the registry.
func BenchmarkPush(b *testing.B) {
	f := getTransfer(b)
	b.Run("tagger", func(b *testing.B) {
		b.SetBytes(f.bytes)
		for i := 0; i < b.N; i++ {
			b.StopTimer()
			dst := newDestination(b)
			f.mirror.addr.Store(dst.Addr())
			t := f.target
			t.Name = fmt.Sprintf("push-%d", i)
			b.StartTimer()
			start := time.Now()
			res, err := imagecopy.Push(context.Background(), imagecopy.PushOptions{Target: t, Source: "oci-archive:" + f.archive})
			if err != nil {
				b.Fatal(err)
			}
			record("transfer/push-tagger", time.Since(start))
			b.StopTimer()
			if res.Digest.String() != f.digest.String() {
				b.Fatalf("pushed %s, want %s", res.Digest, f.digest)
			}
			_ = dst.Close()
			b.StartTimer()
		}
	})
	b.Run("skopeo", func(b *testing.B) {
		skopeo := skopeoCopier(b, f.home)
		b.SetBytes(f.bytes)
		for i := 0; i < b.N; i++ {
			b.StopTimer()
			dst := newDestination(b)
			b.StartTimer()
			start := time.Now()
			if err := skopeo(context.Background(), "oci-archive:"+f.archive, "docker://"+dst.Addr()+"/default/app:latest"); err != nil {
				b.Fatal(err)
			}
			record("transfer/push-skopeo", time.Since(start))
			b.StopTimer()
			if i == 0 {
				checkDigest(b, dst.Addr()+"/default/app:latest", f.digest)
			}
			_ = dst.Close()
			b.StartTimer()
		}
	})
}

// BenchmarkPull pulls the image to a new OCI archive each iteration,
// through images/pull, next to skopeo reading the registry directly.
func BenchmarkPull(b *testing.B) {
	f := getTransfer(b)
	dst := newDestination(b)
	defer dst.Close()
	f.mirror.addr.Store(dst.Addr())
	t := f.target
	t.Name = "pull"
	if _, err := imagecopy.Push(context.Background(), imagecopy.PushOptions{Target: t, Source: "oci-archive:" + f.archive}); err != nil {
		b.Fatal(err)
	}
	out := b.TempDir()
	b.Run("tagger", func(b *testing.B) {
		b.SetBytes(f.bytes)
		for i := 0; i < b.N; i++ {
			path := filepath.Join(out, fmt.Sprintf("tagger-%d.tar", i))
			start := time.Now()
			if err := imagecopy.Pull(context.Background(), imagecopy.PullOptions{Target: t, Digest: digest.Digest(f.digest.String()), Dest: "oci-archive:" + path}); err != nil {
				b.Fatal(err)
			}
			record("transfer/pull-tagger", time.Since(start))
			b.StopTimer()
			_ = os.Remove(path)
			b.StartTimer()
		}
	})
	b.Run("skopeo", func(b *testing.B) {
		skopeo := skopeoCopier(b, f.home)
		b.SetBytes(f.bytes)
		for i := 0; i < b.N; i++ {
			path := filepath.Join(out, fmt.Sprintf("skopeo-%d.tar", i))
			start := time.Now()
			if err := skopeo(context.Background(), "docker://"+dst.Addr()+"/default/pull@"+f.digest.String(), "oci-archive:"+path); err != nil {
				b.Fatal(err)
			}
			record("transfer/pull-skopeo", time.Since(start))
			b.StopTimer()
			_ = os.Remove(path)
			b.StartTimer()
		}
	})
}

func skopeoCopier(b *testing.B, home string) func(ctx context.Context, from, to string) error {
	path := lookTool("skopeo")
	if path == "" {
		for _, n := range []string{"transfer/push-skopeo", "transfer/pull-skopeo"} {
			skipped(n, "skopeo not installed: apt-get install -y skopeo")
		}
		b.Skip("skopeo not found: apt-get install -y skopeo")
	}
	return func(ctx context.Context, from, to string) error {
		return runTool(ctx, path, home, "copy", "--all", "--quiet", "--src-tls-verify=false", "--dest-tls-verify=false",
			"--src-no-creds", "--dest-no-creds", "--preserve-digests", from, to)
	}
}
