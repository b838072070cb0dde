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
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

var aggregatorOnce sync.Once

// BenchmarkAggregator pushes and pulls a 1 GiB image through a real
// kube-apiserver's aggregator, next to skopeo straight to the registry,
// and reports tagger-apiserver's RSS growth. The cluster is the
// end-to-end suite's (test/e2e: etcd, kube-apiserver and
// kube-controller-manager built once into ~/.cache/tagger-e2e), so this
// runs its TestAggregatorBench and reads what it measured. TAGGER_E2E=skip
// leaves it out.
func BenchmarkAggregator(b *testing.B) {
	names := []string{"aggregator/push-tagger", "aggregator/pull-tagger", "aggregator/push-skopeo", "aggregator/pull-skopeo"}
	if os.Getenv("TAGGER_E2E") == "skip" {
		for _, n := range names {
			skipped(n, "TAGGER_E2E=skip")
		}
		b.Skip("TAGGER_E2E=skip: the aggregator benchmark needs the end-to-end cluster")
	}
	aggregatorOnce.Do(func() {
		out := filepath.Join(b.TempDir(), "aggregator.json")
		cmd := exec.Command("go", "test", "-count=1", "-run", "^TestAggregatorBench$", "-timeout", "40m", "./test/e2e/")
		cmd.Dir = ".."
		cmd.Env = append(os.Environ(), "TAGGER_E2E_BENCH_OUT="+out)
		var log bytes.Buffer
		cmd.Stdout, cmd.Stderr = &log, &log
		start := time.Now()
		err := cmd.Run()
		raw, rerr := os.ReadFile(out)
		if err != nil || rerr != nil {
			tail := log.String()
			if len(tail) > 3000 {
				tail = tail[len(tail)-3000:]
			}
			why := fmt.Sprintf("the end-to-end run failed after %s: %v", time.Since(start).Round(time.Second), err)
			for _, n := range names {
				skipped(n, why)
			}
			b.Errorf("%s\n%s", why, tail)
			return
		}
		var r struct {
			Bytes                                          int64
			PushTagger, PushSkopeo, PullTagger, PullSkopeo float64
			RSSBefore, RSSPeakPush, RSSPeakPull            int64
			SkopeoSkipped, TaggerRSSError                  string
		}
		if err := json.Unmarshal(raw, &r); err != nil {
			b.Error(err)
			return
		}
		sec := func(s float64) time.Duration { return time.Duration(s * float64(time.Second)) }
		record("aggregator/push-tagger", sec(r.PushTagger))
		record("aggregator/pull-tagger", sec(r.PullTagger))
		if r.SkopeoSkipped != "" {
			skipped("aggregator/push-skopeo", r.SkopeoSkipped)
			skipped("aggregator/pull-skopeo", r.SkopeoSkipped)
		} else {
			record("aggregator/push-skopeo", sec(r.PushSkopeo))
			record("aggregator/pull-skopeo", sec(r.PullSkopeo))
		}
		if r.TaggerRSSError != "" {
			skipped("aggregator/rss-growth-push", r.TaggerRSSError)
			skipped("aggregator/rss-growth-pull", r.TaggerRSSError)
		} else {
			record("aggregator/rss-growth-push", time.Duration(max(r.RSSPeakPush-r.RSSBefore, 0)))
			record("aggregator/rss-growth-pull", time.Duration(max(r.RSSPeakPull-r.RSSBefore, 0)))
		}
		record("aggregator/image-bytes", time.Duration(r.Bytes))
		b.Logf("end-to-end cluster run: %s", strings.TrimSpace(fmt.Sprintf("%+v", r)))
	})
}
