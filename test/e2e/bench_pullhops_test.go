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

package e2e

import (
	"bufio"
	"context"
	"crypto/sha256"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime/pprof"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"

	"tagger.dev/tagger/pkg/imagecopy"
	"tagger.dev/tagger/pkg/registryproxy"
)

// pullHopsEnv names a directory TestPullHops writes CPU profiles and the
// servers' logs to; without it the test is skipped.
const pullHopsEnv = "TAGGER_E2E_PULL_HOPS"

// TestPullHops times the pull of a 1 GiB image of 4 layers hop by hop, and
// the CPU time kube-apiserver, tagger-apiserver and this process (the
// mirror, and the client where it runs here) spend on it:
//
//	skopeo            skopeo copy from the mirror straight (its own CPU logged)
//	raw-direct-h2/h1  the 4 blobs at once from Tagger's images/pull, no aggregator, HTTP/2 or 1.1
//	raw-kas-h2/h1     the same through kube-apiserver, ordinary answers
//	raw-kas-upgraded  the same on upgraded connections (registryproxy.BlobStreamProtocol)
//	pull-direct/kas   imagecopy.Pull in this process, to an OCI layout
//	plugin            kubectl image pull, as TestAggregatorBench runs it (its CPU logged)
//
// TAGGER_E2E_PULL_HOPS_PROFILE=NAME writes this process' CPU profile of
// run NAME, TAGGER_E2E_PULL_HOPS_SERVER=NAME[,NAME] tagger-apiserver's.
func TestPullHops(t *testing.T) {
	out := os.Getenv(pullHopsEnv)
	if out == "" {
		t.Skipf("a benchmark: runs with %s=DIR", pullHopsEnv)
	}
	c, ns, mirror := benchCluster(t, "bench-hops")
	work := t.TempDir()
	layout := filepath.Join(work, "layout")
	d, _ := bigLayout(t, work, layout, 4, 256<<20)
	ctx := context.Background()
	if _, _, err := c.pluginRun(ctx, "admin", "push", "-n", ns, "big", "oci:"+layout); err != nil {
		t.Fatal(err)
	}
	var blobs []string
	for b, n := range readLayout(t, layout).blobs {
		if n < 1<<20 {
			continue // the manifest and config
		}
		blobs = append(blobs, b)
	}

	viaKAS, err := clientcmd.BuildConfigFromFlags("", c.kubeconfig)
	if err != nil {
		t.Fatal(err)
	}
	direct := rest.CopyConfig(viaKAS)
	direct.Host = c.tagger
	direct.TLSClientConfig = rest.TLSClientConfig{
		CAFile:     filepath.Join(c.dir, "install", "artifacts", "certs", "ca.crt"),
		ServerName: "tagger-apiserver.tagger.svc",
	}
	h1 := func(cfg *rest.Config) *rest.Config {
		cfg = rest.CopyConfig(cfg)
		cfg.NextProtos = []string{"http/1.1"}
		return cfg
	}

	timed := func(name string, f func() error) {
		if p := os.Getenv("TAGGER_E2E_PULL_HOPS_PROFILE"); p == name {
			fp, err := os.Create(filepath.Join(out, name+".pprof"))
			if err != nil {
				t.Fatal(err)
			}
			defer fp.Close()
			_ = pprof.StartCPUProfile(fp)
			defer pprof.StopCPUProfile()
		}
		pids := []int{c.pid("kube-apiserver"), c.pid("tagger-apiserver"), os.Getpid()}
		before := make([]float64, len(pids))
		for i, p := range pids {
			before[i] = cpuSeconds(p)
		}
		start := time.Now()
		if err := f(); err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		el := time.Since(start).Seconds()
		for i, p := range pids {
			before[i] = cpuSeconds(p) - before[i]
		}
		t.Logf("%-16s %6.2fs  CPU-s: kube-apiserver %5.2f tagger-apiserver %5.2f this %5.2f", name, el, before[0], before[1], before[2])
	}
	// raw GETs every blob at once through images/pull, hashing it.
	raw := func(cfg *rest.Config, upgraded bool) func() error {
		return func() error {
			rt, err := rest.TransportFor(cfg)
			if err != nil {
				return err
			}
			var wg sync.WaitGroup
			errs := make(chan error, len(blobs))
			for _, b := range blobs {
				wg.Add(1)
				go func() {
					defer wg.Done()
					u := fmt.Sprintf("%s/apis/tagger.dev/v1beta1/namespaces/%s/images/big/pull/blobs/%s", cfg.Host, ns, b)
					req, _ := http.NewRequest(http.MethodGet, u, nil)
					req.Header.Set("Accept-Encoding", "identity")
					if upgraded {
						req.Header.Set("Connection", "Upgrade")
						req.Header.Set("Upgrade", registryproxy.BlobStreamProtocol)
					}
					resp, err := rt.RoundTrip(req)
					if err != nil {
						errs <- err
						return
					}
					defer resp.Body.Close()
					if resp.StatusCode == http.StatusSwitchingProtocols {
						if resp, err = http.ReadResponse(bufio.NewReaderSize(resp.Body, 64<<10), req); err != nil {
							errs <- err
							return
						}
					} else if upgraded {
						errs <- fmt.Errorf("%s: not upgraded: %s", u, resp.Status)
						return
					}
					if ce := resp.Header.Get("Content-Encoding"); ce != "" {
						errs <- fmt.Errorf("Content-Encoding %s", ce)
					}
					if resp.StatusCode != http.StatusOK {
						b, _ := io.ReadAll(io.LimitReader(resp.Body, 512))
						errs <- fmt.Errorf("%s: %s: %s", u, resp.Status, b)
						return
					}
					h := sha256.New()
					if _, err := io.Copy(h, resp.Body); err != nil {
						errs <- err
						return
					}
					if got := digest.NewDigest(digest.SHA256, h).String(); got != b {
						errs <- fmt.Errorf("%s: got %s (%s)", b, got, resp.Proto)
					}
				}()
			}
			wg.Wait()
			close(errs)
			return <-errs
		}
	}
	pull := func(cfg *rest.Config, dest string) func() error {
		return func() error {
			defer os.RemoveAll(dest)
			return imagecopy.Pull(ctx, imagecopy.PullOptions{
				Target: imagecopy.Target{Config: cfg, Namespace: ns, Name: "big"},
				Digest: digest.Digest(d.String()), Dest: "oci:" + dest,
			})
		}
	}
	skopeo := func() error {
		dest := filepath.Join(work, "skopeo")
		defer os.RemoveAll(dest)
		cmd := exec.CommandContext(ctx, "skopeo", "copy", "--quiet", "--src-tls-verify=false", "--src-no-creds", "--preserve-digests",
			"docker://"+mirror.Addr()+"/"+ns+"/big@"+d.String(), "oci:"+dest)
		cmd.Env = append(os.Environ(), "HOME="+work)
		if b, err := cmd.CombinedOutput(); err != nil {
			return fmt.Errorf("%v: %s", err, b)
		}
		t.Logf("skopeo cpu %.2f", (cmd.ProcessState.UserTime() + cmd.ProcessState.SystemTime()).Seconds())
		return nil
	}
	plugin := func() error {
		dest := filepath.Join(work, "plugin")
		defer os.RemoveAll(dest)
		cmd := c.command(ctx, "admin", "image", "pull", "-n", ns, "big", "oci:"+dest)
		if b, err := cmd.CombinedOutput(); err != nil {
			return fmt.Errorf("%v: %s", err, b)
		}
		t.Logf("plugin cpu %.2f", (cmd.ProcessState.UserTime() + cmd.ProcessState.SystemTime()).Seconds())
		return nil
	}
	taggerProfile := func(name string, f func() error) func() error {
		if !slices.Contains(strings.Split(os.Getenv("TAGGER_E2E_PULL_HOPS_SERVER"), ","), name) {
			return f
		}
		return func() error {
			done := make(chan error, 1)
			go func() {
				req, _ := http.NewRequest(http.MethodGet, c.tagger+"/debug/pprof/profile?seconds=4", nil)
				req.Header.Set("Authorization", "Bearer admin-token")
				rt, err := rest.TransportFor(direct)
				if err != nil {
					done <- err
					return
				}
				resp, err := rt.RoundTrip(req)
				if err != nil {
					done <- err
					return
				}
				defer resp.Body.Close()
				fp, _ := os.Create(filepath.Join(out, name+"-server.pprof"))
				_, err = io.Copy(fp, resp.Body)
				fp.Close()
				done <- err
			}()
			time.Sleep(200 * time.Millisecond)
			err := f()
			if e := <-done; e != nil {
				t.Logf("server profile: %v", e)
			}
			return err
		}
	}
	for range 2 {
		timed("skopeo", skopeo)
		timed("raw-direct-h2", taggerProfile("raw-direct-h2", raw(direct, false)))
		timed("raw-direct-h1", taggerProfile("raw-direct-h1", raw(h1(direct), false)))
		timed("raw-kas-h2", taggerProfile("raw-kas-h2", raw(viaKAS, false)))
		timed("raw-kas-h1", taggerProfile("raw-kas-h1", raw(h1(viaKAS), false)))
		timed("raw-kas-upgraded", taggerProfile("raw-kas-upgraded", raw(h1(viaKAS), true)))
		timed("pull-direct", taggerProfile("pull-direct", pull(direct, filepath.Join(work, "p1"))))
		timed("pull-kas", taggerProfile("pull-kas", pull(viaKAS, filepath.Join(work, "p2"))))
		timed("plugin", taggerProfile("plugin", plugin))
	}
	// The processes' logs, to look for what the pulls left there.
	for _, name := range []string{"tagger-apiserver", "kube-apiserver"} {
		if b, err := os.ReadFile(filepath.Join(c.dir, name+".log")); err == nil {
			_ = os.WriteFile(filepath.Join(out, name+".log"), b, 0o644)
		}
	}
}

// cpuSeconds is the user+system CPU time of process pid.
func cpuSeconds(pid int) float64 {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0
	}
	s := string(b)
	fields := strings.Fields(s[strings.LastIndexByte(s, ')')+2:])
	u, _ := strconv.ParseFloat(fields[11], 64)
	st, _ := strconv.ParseFloat(fields[12], 64)
	return (u + st) / 100
}
