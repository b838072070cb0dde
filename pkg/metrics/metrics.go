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

// Package metrics defines Tagger's metrics, all named tagger_*, and
// registers them with k8s.io/component-base's legacy registry, which the
// generic API server serves on /metrics beside its own.
//
// Labels are bounded: a registry host (at most MaxHosts distinct ones, the
// rest count as "other"), a result, and a reason class from a fixed list.
// Image names and namespaces are never labels.
package metrics

import (
	"strings"
	"sync"
	"sync/atomic"

	"go.podman.io/image/v5/docker/reference"
	"k8s.io/component-base/metrics"
	"k8s.io/component-base/metrics/legacyregistry"
)

const namespace = "tagger"

// MaxHosts bounds the registry label: hosts past the first MaxHosts seen
// are counted as OtherHost.
const MaxHosts = 50

// OtherHost stands for hosts past MaxHosts, and references that name none.
const OtherHost = "other"

// Results.
const (
	ResultImported = "imported"
	ResultFailed   = "failed"
	ResultSuccess  = "success"
	ResultError    = "error"
)

var (
	// Imports counts finished imports by source registry, result
	// (imported, failed) and reason class (see ReasonClass).
	Imports = metrics.NewCounterVec(&metrics.CounterOpts{
		Namespace: namespace, Name: "imports_total", StabilityLevel: metrics.ALPHA,
		Help: "Finished ImageImports by source registry host, result (imported, failed) and reason class.",
	}, []string{"registry", "result", "reason"})
	// ImportDuration is the time from an ImageImport's creation to its outcome.
	ImportDuration = metrics.NewHistogramVec(&metrics.HistogramOpts{
		Namespace: namespace, Name: "import_duration_seconds", StabilityLevel: metrics.ALPHA,
		Help:    "Time from an ImageImport's creation to its outcome, by source registry host and result.",
		Buckets: []float64{0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 900, 1800},
	}, []string{"registry", "result"})
	// ImportAttempts counts import attempts (one resolve, and the mirror
	// copy when asked) by source registry, result and reason class.
	ImportAttempts = metrics.NewCounterVec(&metrics.CounterOpts{
		Namespace: namespace, Name: "import_attempts_total", StabilityLevel: metrics.ALPHA,
		Help: "Import attempts by source registry host, result (success, error) and reason class.",
	}, []string{"registry", "result", "reason"})
	// MirrorDuration is how long the copies into the mirror took.
	MirrorDuration = metrics.NewHistogramVec(&metrics.HistogramOpts{
		Namespace: namespace, Name: "mirror_duration_seconds", StabilityLevel: metrics.ALPHA,
		Help:    "Duration of successful copies into the mirror registry, by source registry host.",
		Buckets: []float64{0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 900, 1800},
	}, []string{"registry"})
	// MirroredBytes counts the blob bytes copied into the mirror.
	MirroredBytes = metrics.NewCounterVec(&metrics.CounterOpts{
		Namespace: namespace, Name: "mirrored_bytes_total", StabilityLevel: metrics.ALPHA,
		Help: "Blob bytes copied into the mirror registry, by source registry host.",
	}, []string{"registry"})
	// PushedBytes and PulledBytes count what images/push and images/pull
	// relayed, by mirror registry host.
	PushedBytes = metrics.NewCounterVec(&metrics.CounterOpts{
		Namespace: namespace, Name: "pushed_bytes_total", StabilityLevel: metrics.ALPHA,
		Help: "Bytes relayed into the mirror through images/push, by mirror registry host.",
	}, []string{"registry"})
	PulledBytes = metrics.NewCounterVec(&metrics.CounterOpts{
		Namespace: namespace, Name: "pulled_bytes_total", StabilityLevel: metrics.ALPHA,
		Help: "Bytes relayed from the mirror through images/pull, by mirror registry host.",
	}, []string{"registry"})
	// ScheduledChecks counts the checks Tagger makes of Images on its own.
	ScheduledChecks = metrics.NewCounterVec(&metrics.CounterOpts{
		Namespace: namespace, Name: "scheduled_checks_total", StabilityLevel: metrics.ALPHA,
		Help: "Checks of Images Tagger made on its own (schedule or registry webhook), by source registry host and result (unchanged, import_started, error).",
	}, []string{"registry", "result"})
	// WebhookCalls counts the calls of Tagger's webhooks.
	WebhookCalls = metrics.NewCounterVec(&metrics.CounterOpts{
		Namespace: namespace, Name: "webhook_calls_total", StabilityLevel: metrics.ALPHA,
		Help: "Calls of Tagger's webhooks by webhook (pods, registry) and result.",
	}, []string{"webhook", "result"})
	// PodResolutions counts the container images the pod webhook resolved.
	PodResolutions = metrics.NewCounterVec(&metrics.CounterOpts{
		Namespace: namespace, Name: "pod_resolutions_total", StabilityLevel: metrics.ALPHA,
		Help: "Container images of pods the pod webhook looked at, by result (resolved, refused).",
	}, []string{"result"})
	// RolloutPatches counts the workloads the rollout controller patched.
	RolloutPatches = metrics.NewCounterVec(&metrics.CounterOpts{
		Namespace: namespace, Name: "rollout_patches_total", StabilityLevel: metrics.ALPHA,
		Help: "Workload patches of the rollout controller by kind (Deployment, StatefulSet, DaemonSet) and result (success, error).",
	}, []string{"kind", "result"})
	// MirrorTagsRemoved counts the tagger-sha256-* (and generation) tags
	// removed from mirrors, by why.
	MirrorTagsRemoved = metrics.NewCounterVec(&metrics.CounterOpts{
		Namespace: namespace, Name: "mirror_tags_removed_total", StabilityLevel: metrics.ALPHA,
		Help: "Tags removed from mirror registries by mirror registry host and cause (history, deleted).",
	}, []string{"registry", "cause"})
	// MirrorCleanupErrors counts failed mirror tag removals.
	MirrorCleanupErrors = metrics.NewCounterVec(&metrics.CounterOpts{
		Namespace: namespace, Name: "mirror_cleanup_errors_total", StabilityLevel: metrics.ALPHA,
		Help: "Failed removals of mirror tags (retried), by mirror registry host.",
	}, []string{"registry"})
	// RecordsDeleted counts the finished ImageImports deleted past the
	// per-Image limit.
	RecordsDeleted = metrics.NewCounter(&metrics.CounterOpts{
		Namespace: namespace, Name: "imageimports_deleted_total", StabilityLevel: metrics.ALPHA,
		Help: "Finished ImageImports deleted because their Image kept more than --max-finished-imports-per-image.",
	})

	progressing = &gaugeFunc{desc: metrics.NewDesc(namespace+"_imports_progressing",
		"ImageImports that are Progressing (running), as this server's cache sees them (the same on every replica: aggregate with max).",
		nil, nil, metrics.ALPHA, "")}
)

var registerOnce sync.Once

// Register adds Tagger's metrics to the legacy registry (served on /metrics);
// it may be called more than once.
func Register() {
	registerOnce.Do(func() {
		legacyregistry.MustRegister(Imports, ImportDuration, ImportAttempts, MirrorDuration, MirroredBytes,
			PushedBytes, PulledBytes, ScheduledChecks, WebhookCalls, PodResolutions, RolloutPatches,
			MirrorTagsRemoved, MirrorCleanupErrors, RecordsDeleted)
		legacyregistry.CustomMustRegister(progressing)
	})
}

// SetProgressing makes tagger_imports_progressing report what count returns.
func SetProgressing(count func() int) { progressing.count.Store(&count) }

// gaugeFunc is a gauge computed when scraped.
type gaugeFunc struct {
	metrics.BaseStableCollector
	desc  *metrics.Desc
	count atomic.Pointer[func() int]
}

func (g *gaugeFunc) DescribeWithStability(ch chan<- *metrics.Desc) { ch <- g.desc }

func (g *gaugeFunc) CollectWithStability(ch chan<- metrics.Metric) {
	n := 0
	if f := g.count.Load(); f != nil {
		n = (*f)()
	}
	ch <- metrics.NewLazyConstMetric(g.desc, metrics.GaugeValue, float64(n))
}

var hosts = struct {
	sync.Mutex
	seen map[string]bool
}{seen: map[string]bool{}}

// Host returns the registry label of an image reference or repository
// ("quay.io/org/app:latest" is "quay.io", "nginx" is "docker.io"): the
// host, or OtherHost past the first MaxHosts hosts and for what cannot be
// parsed.
func Host(ref string) string {
	named, err := reference.ParseNormalizedNamed(strings.TrimSpace(ref))
	if err != nil {
		return OtherHost
	}
	host := strings.ToLower(reference.Domain(named))
	hosts.Lock()
	defer hosts.Unlock()
	if hosts.seen[host] {
		return host
	}
	if len(hosts.seen) >= MaxHosts {
		return OtherHost
	}
	hosts.seen[host] = true
	return host
}
