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
	"bytes"
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/random"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/sirupsen/logrus"
	"k8s.io/klog/v2"

	"tagger.dev/tagger/pkg/importer"
	"tagger.dev/tagger/pkg/localregistry"
)

const (
	layerCount = 5
	layerSize  = 20 << 20
	srcRepo    = "bench/app"
	srcTag     = "v1"
)

// fixture is the source registry holding the benchmark image, made once
// per process because generating and pushing 100 MiB takes seconds.
type fixture struct {
	src    *localregistry.Registry
	digest v1.Hash
	bytes  int64 // manifest + config + compressed layers
	home   string
}

var (
	fixtureOnce sync.Once
	theFixture  *fixture
	fixtureErr  error
)

// atExit holds what fixtures shared by several benchmark runs leave to stop
// once every benchmark ended, newest first.
var atExit []func()

func TestMain(m *testing.M) {
	logrus.SetOutput(io.Discard)
	// The server's own log lines would bury the results.
	klog.LogToStderr(false)
	klog.SetOutput(io.Discard)
	code := m.Run()
	printReport(os.Stdout)
	if theFixture != nil {
		_ = theFixture.src.Close()
		_ = os.RemoveAll(theFixture.home)
	}
	for i := len(atExit) - 1; i >= 0; i-- {
		atExit[i]()
	}
	os.Exit(code)
}

func getFixture(b *testing.B) *fixture {
	b.Helper()
	fixtureOnce.Do(func() {
		theFixture, fixtureErr = newFixture()
	})
	if fixtureErr != nil {
		b.Fatal(fixtureErr)
	}
	return theFixture
}

func newFixture() (*fixture, error) {
	home, err := os.MkdirTemp("", "tagger-bench-home")
	if err != nil {
		return nil, err
	}
	// Filesystem storage: distribution's in-memory driver copies the whole
	// upload on each write, which made it the bottleneck (~10 MB/s).
	src, err := localregistry.New(context.Background(), localregistry.Options{Dir: filepath.Join(home, "src")})
	if err != nil {
		return nil, err
	}
	img, err := random.Image(layerSize, layerCount)
	if err != nil {
		return nil, err
	}
	ref, err := name.NewTag(src.Addr() + "/" + srcRepo + ":" + srcTag)
	if err != nil {
		return nil, err
	}
	if err := remote.Write(ref, img); err != nil {
		return nil, fmt.Errorf("seeding source registry: %w", err)
	}
	m, err := img.Manifest()
	if err != nil {
		return nil, err
	}
	raw, err := img.RawManifest()
	if err != nil {
		return nil, err
	}
	total := int64(len(raw)) + m.Config.Size
	for _, l := range m.Layers {
		total += l.Size
	}
	d, err := img.Digest()
	if err != nil {
		return nil, err
	}
	return &fixture{src: src, digest: d, bytes: total, home: home}, nil
}

func (f *fixture) from() string { return f.src.Addr() + "/" + srcRepo + ":" + srcTag }

// newDestination starts an empty registry. A fresh registry per iteration,
// not just a fresh repository, because skopeo's on-disk blob info cache
// would otherwise mount blobs from the previous iteration's repository.
func newDestination(b *testing.B) *destination {
	b.Helper()
	dir, err := os.MkdirTemp("", "tagger-bench-dst")
	if err != nil {
		b.Fatal(err)
	}
	dst, err := localregistry.New(context.Background(), localregistry.Options{Dir: dir})
	if err != nil {
		b.Fatal(err)
	}
	return &destination{Registry: dst, dir: dir}
}

type destination struct {
	*localregistry.Registry
	dir string
}

func (d *destination) Close() error {
	err := d.Registry.Close()
	_ = os.RemoveAll(d.dir)
	return err
}

func checkDigest(b *testing.B, ref string, want v1.Hash) {
	b.Helper()
	parsed, err := name.ParseReference(ref)
	if err != nil {
		b.Fatal(err)
	}
	desc, err := remote.Head(parsed)
	if err != nil {
		b.Fatalf("checking %s: %v", ref, err)
	}
	if desc.Digest != want {
		b.Fatalf("%s has digest %s, want %s", ref, desc.Digest, want)
	}
}

// copier copies from to the repository dst (no tag) and returns a reference
// to check, or an error.
type copier func(ctx context.Context, from, dst string) (string, error)

func taggerCopier(imp *importer.Importer) copier {
	return func(ctx context.Context, from, dst string) (string, error) {
		res, err := imp.Import(ctx, importer.Request{
			From:     from,
			Insecure: true,
			Mirror:   &importer.Mirror{Repository: dst, Insecure: true},
		})
		return res.ImageReference, err
	}
}

func toolCopier(b *testing.B, f *fixture, tool string) copier {
	path := lookTool(tool)
	if path == "" {
		b.Skipf("%s not found on PATH or in $(go env GOPATH)/bin", tool)
	}
	return func(ctx context.Context, from, dst string) (string, error) {
		dstRef := dst + ":copied"
		var args []string
		switch tool {
		case "crane":
			args = []string{"copy", "--insecure", from, dstRef}
		case "skopeo":
			args = []string{"copy", "--all", "--quiet", "--src-tls-verify=false", "--dest-tls-verify=false",
				"--src-no-creds", "--dest-no-creds", "docker://" + from, "docker://" + dstRef}
		}
		if err := runTool(ctx, path, f.home, args...); err != nil {
			return "", err
		}
		return dstRef, nil
	}
}

// runTool runs crane or skopeo with a HOME of its own, so no credentials
// or caches of the user are used.
func runTool(ctx context.Context, path, home string, args ...string) error {
	cmd := exec.CommandContext(ctx, path, args...)
	cmd.Env = append(os.Environ(),
		"HOME="+home,
		"DOCKER_CONFIG="+filepath.Join(home, "docker"),
		"REGISTRY_AUTH_FILE="+filepath.Join(home, "auth.json"),
	)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("%s %s: %v: %s", filepath.Base(path), strings.Join(args, " "), err, out.String())
	}
	return nil
}

func lookTool(tool string) string {
	if p, err := exec.LookPath(tool); err == nil {
		return p
	}
	gopath, err := exec.Command("go", "env", "GOPATH").Output()
	if err != nil {
		return ""
	}
	for _, dir := range filepath.SplitList(strings.TrimSpace(string(gopath))) {
		p := filepath.Join(dir, "bin", tool)
		if fi, err := os.Stat(p); err == nil && !fi.IsDir() {
			return p
		}
	}
	return ""
}

func copiers(b *testing.B, f *fixture) map[string]func(*testing.B) copier {
	return map[string]func(*testing.B) copier{
		"tagger": func(*testing.B) copier { return taggerCopier(importer.New(importer.Options{})) },
		"crane":  func(b *testing.B) copier { return toolCopier(b, f, "crane") },
		"skopeo": func(b *testing.B) copier { return toolCopier(b, f, "skopeo") },
	}
}

var order = []string{"tagger", "crane", "skopeo"}

// BenchmarkMirror copies the 5 x 20 MiB image into an empty registry each
// iteration, so every blob is transferred.
func BenchmarkMirror(b *testing.B) {
	f := getFixture(b)
	cs := copiers(b, f)
	for _, tool := range order {
		b.Run(tool, func(b *testing.B) {
			c := cs[tool](b)
			b.SetBytes(f.bytes)
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				b.StopTimer()
				dst := newDestination(b)
				b.StartTimer()
				ref, err := c(context.Background(), f.from(), fmt.Sprintf("%s/mirror/app-%d", dst.Addr(), i))
				if err != nil {
					b.Fatal(err)
				}
				b.StopTimer()
				if i == 0 {
					checkDigest(b, ref, f.digest)
				}
				_ = dst.Close()
				b.StartTimer()
			}
		})
	}
}

// BenchmarkMirrorExisting copies into a repository that already holds the
// image: the cost of checking a mirror that is up to date.
func BenchmarkMirrorExisting(b *testing.B) {
	f := getFixture(b)
	cs := copiers(b, f)
	for _, tool := range order {
		b.Run(tool, func(b *testing.B) {
			c := cs[tool](b)
			dst := newDestination(b)
			defer dst.Close()
			repo := dst.Addr() + "/mirror/app"
			ref, err := c(context.Background(), f.from(), repo)
			if err != nil {
				b.Fatal(err)
			}
			checkDigest(b, ref, f.digest)
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				if _, err := c(context.Background(), f.from(), repo); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// BenchmarkResolve compares an ImageImport without mirror (Importer.Import)
// with the least a client can do: one manifest HEAD with net/http.
func BenchmarkResolve(b *testing.B) {
	f := getFixture(b)
	b.Run("tagger-import", func(b *testing.B) {
		imp := importer.New(importer.Options{})
		req := importer.Request{From: f.from(), Insecure: true}
		for i := 0; i < b.N; i++ {
			res, err := imp.Import(context.Background(), req)
			if err != nil {
				b.Fatal(err)
			}
			if i == 0 && res.Digest != f.digest.String() {
				b.Fatalf("digest %s, want %s", res.Digest, f.digest)
			}
		}
	})
	b.Run("bare-head", func(b *testing.B) {
		client := &http.Client{Timeout: 30 * time.Second}
		url := f.src.URL() + "/v2/" + srcRepo + "/manifests/" + srcTag
		for i := 0; i < b.N; i++ {
			req, err := http.NewRequest(http.MethodHead, url, nil)
			if err != nil {
				b.Fatal(err)
			}
			req.Header.Set("Accept", strings.Join([]string{
				"application/vnd.oci.image.index.v1+json",
				"application/vnd.docker.distribution.manifest.list.v2+json",
				"application/vnd.oci.image.manifest.v1+json",
				"application/vnd.docker.distribution.manifest.v2+json",
			}, ", "))
			resp, err := client.Do(req)
			if err != nil {
				b.Fatal(err)
			}
			_ = resp.Body.Close()
			if got := resp.Header.Get("Docker-Content-Digest"); resp.StatusCode != http.StatusOK || (i == 0 && got != f.digest.String()) {
				b.Fatalf("HEAD: %s, digest %q, want %s", resp.Status, got, f.digest)
			}
		}
	})
}
