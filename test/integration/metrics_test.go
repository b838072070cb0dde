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

package integration

import (
	"context"
	"fmt"
	"sort"
	"strconv"
	"strings"
	"testing"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"tagger.dev/tagger/pkg/metrics"
)

// scrape reads /metrics: series ("name{label="value",...}") to value.
func scrape(t *testing.T, s *testServer) map[string]float64 {
	t.Helper()
	body, err := s.client.Discovery().RESTClient().Get().AbsPath("/metrics").DoRaw(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]float64{}
	for _, line := range strings.Split(string(body), "\n") {
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		i := strings.LastIndexByte(line, ' ')
		if i < 0 {
			continue
		}
		v, err := strconv.ParseFloat(line[i+1:], 64)
		if err != nil {
			continue
		}
		out[line[:i]] = v
	}
	return out
}

// sum adds the series of name whose labels include every one of labels
// (`registry="..."`).
func sum(series map[string]float64, name string, labels ...string) float64 {
	total := 0.0
	for k, v := range series {
		if k != name && !strings.HasPrefix(k, name+"{") {
			continue
		}
		ok := true
		for _, l := range labels {
			if !strings.Contains(k, l) {
				ok = false
			}
		}
		if ok {
			total += v
		}
	}
	return total
}

// After real imports, /metrics (the generic server's, beside its own
// metrics) shows Tagger's counters moved, labelled by registry host only.
func TestMetricsAfterImports(t *testing.T) {
	src := startRegistry(t, nil)
	mirror := startRegistry(t, nil)
	s := startServer(t, serverOptions{mirror: mirror.Addr()})
	ctx := context.Background()
	records := s.client.TaggerV1beta1().ImageImports(ns)
	host := `registry="` + metrics.Host(src.Addr()+"/src/app") + `"`

	before := scrape(t, s)
	if sum(before, "apiserver_request_total") == 0 {
		t.Fatalf("the generic server's own metrics are missing")
	}
	src.push(t, "src/app:latest")
	img := newImage("app", src.Addr()+"/src/app")
	img.Spec.Mirror, img.Spec.Insecure = true, true
	if _, err := s.client.TaggerV1beta1().Images(ns).Create(ctx, img, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	for i := range 2 {
		if ii, err := records.Create(ctx, newImport(fmt.Sprintf("ok-%d", i), "app", ""), metav1.CreateOptions{}); err != nil || ii.Status.HashReference == nil {
			t.Fatalf("import: %v %+v", err, ii)
		}
	}
	bad := newImport("missing", "app", src.Addr()+"/src/app:nope")
	if ii, err := records.Create(ctx, bad, metav1.CreateOptions{}); err != nil || ii.Status.HashReference != nil {
		t.Fatalf("import of a missing tag: %v %+v", err, ii)
	}

	var after map[string]float64
	eventually(t, "counters moved", func() error {
		after = scrape(t, s)
		for _, c := range []struct {
			name   string
			labels []string
			delta  float64
		}{
			{"tagger_imports_total", []string{host, `result="imported"`, `reason="none"`}, 2},
			{"tagger_imports_total", []string{host, `result="failed"`, `reason="not_found"`}, 1},
			{"tagger_import_attempts_total", []string{host, `result="success"`}, 2},
			{"tagger_import_attempts_total", []string{host, `result="error"`, `reason="not_found"`}, 1},
			{"tagger_import_duration_seconds_count", []string{host, `result="imported"`}, 2},
			{"tagger_mirror_duration_seconds_count", []string{host}, 2},
		} {
			if got := sum(after, c.name, c.labels...) - sum(before, c.name, c.labels...); got != c.delta {
				return fmt.Errorf("%s{%s} moved by %v, want %v", c.name, strings.Join(c.labels, ","), got, c.delta)
			}
		}
		// Two layers and a config of 512 bytes each, copied once; the
		// second import finds them in the mirror.
		if got := sum(after, "tagger_mirrored_bytes_total", host) - sum(before, "tagger_mirrored_bytes_total", host); got < 3*512 || got > 4*1024 {
			return fmt.Errorf("tagger_mirrored_bytes_total moved by %v, want about 1.5 KiB", got)
		}
		return nil
	})
	if _, ok := after["tagger_imports_progressing"]; !ok {
		t.Errorf("no tagger_imports_progressing gauge")
	}
	// No series names an Image or a namespace.
	var names []string
	for k := range after {
		if strings.HasPrefix(k, "tagger_") {
			names = append(names, k)
			if strings.Contains(k, `"app"`) || strings.Contains(k, `"`+ns+`"`) {
				t.Errorf("series %s names an Image or namespace", k)
			}
		}
	}
	sort.Strings(names)
	t.Logf("tagger series: %d, e.g. %v", len(names), names[:min(len(names), 5)])
}
