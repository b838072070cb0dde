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
	"fmt"
	"io"
	"os"
	"os/exec"
	"runtime"
	"sort"
	"strings"
	"sync"
	"time"
)

// The report: every benchmark records the times it measured under a name,
// and TestMain prints, after all of them, each measurement and each ratio
// the performance goals are stated in, from this one run.

var results = struct {
	sync.Mutex
	times map[string][]time.Duration
	notes map[string]string // name -> why it was not measured
	extra []string          // free text (profiles)
}{times: map[string][]time.Duration{}, notes: map[string]string{}}

// record adds measured times under name.
func record(name string, d ...time.Duration) {
	results.Lock()
	defer results.Unlock()
	results.times[name] = append(results.times[name], d...)
}

// skipped says why name was not measured.
func skipped(name, why string) {
	results.Lock()
	defer results.Unlock()
	results.notes[name] = why
}

// appendix adds text printed after the report.
func appendix(text string) {
	results.Lock()
	defer results.Unlock()
	results.extra = append(results.extra, text)
}

func quantile(ds []time.Duration, q float64) time.Duration {
	if len(ds) == 0 {
		return 0
	}
	s := append([]time.Duration(nil), ds...)
	sort.Slice(s, func(i, j int) bool { return s[i] < s[j] })
	n := int(q*float64(len(s)-1) + 0.5)
	return s[n]
}

func median(name string) (time.Duration, bool) {
	results.Lock()
	defer results.Unlock()
	ds, ok := results.times[name]
	if !ok || len(ds) == 0 {
		return 0, false
	}
	return quantile(ds, 0.5), true
}

// goal is one line of the report: a ratio or a time against its target.
type goal struct {
	name   string
	num    string   // measurement, median
	den    string   // "" for an absolute time
	minus  string   // subtracted from num first (server share)
	target float64  // ratio, or seconds when den == ""
	atMost bool     // true: value <= target; false: value >= target
	inv    bool     // throughput ratio: den/num
	show   []string // more measurements to print with it
}

var goals = []goal{
	{name: "1. mirrored import, every blob already in the mirror (kubectl) / cold crane copy", num: "mount/tagger-kubectl", den: "mount/crane-cold", target: 0.2, atMost: true,
		show: []string{"mount/tagger-library", "mount/skopeo-cached", "mount/uploads"}},
	{name: "1. kubectl's floor: kubectl get of that ImageImport (-o json) / cold crane copy (above 0.2x: goal 1 cannot be met through kubectl)", num: "mount/kubectl-get", den: "mount/crane-cold", target: 0.2, atMost: true,
		show: []string{"mount/kubectl-version"}},
	{name: "1. the import's share through kubectl: kubectl create - kubectl get, p50", num: "mount/tagger-kubectl", minus: "mount/kubectl-get"},
	{name: "1. same, through a plain API client (no kubectl process) / cold crane copy", num: "mount/tagger-client", den: "mount/crane-cold", target: 0.2, atMost: true},
	{name: "1. same, library path (Importer.Import) / cold crane copy", num: "mount/tagger-library", den: "mount/crane-cold", target: 0.2, atMost: true},
	{name: "2. server share of an import without mirror (kubectl create - kubectl get), p50", num: "resolve/kubectl-create", minus: "resolve/kubectl-get", target: 0.020, atMost: true,
		show: []string{"resolve/client-create", "resolve/library", "resolve/library-no-auth-cache", "resolve/bare-head"}},
	{name: "2. import without mirror through a plain API client (server share), p50", num: "resolve/client-create", target: 0.020, atMost: true},
	{name: "3. cold mirrored import (kubectl) / crane copy into the same registry", num: "cold/tagger-kubectl", den: "cold/crane", target: 1.0, atMost: true,
		show: []string{"cold/tagger-library", "cold/skopeo", "cold/kubectl-get", "cold/kubectl-version"}},
	{name: "3. the import's share through kubectl: kubectl create - kubectl get, p50", num: "cold/tagger-kubectl", minus: "cold/kubectl-get"},
	{name: "3. same, through a plain API client (no kubectl process) / crane copy", num: "cold/tagger-client", den: "cold/crane", target: 1.0, atMost: true},
	{name: "3. same, library path (Importer.Import) / crane copy", num: "cold/tagger-library", den: "cold/crane", target: 1.0, atMost: true},
	{name: "3. CPU of a cold copy: library (this process during it - during crane's) / crane process", num: "cold/cpu-library-and-registries", minus: "cold/cpu-registries-during-crane",
		show: []string{"cold/cpu-crane-process", "cold/cpu-registries-during-crane"}},
	{name: "4. push through kube-apiserver's aggregator, 1 GiB: throughput / direct skopeo copy", num: "aggregator/push-tagger", den: "aggregator/push-skopeo", target: 0.7, inv: true,
		show: []string{"aggregator/rss-growth-push", "aggregator/image-bytes"}},
	{name: "4. pull through kube-apiserver's aggregator, 1 GiB: throughput / direct skopeo copy", num: "aggregator/pull-tagger", den: "aggregator/pull-skopeo", target: 0.7, inv: true,
		show: []string{"aggregator/rss-growth-pull"}},
	{name: "4'. push of 100 MiB to images/push in local mode (no aggregator): throughput / direct skopeo copy", num: "transfer/push-tagger", den: "transfer/push-skopeo", target: 0.7, inv: true},
	{name: "4'. pull of 100 MiB from images/pull in local mode (no aggregator): throughput / direct skopeo copy", num: "transfer/pull-tagger", den: "transfer/pull-skopeo", target: 0.7, inv: true},
	{name: "5. list of all Images, JSON, gzip as kubectl asks (plain HTTP client, to the server's last byte)", num: "scale/list-json", target: 0.3, atMost: true,
		show: []string{"scale/list-json-decompressed", "scale/kubectl-get-img", "scale/list-bytes", "scale/list-gzip-bytes"}},
	{name: "5. list of all Images, JSON, without Accept-Encoding: gzip (curl)", num: "scale/list-json-uncompressed", target: 0.3, atMost: true},
	{name: "5. list of all Images, Table (plain HTTP client, gzip)", num: "scale/list-table", target: 0.3, atMost: true,
		show: []string{"scale/list-table-uncompressed"}},
	{name: "5. a 500-item page, gzip (plain HTTP client, to the server's last byte)", num: "scale/page-500", target: 0.030, atMost: true,
		show: []string{"scale/page-500-decompressed"}},
	{name: "5. a 500-item page, without Accept-Encoding: gzip (curl)", num: "scale/page-500-uncompressed", target: 0.030, atMost: true},
	{name: "5. 100 concurrent imports into 10 Images, p50 (every generation recorded exactly)", num: "scale/concurrent-p50", target: 0, atMost: true,
		show: []string{"scale/concurrent-p99", "scale/concurrent-wall"}},
}

func fmtDur(d time.Duration) string {
	switch {
	case d >= time.Second:
		return fmt.Sprintf("%.2fs", d.Seconds())
	default:
		return fmt.Sprintf("%.1fms", float64(d)/float64(time.Millisecond))
	}
}

// value formats a named measurement: counts and sizes are recorded as
// durations of that many nanoseconds, marked by their name.
func value(name string) string {
	d, ok := median(name)
	if !ok {
		results.Lock()
		why := results.notes[name]
		results.Unlock()
		if why == "" {
			why = "not run"
		}
		return "not measured (" + why + ")"
	}
	switch {
	case strings.HasSuffix(name, "uploads"):
		return fmt.Sprintf("%d", int64(d))
	case strings.HasSuffix(name, "bytes"), strings.Contains(name, "rss"):
		return fmt.Sprintf("%.1f MiB", float64(d)/(1<<20))
	}
	return fmtDur(d)
}

func printReport(w io.Writer) {
	results.Lock()
	empty := len(results.times) == 0
	results.Unlock()
	if empty {
		return
	}
	load := ""
	if b, err := os.ReadFile("/proc/loadavg"); err == nil {
		load = strings.TrimSpace(string(b))
	}
	fmt.Fprintf(w, "\n=== Tagger performance report (medians of this run; %d CPUs, %s/%s, load average %s)\n", runtime.NumCPU(), runtime.GOOS, runtime.GOARCH, load)
	if out, err := exec.Command("uptime").Output(); err == nil {
		fmt.Fprintf(w, "uptime: %s", out)
	}
	for _, g := range goals {
		num, okNum := median(g.num)
		var verdict, val string
		switch {
		case !okNum:
			val, verdict = value(g.num), "-"
		case g.den != "":
			den, okDen := median(g.den)
			if !okDen || den == 0 {
				val, verdict = value(g.den), "-"
				break
			}
			r := float64(num) / float64(den)
			if g.inv {
				r = float64(den) / float64(num)
			}
			val = fmt.Sprintf("%.2fx (%s vs %s)", r, fmtDur(num), fmtDur(den))
			verdict = pass(r, g.target, g.atMost)
		default:
			v := num
			if g.minus != "" {
				m, ok := median(g.minus)
				if !ok {
					val, verdict = value(g.minus), "-"
					break
				}
				v = num - m
				val = fmt.Sprintf("%s (%s - %s)", fmtDur(v), fmtDur(num), fmtDur(m))
			} else {
				val = fmtDur(v)
			}
			if g.target > 0 {
				verdict = pass(v.Seconds(), g.target, g.atMost)
			} else {
				verdict = "(no target)"
			}
		}
		target := ""
		switch {
		case g.target == 0:
		case g.den != "" && g.atMost:
			target = fmt.Sprintf("<= %.2fx", g.target)
		case g.den != "":
			target = fmt.Sprintf(">= %.0f%%", g.target*100)
		default:
			target = "< " + fmtDur(time.Duration(g.target*float64(time.Second)))
		}
		fmt.Fprintf(w, "%-96s %s  target %s  %s\n", g.name, val, target, verdict)
		for _, s := range g.show {
			fmt.Fprintf(w, "    %-40s %s\n", s, value(s))
		}
	}
	results.Lock()
	extra := append([]string(nil), results.extra...)
	results.Unlock()
	for _, e := range extra {
		fmt.Fprintln(w, e)
	}
}

func pass(v, target float64, atMost bool) string {
	if (atMost && v <= target) || (!atMost && v >= target) {
		return "MET"
	}
	return "NOT MET"
}
