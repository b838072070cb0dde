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
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"tagger.dev/tagger/pkg/localregistry"
)

// benchOutEnv names the file TestAggregatorBench writes its measurements
// to; without it the test is skipped. `make bench` (bench/) sets it and
// puts the numbers into its report.
const benchOutEnv = "TAGGER_E2E_BENCH_OUT"

// aggregatorBench is what TestAggregatorBench measures, in seconds and
// bytes.
type aggregatorBench struct {
	Bytes          int64   `json:"bytes"`
	PushTagger     float64 `json:"pushTagger"`
	PushSkopeo     float64 `json:"pushSkopeo"`
	PullTagger     float64 `json:"pullTagger"`
	PullSkopeo     float64 `json:"pullSkopeo"`
	RSSBefore      int64   `json:"rssBefore"`
	RSSPeakPush    int64   `json:"rssPeakPush"`
	RSSPeakPull    int64   `json:"rssPeakPull"`
	SkopeoSkipped  string  `json:"skopeoSkipped,omitempty"`
	TaggerRSSError string  `json:"taggerRSSError,omitempty"`
}

// benchCluster is the cluster with the plugin installed, a new namespace
// and a mirror registry of its own for it.
func benchCluster(t *testing.T, namespace string) (*cluster, string, *registry) {
	t.Helper()
	c := needCluster(t)
	c.needPlugin(t, "kubectl-image")
	ns := c.namespace(t, namespace)
	reg, err := localregistry.New(context.Background(), localregistry.Options{Dir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = reg.Close() })
	mirror := &registry{Registry: reg}
	c.ownMirror(t, ns, mirror)
	return c, ns, mirror
}

// TestAggregatorBench pushes and pulls a 1 GiB image of 4 layers through
// kube-apiserver's aggregator with `kubectl image`, next to skopeo copying
// the same OCI layout straight to and from the same registry, and samples
// tagger-apiserver's RSS meanwhile.
func TestAggregatorBench(t *testing.T) {
	out := os.Getenv(benchOutEnv)
	if out == "" {
		t.Skipf("a benchmark: runs with %s=FILE (make bench)", benchOutEnv)
	}
	c, ns, mirror := benchCluster(t, "bench-aggregator")

	var res aggregatorBench
	work := t.TempDir()
	layout := filepath.Join(work, "layout")
	d, size := bigLayout(t, work, layout, 4, 256<<20)
	res.Bytes = size
	pid := c.pid("tagger-apiserver")
	rss := func() int64 {
		n, err := readRSS(pid)
		if err != nil && res.TaggerRSSError == "" {
			res.TaggerRSSError = err.Error()
		}
		return n
	}
	res.RSSBefore = rss()

	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Minute)
	defer cancel()
	timed := func(peak *int64, f func() error) float64 {
		stop := make(chan struct{})
		var wg sync.WaitGroup
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				if n := rss(); n > *peak {
					*peak = n
				}
				select {
				case <-stop:
					return
				case <-time.After(50 * time.Millisecond):
				}
			}
		}()
		start := time.Now()
		err := f()
		elapsed := time.Since(start).Seconds()
		close(stop)
		wg.Wait()
		if err != nil {
			t.Fatal(err)
		}
		return elapsed
	}
	res.PushTagger = timed(&res.RSSPeakPush, func() error {
		got, _, err := c.pluginRun(ctx, "admin", "push", "-n", ns, "big", "oci:"+layout)
		if err == nil && strings.TrimSpace(got) != mirror.Addr()+"/"+ns+"/big@"+d.String() {
			err = fmt.Errorf("push printed %q", got)
		}
		return err
	})
	pulled := filepath.Join(work, "pulled")
	res.PullTagger = timed(&res.RSSPeakPull, func() error {
		_, _, err := c.pluginRun(ctx, "admin", "pull", "-n", ns, "big", "oci:"+pulled)
		return err
	})
	if got := readLayout(t, pulled); got.digest != d.String() {
		t.Fatalf("pulled %s, pushed %s", got.digest, d)
	}
	_ = os.RemoveAll(pulled)

	skopeo, err := exec.LookPath("skopeo")
	if err != nil {
		res.SkopeoSkipped = "skopeo not installed: apt-get install -y skopeo"
	} else {
		run := func(args ...string) error {
			cmd := exec.CommandContext(ctx, skopeo, append([]string{"copy", "--quiet", "--src-tls-verify=false", "--dest-tls-verify=false",
				"--src-no-creds", "--dest-no-creds", "--preserve-digests"}, args...)...)
			cmd.Env = append(os.Environ(), "HOME="+work)
			if b, err := cmd.CombinedOutput(); err != nil {
				return fmt.Errorf("skopeo %v: %v: %s", args, err, b)
			}
			return nil
		}
		var none int64
		res.PushSkopeo = timed(&none, func() error {
			return run("oci:"+layout, "docker://"+mirror.Addr()+"/"+ns+"/skopeo:latest")
		})
		res.PullSkopeo = timed(&none, func() error {
			return run("docker://"+mirror.Addr()+"/"+ns+"/skopeo:latest", "oci:"+pulled)
		})
	}
	t.Logf("%+v", res)
	b, err := json.Marshal(res)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(out, b, 0o600); err != nil {
		t.Fatal(err)
	}
}

// pid returns the process id of the cluster process named name, or 0.
func (c *cluster) pid(name string) int {
	for _, p := range c.procs {
		if p.name == name && p.cmd.Process != nil {
			return p.cmd.Process.Pid
		}
	}
	return 0
}

// readRSS returns the resident set size of process pid, in bytes.
func readRSS(pid int) (int64, error) {
	if pid == 0 {
		return 0, fmt.Errorf("no such process")
	}
	f, err := os.Open(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, err
	}
	defer f.Close()
	s := bufio.NewScanner(f)
	for s.Scan() {
		if rest, ok := strings.CutPrefix(s.Text(), "VmRSS:"); ok {
			kb, err := strconv.ParseInt(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(rest), "kB")), 10, 64)
			return kb << 10, err
		}
	}
	return 0, fmt.Errorf("no VmRSS in /proc/%d/status", pid)
}
