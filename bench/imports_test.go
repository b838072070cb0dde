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
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime/pprof"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"

	taggerv1beta1 "tagger.dev/tagger/pkg/apis/tagger/v1beta1"
	"tagger.dev/tagger/pkg/importer"
	"tagger.dev/tagger/pkg/localregistry"
)

// End to end: ImageImports created with kubectl against a Tagger server in
// local mode (in this process, with its embedded etcd), next to crane and
// skopeo processes on the same loopback registries, and the library path
// (importer.Importer) on its own.

var runID = time.Now().Unix() % 100000

// kubectl runs kubectl against the benchmark server, with a discovery
// cache of its own (as a user's kubectl has).
func kubectl(f *transferFixture, stdin string, args ...string) (string, error) {
	path := lookTool("kubectl")
	if path == "" {
		return "", errNoKubectl
	}
	cmd := exec.Command(path, args...)
	cmd.Env = append(os.Environ(), "KUBECONFIG="+f.kubeconfig, "HOME="+f.home, "KUBECACHEDIR="+filepath.Join(f.home, "kubecache"))
	cmd.Stdin = strings.NewReader(stdin)
	var out, errOut bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errOut
	if err := cmd.Run(); err != nil {
		return "", fmt.Errorf("kubectl %s: %v: %s", strings.Join(args, " "), err, errOut.String())
	}
	return out.String(), nil
}

var errNoKubectl = fmt.Errorf("kubectl not found on PATH")

func needKubectl(b *testing.B, names ...string) {
	if lookTool("kubectl") == "" {
		for _, n := range names {
			skipped(n, "kubectl not on PATH")
		}
		b.Skip("kubectl not found on PATH: install kubectl to compare imports through it")
	}
}

func importYAML(target, from string, mirror bool) string {
	return fmt.Sprintf(`apiVersion: tagger.dev/v1beta1
kind: ImageImport
metadata:
  generateName: bench-
  namespace: default
spec:
  targetImage: %s
  from: %s
  insecure: true
  mirror: %v
`, target, from, mirror)
}

// kubectlImport creates an ImageImport with kubectl and checks it was
// imported; it returns the generation's image reference.
func kubectlImport(f *transferFixture, target, from string, mirror bool) (string, error) {
	ref, _, err := kubectlImportNamed(f, target, from, mirror)
	return ref, err
}

// kubectlImportNamed is kubectlImport that also returns the ImageImport's
// name.
func kubectlImportNamed(f *transferFixture, target, from string, mirror bool) (ref, name string, err error) {
	out, err := kubectl(f, importYAML(target, from, mirror), "create", "-f", "-", "-o", "json")
	if err != nil {
		return "", "", err
	}
	var meta struct {
		Metadata struct{ Name string } `json:"metadata"`
	}
	_ = json.Unmarshal([]byte(out), &meta)
	ref, err = importedRef([]byte(out))
	return ref, meta.Metadata.Name, err
}

// kubectlFloor measures, right after an import through kubectl, what
// kubectl costs without the import: a kubectl get of that same ImageImport
// printed as JSON (the same process start, kubeconfig, discovery cache, TLS
// handshake, one request and its printing), and kubectl version --client
// (the process alone, no request). create − get is then the import's share.
func kubectlFloor(b *testing.B, f *transferFixture, prefix, name string) {
	b.Helper()
	measure(b, prefix+"/kubectl-get", func() error {
		_, err := kubectl(f, "", "get", "imageimports.tagger.dev", name, "-n", "default", "-o", "json")
		return err
	})
	measure(b, prefix+"/kubectl-version", func() error {
		_, err := kubectl(f, "", "version", "--client", "-o", "json")
		return err
	})
}

// cpuTime is the CPU time (user and system) of this process, or of its
// waited-for children.
func cpuTime(who int) time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(who, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

func importedRef(b []byte) (string, error) {
	var ii taggerv1beta1.ImageImport
	if err := json.Unmarshal(b, &ii); err != nil {
		return "", err
	}
	for _, c := range ii.Status.Conditions {
		if c.Type == taggerv1beta1.ConditionImported && c.Status == metav1.ConditionTrue && ii.Status.HashReference != nil {
			return ii.Status.HashReference.ImageReference, nil
		}
	}
	return "", fmt.Errorf("import %s not imported: %+v", ii.Name, ii.Status.Conditions)
}

// clientImport creates an ImageImport with the generated clientset.
func clientImport(ctx context.Context, f *transferFixture, target, from string, mirror bool) (string, error) {
	ii := &taggerv1beta1.ImageImport{
		ObjectMeta: metav1.ObjectMeta{GenerateName: "bench-"},
		Spec: taggerv1beta1.ImageImportSpec{
			TargetImage: target, From: from, Insecure: ptr.To(true), Mirror: ptr.To(mirror),
		},
	}
	got, err := f.client.TaggerV1beta1().ImageImports("default").Create(ctx, ii, metav1.CreateOptions{})
	if err != nil {
		return "", err
	}
	b, _ := json.Marshal(got)
	return importedRef(b)
}

// uploadCounter counts blob data sent to a registry (PATCH or PUT of an
// upload).
type uploadCounter struct{ n atomic.Int64 }

func (c *uploadCounter) wrap(h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if strings.Contains(r.URL.Path, "/blobs/uploads/") && (r.Method == http.MethodPatch || r.Method == http.MethodPut) {
			c.n.Add(1)
		}
		h.ServeHTTP(w, r)
	})
}

func newCountingDestination(b *testing.B, c *uploadCounter) *destination {
	b.Helper()
	dir, err := os.MkdirTemp("", "tagger-bench-dst")
	if err != nil {
		b.Fatal(err)
	}
	dst, err := localregistry.New(context.Background(), localregistry.Options{Dir: dir, Handler: c.wrap})
	if err != nil {
		b.Fatal(err)
	}
	return &destination{Registry: dst, dir: dir}
}

// timeIt runs f b.N times, timing each run, and records the times.
func timeIt(b *testing.B, name string, f func(i int) error) {
	b.Helper()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		start := time.Now()
		if err := f(i); err != nil {
			b.Fatal(err)
		}
		record(name, time.Since(start))
	}
}

// BenchmarkImportMount: a mirrored import of the 5 x 20 MiB image into a
// new Image when the mirror already holds every blob (another Image
// imported it), through kubectl and through the library, next to a cold
// crane copy and skopeo with its blob-info cache. Each iteration runs every
// contender once, so that the machine's load changes hit them alike.
func BenchmarkImportMount(b *testing.B) {
	src := getFixture(b)
	from := src.from()
	ctx := context.Background()

	var f *transferFixture
	counter := &uploadCounter{}
	if lookTool("kubectl") == "" {
		for _, n := range []string{"mount/tagger-kubectl", "mount/kubectl-get", "mount/kubectl-version"} {
			skipped(n, "kubectl not on PATH")
		}
	} else {
		f = getTransfer(b)
	}
	kdst := newCountingDestination(b, counter)
	defer kdst.Close()
	if f != nil {
		f.mirror.addr.Store(kdst.Addr())
		if _, err := kubectlImport(f, fmt.Sprintf("mount-seed-%d-%d", runID, b.N), from, true); err != nil {
			b.Fatal(err)
		}
	}
	imp := importer.New(importer.Options{})
	defer imp.Close()
	lib := taggerCopier(imp)
	ldst := newDestination(b)
	defer ldst.Close()
	if _, err := lib(ctx, from, ldst.Addr()+"/seed/app"); err != nil {
		b.Fatal(err)
	}
	crane := optionalTool(b, src, "crane", "mount/crane-cold")
	skopeo := optionalTool(b, src, "skopeo", "mount/skopeo-cached")
	sdst := newDestination(b)
	defer sdst.Close()
	if skopeo != nil {
		if _, err := skopeo(ctx, from, sdst.Addr()+"/seed/app"); err != nil {
			b.Fatal(err)
		}
	}
	counter.n.Store(0)
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		if f != nil {
			var name string
			measure(b, "mount/tagger-kubectl", func() error {
				ref, n, err := kubectlImportNamed(f, fmt.Sprintf("mount-%d-%d-%d", runID, b.N, i), from, true)
				if err == nil && !strings.HasPrefix(ref, kdst.Addr()+"/") {
					err = fmt.Errorf("generation %s is not in the mirror", ref)
				}
				name = n
				return err
			})
			kubectlFloor(b, f, "mount", name)
		}
		if f != nil {
			measure(b, "mount/tagger-client", func() error {
				_, err := clientImport(ctx, f, fmt.Sprintf("mount-client-%d-%d-%d", runID, b.N, i), from, true)
				return err
			})
		}
		measure(b, "mount/tagger-library", func() error {
			_, err := lib(ctx, from, fmt.Sprintf("%s/ns-%d/app", ldst.Addr(), i))
			return err
		})
		if crane != nil {
			coldOnce(b, "mount/crane-cold", crane, from)
		}
		if skopeo != nil {
			measure(b, "mount/skopeo-cached", func() error {
				_, err := skopeo(ctx, from, fmt.Sprintf("%s/ns-%d/app", sdst.Addr(), i))
				return err
			})
		}
	}
	if f != nil {
		n := counter.n.Load()
		record("mount/uploads", time.Duration(n))
		if n != 0 {
			b.Errorf("%d blob uploads into a mirror that had every blob", n)
		}
	}
}

// optionalTool returns a copier running tool, or nil (and notes why) when
// it is not installed.
func optionalTool(b *testing.B, f *fixture, tool string, names ...string) copier {
	if tool == "crane" && lookTool(tool) == "" {
		// crane comes from the Go module proxy, like everything else here.
		b.Logf("installing crane: go install github.com/google/go-containerregistry/cmd/crane@v0.22.1")
		if out, err := exec.Command("go", "install", "github.com/google/go-containerregistry/cmd/crane@v0.22.1").CombinedOutput(); err != nil {
			b.Logf("go install crane: %v: %s", err, out)
		}
	}
	if lookTool(tool) == "" {
		why := tool + " not installed"
		switch tool {
		case "crane":
			why += ": go install github.com/google/go-containerregistry/cmd/crane@v0.22.1"
		case "skopeo":
			why += ": apt-get install -y skopeo"
		}
		for _, n := range names {
			skipped(n, why)
		}
		b.Logf("SKIPPED %v: %s", names, why)
		return nil
	}
	return toolCopier(b, f, tool)
}

// measure times f once and records it under name.
func measure(b *testing.B, name string, f func() error) {
	b.Helper()
	start := time.Now()
	if err := f(); err != nil {
		b.Fatalf("%s: %v", name, err)
	}
	record(name, time.Since(start))
}

// coldOnce copies into a new, empty registry.
func coldOnce(b *testing.B, name string, c copier, from string) {
	b.Helper()
	dst := newDestination(b)
	defer dst.Close()
	measure(b, name, func() error {
		_, err := c(context.Background(), from, dst.Addr()+"/mirror/app")
		return err
	})
}

// BenchmarkImportCold: a mirrored import into an empty mirror, through
// kubectl and the library, next to crane and skopeo copies into an empty
// registry; every contender once per iteration.
func BenchmarkImportCold(b *testing.B) {
	src := getFixture(b)
	from := src.from()
	var f *transferFixture
	if lookTool("kubectl") == "" {
		for _, n := range []string{"cold/tagger-kubectl", "cold/kubectl-get", "cold/kubectl-version"} {
			skipped(n, "kubectl not on PATH")
		}
		skipped("cold/tagger-client", "kubectl not on PATH: the server fixture is only started with it")
	} else {
		f = getTransfer(b)
	}
	imp := importer.New(importer.Options{})
	defer imp.Close()
	lib := taggerCopier(imp)
	crane := optionalTool(b, src, "crane", "cold/crane")
	skopeo := optionalTool(b, src, "skopeo", "cold/skopeo")
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		if f != nil {
			dst := newDestination(b)
			f.mirror.addr.Store(dst.Addr())
			var name string
			measure(b, "cold/tagger-kubectl", func() error {
				var err error
				_, name, err = kubectlImportNamed(f, fmt.Sprintf("cold-%d-%d-%d", runID, b.N, i), from, true)
				return err
			})
			_ = dst.Close()
			kubectlFloor(b, f, "cold", name)
			dst = newDestination(b)
			f.mirror.addr.Store(dst.Addr())
			measure(b, "cold/tagger-client", func() error {
				_, err := clientImport(context.Background(), f, fmt.Sprintf("cold-client-%d-%d-%d", runID, b.N, i), from, true)
				return err
			})
			_ = dst.Close()
		}
		// CPU: this process runs the registries (and the server, idle
		// meanwhile); during crane's copy they are all it does, so the
		// difference is the library's own share.
		self := cpuTime(syscall.RUSAGE_SELF)
		coldOnce(b, "cold/tagger-library", lib, from)
		record("cold/cpu-library-and-registries", cpuTime(syscall.RUSAGE_SELF)-self)
		if crane != nil {
			self, children := cpuTime(syscall.RUSAGE_SELF), cpuTime(syscall.RUSAGE_CHILDREN)
			coldOnce(b, "cold/crane", crane, from)
			record("cold/cpu-registries-during-crane", cpuTime(syscall.RUSAGE_SELF)-self)
			record("cold/cpu-crane-process", cpuTime(syscall.RUSAGE_CHILDREN)-children)
		}
		if skopeo != nil {
			coldOnce(b, "cold/skopeo", skopeo, from)
		}
	}
}

var profileOnce sync.Once

// BenchmarkImportResolve: an import without mirror through kubectl next to
// a kubectl get (the difference is the server's share), through a plain
// API client, and the library path with and without its ping and token
// cache next to one bare HEAD. A CPU profile of the server over 100
// imports through the API client goes into the report.
func BenchmarkImportResolve(b *testing.B) {
	src := getFixture(b)
	from := src.from()
	target := fmt.Sprintf("resolve-%d", runID)
	b.Run("kubectl", func(b *testing.B) {
		needKubectl(b, "resolve/kubectl-create", "resolve/kubectl-get")
		f := getTransfer(b)
		if _, err := kubectlImport(f, target, from, false); err != nil {
			b.Fatal(err)
		}
		b.ResetTimer()
		for i := 0; i < b.N; i++ {
			measure(b, "resolve/kubectl-create", func() error {
				_, err := kubectlImport(f, target, from, false)
				return err
			})
			// The same client work but for the import: one request, its
			// object printed as JSON.
			measure(b, "resolve/kubectl-get", func() error {
				_, err := kubectl(f, "", "get", "images.tagger.dev", target, "-n", "default", "-o", "json")
				return err
			})
		}
	})
	b.Run("client-create", func(b *testing.B) {
		f := getTransfer(b)
		ctx := context.Background()
		if _, err := clientImport(ctx, f, target, from, false); err != nil {
			b.Fatal(err)
		}
		timeIt(b, "resolve/client-create", func(int) error {
			_, err := clientImport(ctx, f, target, from, false)
			return err
		})
		profileOnce.Do(func() { profileImports(b, f, target, from) })
	})
	for _, v := range []struct {
		name string
		opts importer.Options
	}{
		{"library", importer.Options{}},
		{"library-no-auth-cache", importer.Options{NoAuthCache: true}},
	} {
		b.Run(v.name, func(b *testing.B) {
			imp := importer.New(v.opts)
			defer imp.Close()
			req := importer.Request{From: from, Insecure: true}
			if _, err := imp.Import(context.Background(), req); err != nil {
				b.Fatal(err)
			}
			timeIt(b, "resolve/"+v.name, func(int) error {
				res, err := imp.Import(context.Background(), req)
				if err == nil && res.Digest != src.digest.String() {
					err = fmt.Errorf("digest %s, want %s", res.Digest, src.digest)
				}
				return err
			})
		})
	}
	b.Run("bare-head", func(b *testing.B) {
		client := &http.Client{Timeout: 30 * time.Second}
		url := src.src.URL() + "/v2/" + srcRepo + "/manifests/" + srcTag
		timeIt(b, "resolve/bare-head", func(int) error {
			req, err := http.NewRequest(http.MethodHead, url, nil)
			if err != nil {
				return err
			}
			req.Header.Set("Accept", "application/vnd.oci.image.index.v1+json, application/vnd.docker.distribution.manifest.list.v2+json, application/vnd.oci.image.manifest.v1+json, application/vnd.docker.distribution.manifest.v2+json")
			resp, err := client.Do(req)
			if err != nil {
				return err
			}
			_ = resp.Body.Close()
			if resp.StatusCode != http.StatusOK {
				return fmt.Errorf("HEAD: %s", resp.Status)
			}
			return nil
		})
	})
}

// profileImports profiles this process (the server, its etcd and the
// client) over 100 imports without mirror and adds the top of the profile
// to the report.
func profileImports(b *testing.B, f *transferFixture, target, from string) {
	path := filepath.Join(os.TempDir(), fmt.Sprintf("tagger-bench-import-%d.pprof", runID))
	out, err := os.Create(path)
	if err != nil {
		b.Fatal(err)
	}
	defer out.Close()
	if err := pprof.StartCPUProfile(out); err != nil {
		b.Logf("no CPU profile: %v", err)
		return
	}
	start := time.Now()
	const n = 100
	for i := 0; i < n; i++ {
		if _, err := clientImport(context.Background(), f, target, from, false); err != nil {
			pprof.StopCPUProfile()
			b.Fatal(err)
		}
	}
	elapsed := time.Since(start)
	pprof.StopCPUProfile()
	top, err := exec.Command("go", "tool", "pprof", "-top", "-nodecount=25", path).CombinedOutput()
	if err != nil {
		top = []byte(fmt.Sprintf("go tool pprof: %v", err))
	}
	cum, _ := exec.Command("go", "tool", "pprof", "-top", "-cum", "-nodecount=40", path).CombinedOutput()
	appendix(fmt.Sprintf("\n--- CPU profile of this process (server, embedded etcd, API client) over %d imports without mirror, %s each (%s)\n%s\n--- same, by cumulative time\n%s",
		n, fmtDur(elapsed/n), path, trimProfile(top), trimProfile(cum)))
}

func trimProfile(b []byte) string {
	lines := strings.Split(strings.TrimSpace(string(b)), "\n")
	var out []string
	for _, l := range lines {
		if strings.HasPrefix(l, "File:") || strings.HasPrefix(l, "Build ID:") || strings.HasPrefix(l, "Type:") || strings.HasPrefix(l, "Time:") {
			continue
		}
		out = append(out, l)
	}
	return strings.Join(out, "\n")
}
