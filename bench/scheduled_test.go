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
	"bufio"
	"context"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/v1/random"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/client-go/tools/clientcmd"

	"tagger.dev/tagger/pkg/apis/tagger/v1beta1"
	taggerclient "tagger.dev/tagger/pkg/generated/clientset/versioned"
	"tagger.dev/tagger/pkg/localregistry"
)

// The scheduled-images benchmark: scheduledImages Images, every one
// scheduled every scheduledInterval, against one registry (scheduledRepos
// repositories, 10 tags each), served by tagger-apiserver --local (a
// process of its own, with its embedded etcd).
const (
	scheduledImages   = 1000
	scheduledRepos    = 100
	scheduledInterval = 30 * time.Second
)

// requestCounter counts a registry's requests and how many run at once.
type requestCounter struct {
	total, heads, gets, tags atomic.Int64
	inFlight, peak           atomic.Int64
}

func (c *requestCounter) wrap(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		c.total.Add(1)
		switch {
		case strings.HasSuffix(r.URL.Path, "/tags/list"):
			c.tags.Add(1)
		case strings.Contains(r.URL.Path, "/manifests/") && r.Method == http.MethodHead:
			c.heads.Add(1)
		case strings.Contains(r.URL.Path, "/manifests/") && r.Method == http.MethodGet:
			c.gets.Add(1)
		}
		n := c.inFlight.Add(1)
		for {
			p := c.peak.Load()
			if n <= p || c.peak.CompareAndSwap(p, n) {
				break
			}
		}
		defer c.inFlight.Add(-1)
		next.ServeHTTP(w, r)
	})
}

type counts struct{ total, heads, gets, tags int64 }

func (c *requestCounter) snapshot() counts {
	return counts{c.total.Load(), c.heads.Load(), c.gets.Load(), c.tags.Load()}
}

// procStat returns the CPU time (user + system) and resident memory of pid.
func procStat(pid int) (time.Duration, int64, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, 0, err
	}
	// Fields after the command name, which is in parentheses.
	f := strings.Fields(string(b[strings.LastIndexByte(string(b), ')')+2:]))
	utime, _ := strconv.ParseInt(f[11], 10, 64)
	stime, _ := strconv.ParseInt(f[12], 10, 64)
	const ticks = 100 // USER_HZ on Linux
	cpu := time.Duration(utime+stime) * time.Second / ticks
	s, err := os.Open(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return cpu, 0, err
	}
	defer s.Close()
	var rss int64
	sc := bufio.NewScanner(s)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), "VmRSS:"); ok {
			kb, _ := strconv.ParseInt(strings.Fields(v)[0], 10, 64)
			rss = kb * 1024
		}
	}
	return cpu, rss, nil
}

type scheduledFixture struct {
	counter *requestCounter
	client  taggerclient.Interface
	pid     int
	// setup: the first check and import of every Image.
	setup     time.Duration
	setupReqs counts
}

var (
	scheduledOnce sync.Once
	theScheduled  *scheduledFixture
	scheduledErr  error
)

// newScheduledFixture starts the registry and server the benchmark shares
// across its runs (b.N = 1, then the -benchtime count): they are stopped
// when the package's benchmarks end (atExit), not with the first run.
func newScheduledFixture(b *testing.B) (*scheduledFixture, error) {
	home, err := os.MkdirTemp("", "tagger-bench-scheduled")
	if err != nil {
		return nil, err
	}
	atExit = append(atExit, func() { _ = os.RemoveAll(home) })
	f := &scheduledFixture{counter: &requestCounter{}}
	reg, err := localregistry.New(context.Background(), localregistry.Options{Handler: f.counter.wrap})
	if err != nil {
		return nil, err
	}
	atExit = append(atExit, func() { _ = reg.Close() })
	img, err := random.Image(256, 1)
	if err != nil {
		return nil, err
	}
	for r := range scheduledRepos {
		for tag := range 10 {
			ref, err := name.ParseReference(fmt.Sprintf("%s/org/app-%d:v%d", reg.Addr(), r, tag), name.Insecure)
			if err != nil {
				return nil, err
			}
			if err := remote.Write(ref, img); err != nil {
				return nil, err
			}
		}
	}

	bin := filepath.Join(home, "tagger-apiserver")
	if out, err := exec.Command("go", "build", "-o", bin, "../cmd/tagger-apiserver").CombinedOutput(); err != nil {
		return nil, fmt.Errorf("building tagger-apiserver: %v\n%s", err, out)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	port := ln.Addr().(*net.TCPAddr).Port
	_ = ln.Close()
	local := filepath.Join(home, "local")
	log, err := os.Create(filepath.Join(home, "server.log"))
	if err != nil {
		return nil, err
	}
	cmd := exec.Command(bin, "--local", "--local-dir", local, "--local-registry-address=", fmt.Sprintf("--secure-port=%d", port),
		"--min-import-interval="+scheduledInterval.String())
	cmd.Stdout, cmd.Stderr = log, log
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	atExit = append(atExit, func() {
		_ = cmd.Process.Signal(os.Interrupt)
		_ = cmd.Wait()
	})
	f.pid = cmd.Process.Pid

	var client taggerclient.Interface
	err = wait.PollUntilContextTimeout(context.Background(), 100*time.Millisecond, 60*time.Second, true, func(ctx context.Context) (bool, error) {
		rc, err := clientcmd.BuildConfigFromFlags("", filepath.Join(local, "kubeconfig"))
		if err != nil {
			return false, nil
		}
		rc.QPS, rc.Burst = -1, -1
		if client, err = taggerclient.NewForConfig(rc); err != nil {
			return false, err
		}
		var code int
		client.Discovery().RESTClient().Get().AbsPath("/readyz").Do(ctx).StatusCode(&code)
		return code == http.StatusOK, nil
	})
	if err != nil {
		return nil, fmt.Errorf("server not ready (log in %s): %w", log.Name(), err)
	}
	f.client = client

	before := f.counter.snapshot()
	start := time.Now()
	ctx := context.Background()
	for i := range scheduledImages {
		img := &v1beta1.Image{
			ObjectMeta: metav1.ObjectMeta{Name: fmt.Sprintf("app-%d", i), Namespace: "default"},
			Spec: v1beta1.ImageSpec{
				From: fmt.Sprintf("%s/org/app-%d:v%d", reg.Addr(), i%scheduledRepos, i/scheduledRepos), Insecure: true,
				ImportPolicy: &v1beta1.ImportPolicy{Scheduled: true, Interval: &metav1.Duration{Duration: scheduledInterval}},
			},
		}
		if _, err := client.TaggerV1beta1().Images("default").Create(ctx, img, metav1.CreateOptions{}); err != nil {
			return nil, err
		}
	}
	err = wait.PollUntilContextTimeout(ctx, time.Second, 10*time.Minute, false, func(ctx context.Context) (bool, error) {
		list, err := client.TaggerV1beta1().Images("default").List(ctx, metav1.ListOptions{})
		if err != nil {
			return false, err
		}
		for _, img := range list.Items {
			if len(img.Status.HashReferences) == 0 {
				return false, nil
			}
		}
		return true, nil
	})
	if err != nil {
		return nil, fmt.Errorf("first imports: %w", err)
	}
	f.setup = time.Since(start)
	after := f.counter.snapshot()
	f.setupReqs = counts{after.total - before.total, after.heads - before.heads, after.gets - before.gets, after.tags - before.tags}
	return f, nil
}

// BenchmarkScheduledImages measures 1,000 scheduled Images in local mode:
// the first check and import of all of them, then the steady state, one
// interval per iteration: the registry's request rate, the peak of requests
// at once, and the server's CPU (tagger-apiserver with its embedded etcd).
func BenchmarkScheduledImages(b *testing.B) {
	if testing.Short() {
		b.Skip("minutes long")
	}
	scheduledOnce.Do(func() { theScheduled, scheduledErr = newScheduledFixture(b) })
	if scheduledErr != nil {
		b.Fatal(scheduledErr)
	}
	f := theScheduled
	b.Logf("setup: %d Images created, checked and imported in %s; registry requests %d (%d manifest HEADs, %d GETs), peak %d at once",
		scheduledImages, f.setup.Round(time.Second), f.setupReqs.total, f.setupReqs.heads, f.setupReqs.gets, f.counter.peak.Load())
	ctx := context.Background()
	recordsBefore, err := f.client.TaggerV1beta1().ImageImports("default").List(ctx, metav1.ListOptions{})
	if err != nil {
		b.Fatal(err)
	}

	// Measure whole intervals of the steady state.
	b.ResetTimer()
	f.counter.peak.Store(0)
	cpu0, _, err := procStat(f.pid)
	if err != nil {
		b.Fatal(err)
	}
	req0 := f.counter.snapshot()
	start := time.Now()
	time.Sleep(time.Duration(b.N) * scheduledInterval)
	wall := time.Since(start)
	cpu1, rss, err := procStat(f.pid)
	if err != nil {
		b.Fatal(err)
	}
	req1 := f.counter.snapshot()
	b.StopTimer()

	recordsAfter, err := f.client.TaggerV1beta1().ImageImports("default").List(ctx, metav1.ListOptions{})
	if err != nil {
		b.Fatal(err)
	}
	if n := len(recordsAfter.Items) - len(recordsBefore.Items); n != 0 {
		b.Errorf("%d ImageImports recorded while no tag moved", n)
	}
	heads := req1.heads - req0.heads
	checksPerSec := float64(heads) / wall.Seconds()
	want := float64(scheduledImages) / scheduledInterval.Seconds()
	if checksPerSec < 0.8*want || checksPerSec > 1.2*want {
		b.Errorf("%.1f checks/s, want about %.1f (one per Image per interval)", checksPerSec, want)
	}
	if gets := req1.gets - req0.gets; gets != 0 {
		b.Errorf("%d manifest GETs: checks resolve with HEAD", gets)
	}
	// The documented bounds (README, "What 1,000 scheduled Images cost").
	if peak := f.counter.peak.Load(); peak > 4 {
		b.Errorf("%d registry requests at once, more than --import-checks-per-registry (4)", peak)
	}
	if perCheck := time.Duration(int64(cpu1-cpu0) / max(heads, 1)); perCheck > 25*time.Millisecond {
		b.Errorf("%s of server CPU per check, documented ~4 ms", perCheck)
	}
	cpuShare := float64(cpu1-cpu0) / float64(wall)
	b.ReportMetric(checksPerSec, "checks/s")
	b.ReportMetric(float64(req1.total-req0.total)/wall.Seconds(), "registry-req/s")
	b.ReportMetric(float64(f.counter.peak.Load()), "peak-concurrent-req")
	b.ReportMetric(100*cpuShare, "server-cpu-%")
	b.ReportMetric(float64(cpu1-cpu0)/float64(time.Millisecond)/float64(heads), "cpu-ms/check")
	b.ReportMetric(float64(rss)/(1<<20), "server-rss-MiB")
	b.ReportMetric(f.setup.Seconds(), "first-imports-s")
}
