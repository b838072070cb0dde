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
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/wait"
	etcd3testing "k8s.io/apiserver/pkg/storage/etcd3/testing"

	"tagger.dev/tagger/pkg/apis/tagger/v1beta1"
	"tagger.dev/tagger/pkg/apiserver"
)

// checkInterval is the scheduled interval the tests use; the server's
// minimum is lowered to allow it.
const checkInterval = 2 * time.Second

func lowMinInterval(c *apiserver.Config) { c.ExtraConfig.Checks.MinInterval = 500 * time.Millisecond }

func scheduledImage(name, from string, interval time.Duration) *v1beta1.Image {
	return &v1beta1.Image{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: ns},
		Spec: v1beta1.ImageSpec{From: from, Insecure: true, ImportPolicy: &v1beta1.ImportPolicy{
			Scheduled: true, Interval: &metav1.Duration{Duration: interval},
		}},
	}
}

// manifestHeads records when the registry answered manifest HEADs, by
// repository path.
type manifestHeads struct {
	mu    sync.Mutex
	times map[string][]time.Time
	gets  int
}

func (m *manifestHeads) wrap(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if repo, _, ok := strings.Cut(r.URL.Path, "/manifests/"); ok {
			m.mu.Lock()
			if m.times == nil {
				m.times = map[string][]time.Time{}
			}
			switch r.Method {
			case http.MethodHead:
				m.times[repo] = append(m.times[repo], time.Now())
			case http.MethodGet:
				m.gets++
			}
			m.mu.Unlock()
		}
		next.ServeHTTP(w, r)
	})
}

func (m *manifestHeads) heads(repo string) []time.Time {
	m.mu.Lock()
	defer m.mu.Unlock()
	return append([]time.Time(nil), m.times["/v2/"+repo]...)
}

func (m *manifestHeads) getCount() int {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.gets
}

func (s *testServer) image(t *testing.T, namespace, name string) *v1beta1.Image {
	t.Helper()
	img, err := s.client.TaggerV1beta1().Images(namespace).Get(context.Background(), name, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	return img
}

// triggered lists the ImageImports Tagger started on its own for image.
func (s *testServer) triggered(t *testing.T, namespace, image string) []v1beta1.ImageImport {
	t.Helper()
	list, err := s.client.TaggerV1beta1().ImageImports(namespace).List(context.Background(), metav1.ListOptions{LabelSelector: v1beta1.LabelImportTrigger})
	if err != nil {
		t.Fatal(err)
	}
	var out []v1beta1.ImageImport
	for _, ii := range list.Items {
		if ii.Spec.TargetImage == image {
			out = append(out, ii)
		}
	}
	return out
}

// waitGeneration waits until the newest generation of the Image has digest.
func (s *testServer) waitGeneration(t *testing.T, namespace, name, digest string, timeout time.Duration) *v1beta1.Image {
	t.Helper()
	var img *v1beta1.Image
	err := wait.PollUntilContextTimeout(context.Background(), 50*time.Millisecond, timeout, true, func(ctx context.Context) (bool, error) {
		var err error
		img, err = s.client.TaggerV1beta1().Images(namespace).Get(ctx, name, metav1.GetOptions{})
		if err != nil {
			return false, err
		}
		return len(img.Status.HashReferences) > 0 && strings.HasSuffix(img.Status.HashReferences[0].ImageReference, "@"+digest), nil
	})
	if err != nil {
		t.Fatalf("Image %s/%s did not get generation %s within %s: %v; status %+v", namespace, name, digest, timeout, err, img.Status)
	}
	return img
}

func checked(img *v1beta1.Image) *metav1.Condition {
	return meta.FindStatusCondition(img.Status.Conditions, v1beta1.ConditionChecked)
}

// TestScheduledImportPicksUpRepushedTag: a scheduled Image is imported at
// once, then checked every interval; a check that finds the same digest
// records nothing but lastCheckedAt; a re-pushed tag is imported within
// interval + jitter, labelled as scheduled, with HEADs only.
func TestScheduledImportPicksUpRepushedTag(t *testing.T) {
	var heads manifestHeads
	reg := startRegistry(t, heads.wrap)
	first := reg.push(t, "org/app:latest")
	s := startServer(t, serverOptions{configure: lowMinInterval})
	ctx := context.Background()
	from := reg.Addr() + "/org/app:latest"

	if _, err := s.client.TaggerV1beta1().Images(ns).Create(ctx, scheduledImage("app", from, checkInterval), metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	img := s.waitGeneration(t, ns, "app", first.String(), 10*time.Second)
	recs := s.triggered(t, ns, "app")
	if len(recs) != 1 || recs[0].Labels[v1beta1.LabelImportTrigger] != v1beta1.TriggerScheduled ||
		!strings.Contains(recs[0].Annotations[v1beta1.AnnotationImportTriggerDetail], "scheduled check: "+from+" resolved to "+first.String()) {
		t.Fatalf("first scheduled import records: %+v", recs)
	}

	// Three intervals with the tag unchanged: checks, no record, no
	// generation.
	time.Sleep(3*checkInterval + checkInterval/2)
	img = s.image(t, ns, "app")
	if n := len(img.Status.HashReferences); n != 1 {
		t.Errorf("%d generations after unchanged checks, want 1", n)
	}
	if n := len(s.triggered(t, ns, "app")); n != 1 {
		t.Errorf("%d records after unchanged checks, want 1", n)
	}
	c := checked(img)
	if c == nil || c.Status != metav1.ConditionTrue || c.Reason != v1beta1.ReasonUnchanged || img.Status.LastCheckedAt == nil {
		t.Fatalf("Checked condition %+v, lastCheckedAt %v", c, img.Status.LastCheckedAt)
	}
	if age := time.Since(img.Status.LastCheckedAt.Time); age > checkInterval+checkInterval/10+time.Second {
		t.Errorf("last check %s ago, interval %s", age, checkInterval)
	}
	hs := heads.heads("org/app")
	// One check at creation (import: a second HEAD), then about one per
	// interval.
	if len(hs) < 4 || len(hs) > 7 {
		t.Errorf("%d manifest HEADs in %s, want about one per %s", len(hs), 3*checkInterval, checkInterval)
	}
	if n := heads.getCount(); n != 0 {
		t.Errorf("%d manifest GETs: checks must resolve with HEAD", n)
	}

	// Re-push: picked up within interval + jitter (+ the import).
	second := reg.push(t, "org/app:latest")
	pushed := time.Now()
	img = s.waitGeneration(t, ns, "app", second.String(), checkInterval+checkInterval/10+3*time.Second)
	took := time.Since(pushed)
	t.Logf("re-pushed tag imported %s after the push (interval %s)", took.Round(10*time.Millisecond), checkInterval)
	if len(img.Status.HashReferences) != 2 || img.Status.HashReferences[0].From != from {
		t.Errorf("generations %+v", img.Status.HashReferences)
	}
	recs = s.triggered(t, ns, "app")
	if len(recs) != 2 {
		t.Fatalf("%d scheduled records, want 2", len(recs))
	}
	var found bool
	for _, r := range recs {
		if strings.Contains(r.Annotations[v1beta1.AnnotationImportTriggerDetail], "(was "+first.String()+")") {
			found = true
		}
	}
	if !found {
		t.Errorf("no record says the tag moved from %s: %+v", first, recs)
	}
	err := wait.PollUntilContextTimeout(ctx, 50*time.Millisecond, 5*time.Second, true, func(ctx context.Context) (bool, error) {
		c := checked(s.image(t, ns, "app"))
		return c != nil && c.Reason == v1beta1.ReasonImageImported, nil
	})
	if err != nil {
		t.Errorf("Checked condition after the import: %+v", checked(s.image(t, ns, "app")))
	}
	series := scrape(t, s)
	if unchanged, started := sum(series, "tagger_scheduled_checks_total", `result="unchanged"`),
		sum(series, "tagger_scheduled_checks_total", `result="import_started"`); unchanged < 1 || started < 1 {
		t.Errorf("tagger_scheduled_checks_total: unchanged %v, import_started %v", unchanged, started)
	}
}

// TestScheduledChecksOnePerIntervalAcrossReplicasAndRestarts: two servers
// on one etcd check a scheduled Image once per interval between them, and
// a restarted server goes on from lastCheckedAt instead of checking at once.
func TestScheduledChecksOnePerIntervalAcrossReplicasAndRestarts(t *testing.T) {
	var heads manifestHeads
	reg := startRegistry(t, heads.wrap)
	digest := reg.push(t, "org/shared:v1")
	_, etcdConfig := etcd3testing.NewUnsecuredEtcd3TestClientServer(t)
	endpoints := etcdConfig.Transport.ServerList
	replica := func(identity string) *testServer {
		return startServer(t, serverOptions{etcd: endpoints, configure: func(c *apiserver.Config) {
			lowMinInterval(c)
			c.ExtraConfig.ImportOptions.Identity = identity
		}})
	}
	// Long enough for both servers to stop and one to start well
	// within an interval.
	const interval = 4 * time.Second
	a, b := replica("a"), replica("b")
	ctx := context.Background()
	if _, err := a.client.TaggerV1beta1().Images(ns).Create(ctx, scheduledImage("shared", reg.Addr()+"/org/shared:v1", interval), metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	a.waitGeneration(t, ns, "shared", digest.String(), 10*time.Second)
	if n := len(a.triggered(t, ns, "shared")); n != 1 {
		t.Fatalf("%d import records for the first check on two replicas, want 1", n)
	}

	before := len(heads.heads("org/shared"))
	const intervals = 3
	time.Sleep(intervals*interval + interval/4)
	checks := len(heads.heads("org/shared")) - before
	t.Logf("two replicas: %d checks in %d intervals", checks, intervals)
	if checks < intervals-1 || checks > intervals+1 {
		t.Errorf("two replicas made %d checks in %d intervals, want about %d", checks, intervals, intervals)
	}

	// Both stop; one comes back after less than an interval since the
	// last check: it waits for the interval, it does not check at once.
	a.stop()
	b.stop()
	hs := heads.heads("org/shared")
	last := hs[len(hs)-1] // the last check's HEAD, right after its claim
	restarted := replica("a")
	since := len(heads.heads("org/shared"))
	back := time.Now()
	err := wait.PollUntilContextTimeout(ctx, 20*time.Millisecond, 2*interval, true, func(context.Context) (bool, error) {
		return len(heads.heads("org/shared")) > since, nil
	})
	if err != nil {
		t.Fatalf("no check after the restart: %v", err)
	}
	firstAfter := heads.heads("org/shared")[since]
	t.Logf("restarted %s after the last check; next check %s after it", back.Sub(last).Round(time.Millisecond), firstAfter.Sub(last).Round(time.Millisecond))
	if firstAfter.Before(last.Add(interval - 100*time.Millisecond)) {
		t.Errorf("restarted server checked %s after the last check, before the interval (%s)", firstAfter.Sub(last), interval)
	}
	if n := len(restarted.triggered(t, ns, "shared")); n != 1 {
		t.Errorf("%d import records, want 1: the tag never moved", n)
	}
}

// TestScheduledCheckFailureBacksOff: a source that cannot be resolved shows
// as Checked=False with the reason, and the checks space out.
func TestScheduledCheckFailureBacksOff(t *testing.T) {
	var heads manifestHeads
	reg := startRegistry(t, heads.wrap)
	s := startServer(t, serverOptions{configure: lowMinInterval})
	ctx := context.Background()
	const interval = time.Second
	if _, err := s.client.TaggerV1beta1().Images(ns).Create(ctx, scheduledImage("missing", reg.Addr()+"/org/missing:v1", interval), metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	time.Sleep(10 * time.Second)
	img := s.image(t, ns, "missing")
	c := checked(img)
	if c == nil || c.Status != metav1.ConditionFalse || c.Reason != v1beta1.ReasonCheckFailed || !strings.Contains(c.Message, "manifest unknown") {
		t.Fatalf("Checked condition %+v", c)
	}
	hs := heads.heads("org/missing")
	var gaps []string
	for i := 1; i < len(hs); i++ {
		gaps = append(gaps, hs[i].Sub(hs[i-1]).Round(100*time.Millisecond).String())
	}
	t.Logf("failing checks in 10s: %d, gaps %v", len(hs), gaps)
	// Without back-off there would be 10; doubling gives 0, 1, 2, 4, 8 s.
	if len(hs) < 3 || len(hs) > 6 {
		t.Errorf("%d failing checks in 10s with a 1s interval, want 4 or 5 (back-off)", len(hs))
	}
	if n := len(s.triggered(t, ns, "missing")); n != 0 {
		t.Errorf("%d import records for a source that never resolved", n)
	}
	if len(img.Status.HashReferences) != 0 {
		t.Errorf("generations %+v", img.Status.HashReferences)
	}
}

// TestImportIntervalBelowMinimumRefused: --min-import-interval is enforced
// with the field path.
func TestImportIntervalBelowMinimumRefused(t *testing.T) {
	s := startServer(t, serverOptions{configure: func(c *apiserver.Config) { c.ExtraConfig.Checks.MinInterval = time.Minute }})
	_, err := s.client.TaggerV1beta1().Images(ns).Create(context.Background(), scheduledImage("fast", "registry.example.com/org/app:v1", 30*time.Second), metav1.CreateOptions{})
	if err == nil || !strings.Contains(err.Error(), "spec.importPolicy.interval") || !strings.Contains(err.Error(), "at least 1m0s") {
		t.Fatalf("create with a 30s interval: %v", err)
	}
	img := scheduledImage("default", "registry.example.com/org/app:v1", 0)
	img.Spec.ImportPolicy.Interval = nil
	img.Spec.ImportPolicy.Scheduled = false // no check against example.com
	got, err := s.client.TaggerV1beta1().Images(ns).Create(context.Background(), img, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if got.Spec.ImportPolicy.Interval == nil || got.Spec.ImportPolicy.Interval.Duration != 15*time.Minute {
		t.Errorf("default interval %v, want 15m", got.Spec.ImportPolicy.Interval)
	}
}
