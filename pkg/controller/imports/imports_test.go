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

package imports

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/client-go/tools/cache"
	"k8s.io/client-go/tools/record"
	"k8s.io/utils/ptr"

	"tagger.dev/tagger/pkg/apis/tagger"
	taggerv1beta1 "tagger.dev/tagger/pkg/apis/tagger/v1beta1"
	taggerlisters "tagger.dev/tagger/pkg/generated/listers/tagger/v1beta1"
	"tagger.dev/tagger/pkg/importer"
	imagegen "tagger.dev/tagger/pkg/registry/tagger/image"
)

// fakeRecords keeps records in memory and checks preconditions the way the
// REST storage does.
type fakeRecords struct {
	mu      sync.Mutex
	rv      int
	records map[string]*tagger.ImageImport
	writes  int
	// failWrites makes the next n writes fail with a server error.
	failWrites int
}

func newFakeRecords() *fakeRecords { return &fakeRecords{records: map[string]*tagger.ImageImport{}} }

func (f *fakeRecords) put(ii *tagger.ImageImport) *tagger.ImageImport {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.rv++
	ii = ii.DeepCopy()
	ii.ResourceVersion = strconv.Itoa(f.rv)
	f.records[ii.Namespace+"/"+ii.Name] = ii
	return ii.DeepCopy()
}

func (f *fakeRecords) get(namespace, name string) *tagger.ImageImport {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.records[namespace+"/"+name].DeepCopy()
}

func (f *fakeRecords) UpdateRecord(_ context.Context, namespace, name string, pre Preconditions, mutate func(*tagger.ImageImport)) (*tagger.ImageImport, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	gr := tagger.Resource("imageimports")
	if f.failWrites > 0 {
		f.failWrites--
		return nil, apierrors.NewInternalError(errors.New("etcd hiccup"))
	}
	ii, ok := f.records[namespace+"/"+name]
	if !ok || (pre.UID != "" && ii.UID != pre.UID) {
		return nil, apierrors.NewNotFound(gr, name)
	}
	if pre.ResourceVersion != "" && ii.ResourceVersion != pre.ResourceVersion {
		return nil, apierrors.NewConflict(gr, name, errors.New("changed"))
	}
	if pre.Runner != "" && ii.Annotations[tagger.AnnotationImportRunner] != pre.Runner {
		return nil, apierrors.NewConflict(gr, name, errors.New("runner"))
	}
	ii = ii.DeepCopy()
	mutate(ii)
	for _, a := range ii.Status.ImportAttempts {
		if len(a.Reason) > tagger.MaxReasonLength {
			return nil, apierrors.NewInvalid(tagger.Kind("ImageImport"), name, nil)
		}
	}
	f.rv++
	f.writes++
	ii.ResourceVersion = strconv.Itoa(f.rv)
	f.records[namespace+"/"+name] = ii
	return ii.DeepCopy(), nil
}

// fakeImages applies AddGeneration to in-memory Images.
type fakeImages struct {
	mu     sync.Mutex
	images map[string]*tagger.Image
	calls  int
}

func (f *fakeImages) AddGeneration(_ context.Context, namespace, name string, spec tagger.ImageSpec, ref tagger.HashReference) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.calls++
	img := f.images[namespace+"/"+name]
	if img == nil {
		img = &tagger.Image{ObjectMeta: metav1.ObjectMeta{Namespace: namespace, Name: name}, Spec: spec}
		f.images[namespace+"/"+name] = img
	}
	imagegen.AddGeneration(img, ref)
	return nil
}

func (f *fakeImages) history(namespace, name string) []tagger.HashReference {
	f.mu.Lock()
	defer f.mu.Unlock()
	if img := f.images[namespace+"/"+name]; img != nil {
		return append([]tagger.HashReference(nil), img.Status.HashReferences...)
	}
	return nil
}

type fakeSources struct{ mirrorErr error }

func (fakeSources) Credentials(namespace, from string) ([]importer.Credential, error) {
	return nil, nil
}
func (s fakeSources) Mirror(ctx context.Context, namespace, name string) (*importer.Mirror, error) {
	if s.mirrorErr != nil {
		return nil, s.mirrorErr
	}
	return &importer.Mirror{Repository: "mirror.example.com/" + namespace + "/" + name}, nil
}

// fakeImporter answers from a script of results, one per call.
type fakeImporter struct {
	mu    sync.Mutex
	calls int
	fn    func(call int, req importer.Request) (importer.Result, error)
	ctxFn func(ctx context.Context, call int, req importer.Request) (importer.Result, error)
}

func (f *fakeImporter) Import(ctx context.Context, req importer.Request) (importer.Result, error) {
	f.mu.Lock()
	f.calls++
	n := f.calls
	f.mu.Unlock()
	if f.ctxFn != nil {
		return f.ctxFn(ctx, n, req)
	}
	return f.fn(n, req)
}

func (f *fakeImporter) count() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.calls
}

const digestA = "sha256:aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"

func okResult(req importer.Request) (importer.Result, error) {
	return importer.Result{From: req.From, Digest: digestA, ImageReference: "registry.example.com/org/app@" + digestA, ResolvedAt: time.Now()}, nil
}

type env struct {
	c        *Controller
	records  *fakeRecords
	images   *fakeImages
	importer *fakeImporter
	recorder *record.FakeRecorder
}

func newEnv(t *testing.T, identity string, fn func(int, importer.Request) (importer.Result, error), tweak func(*Config)) *env {
	t.Helper()
	e := &env{records: newFakeRecords(), images: &fakeImages{images: map[string]*tagger.Image{}},
		importer: &fakeImporter{fn: fn}, recorder: record.NewFakeRecorder(100)}
	cfg := Config{
		Identity: identity, Importer: e.importer, Records: e.records, Images: e.images, Sources: fakeSources{},
		Recorder: e.recorder, Backoff: wait.Backoff{Duration: time.Millisecond, Factor: 1, Cap: time.Millisecond},
		RenewInterval: time.Hour,
	}
	if tweak != nil {
		tweak(&cfg)
	}
	c, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.Stop)
	e.c = c
	return e
}

var uids int

// reserve stores a new record as Create does, claimed by identity.
func (e *env) reserve(name, identity string) *tagger.ImageImport {
	uids++
	ii := &tagger.ImageImport{
		ObjectMeta: metav1.ObjectMeta{Namespace: "ns", Name: name, UID: types.UID(fmt.Sprintf("uid-%d", uids)), CreationTimestamp: metav1.Now()},
		Spec:       tagger.ImageImportSpec{TargetImage: "app", From: "registry.example.com/org/app:latest", Mirror: ptr.To(false), Insecure: ptr.To(false)},
	}
	Reserve(ii, identity, time.Now())
	return e.records.put(ii)
}

func (e *env) runToEnd(t *testing.T, rec *tagger.ImageImport) *tagger.ImageImport {
	t.Helper()
	run := e.c.Start(rec)
	select {
	case <-run.Done():
	case <-time.After(30 * time.Second):
		t.Fatal("import did not end")
	}
	return e.records.get(rec.Namespace, rec.Name)
}

func cond(ii *tagger.ImageImport, typ string) *metav1.Condition {
	return meta.FindStatusCondition(ii.Status.Conditions, typ)
}

func TestRunOutcomes(t *testing.T) {
	long := strings.Repeat("x", 40<<10)
	tests := []struct {
		name         string
		fn           func(int, importer.Request) (importer.Result, error)
		mirrorErr    error
		wantCalls    int
		wantImported bool
		wantReason   string // substring of the Failed message
	}{{
		name:         "success",
		fn:           func(_ int, r importer.Request) (importer.Result, error) { return okResult(r) },
		wantCalls:    1,
		wantImported: true,
	}, {
		name: "transient then success",
		fn: func(n int, r importer.Request) (importer.Result, error) {
			if n < 3 {
				return importer.Result{}, errors.New("connection reset by peer")
			}
			return okResult(r)
		},
		wantCalls:    3,
		wantImported: true,
	}, {
		name: "permanent error: one attempt",
		fn: func(int, importer.Request) (importer.Result, error) {
			return importer.Result{}, importer.NewPermanent(errors.New("manifest unknown"))
		},
		wantCalls:  1,
		wantReason: "manifest unknown",
	}, {
		name: "transient errors use every attempt",
		fn: func(int, importer.Request) (importer.Result, error) {
			return importer.Result{}, errors.New("503 Service Unavailable")
		},
		wantCalls:  tagger.MaxImportAttempts,
		wantReason: "503",
	}, {
		name: "a 40 KB error is bounded and still ends the import",
		fn: func(int, importer.Request) (importer.Result, error) {
			return importer.Result{}, importer.NewPermanent(errors.New(long))
		},
		wantCalls:  1,
		wantReason: "xxxx",
	}, {
		name:       "no mirror configured is permanent",
		fn:         func(_ int, r importer.Request) (importer.Result, error) { return okResult(r) },
		mirrorErr:  errors.New("no mirror registry configured"),
		wantCalls:  0,
		wantReason: "no mirror registry configured",
	}}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			e := newEnv(t, "me", tc.fn, func(c *Config) { c.Sources = fakeSources{mirrorErr: tc.mirrorErr} })
			rec := e.reserve("imp", "me")
			if tc.mirrorErr != nil {
				rec.Spec.Mirror = ptr.To(true)
				rec = e.records.put(rec)
			}
			got := e.runToEnd(t, rec)
			if n := e.importer.count(); n != tc.wantCalls {
				t.Errorf("importer called %d times, want %d", n, tc.wantCalls)
			}
			if IsProgressing(got.Status.Conditions) {
				t.Fatalf("record still Progressing: %+v", got.Status.Conditions)
			}
			if _, ok := got.Annotations[tagger.AnnotationImportRunner]; ok {
				t.Errorf("finished record still claimed: %v", got.Annotations)
			}
			hist := e.images.history("ns", "app")
			if tc.wantImported {
				if c := cond(got, tagger.ConditionImported); c == nil || c.Status != metav1.ConditionTrue {
					t.Fatalf("Imported condition %+v", c)
				}
				if cond(got, tagger.ConditionFailed) != nil {
					t.Errorf("Failed condition on a success")
				}
				if len(hist) != 1 || hist[0].ImageReference != got.Status.HashReference.ImageReference {
					t.Errorf("history %+v, record %+v", hist, got.Status.HashReference)
				}
				return
			}
			if len(hist) != 0 {
				t.Errorf("failed import changed the Image: %+v", hist)
			}
			c, f := cond(got, tagger.ConditionImported), cond(got, tagger.ConditionFailed)
			if c == nil || c.Reason != tagger.ReasonNoMoreAttempts || f == nil || f.Status != metav1.ConditionTrue {
				t.Fatalf("conditions %+v", got.Status.Conditions)
			}
			if !strings.Contains(f.Message, tc.wantReason) || len(f.Message) > tagger.MaxReasonLength {
				t.Errorf("Failed message (%d bytes) %.200q, want it bounded and to contain %q", len(f.Message), f.Message, tc.wantReason)
			}
			if want := max(tc.wantCalls, 1); len(got.Status.ImportAttempts) != want {
				t.Errorf("%d attempts recorded, want %d", len(got.Status.ImportAttempts), want)
			}
			for _, a := range got.Status.ImportAttempts {
				if len(a.Reason) > tagger.MaxReasonLength {
					t.Errorf("attempt reason of %d bytes", len(a.Reason))
				}
			}
			select {
			case ev := <-e.recorder.Events:
				if !strings.HasPrefix(ev, "Warning ImportFailed") {
					t.Errorf("event %q", ev)
				}
			default:
				t.Error("no event")
			}
		})
	}
}

// TestRunRetriesRecordWrites: an etcd hiccup while storing the outcome must
// not lose it.
func TestRunRetriesRecordWrites(t *testing.T) {
	e := newEnv(t, "me", func(_ int, r importer.Request) (importer.Result, error) { return okResult(r) }, nil)
	rec := e.reserve("imp", "me")
	e.records.failWrites = 2
	got := e.runToEnd(t, rec)
	if c := cond(got, tagger.ConditionImported); c == nil || c.Status != metav1.ConditionTrue {
		t.Fatalf("conditions %+v", got.Status.Conditions)
	}
}

// TestRunPastDeadline: an import resumed after its deadline ends
// NoMoreAttempts without another attempt.
func TestRunPastDeadline(t *testing.T) {
	e := newEnv(t, "me", func(_ int, r importer.Request) (importer.Result, error) { return okResult(r) },
		func(c *Config) { c.Timeout = time.Minute })
	rec := e.reserve("imp", "me")
	rec.CreationTimestamp = metav1.NewTime(time.Now().Add(-time.Hour))
	rec = e.records.put(rec)
	got := e.runToEnd(t, rec)
	if e.importer.count() != 0 {
		t.Errorf("importer called %d times past the deadline", e.importer.count())
	}
	if f := Failure(got.Status.Conditions); !strings.Contains(f, "did not finish within") {
		t.Fatalf("failure %q, conditions %+v", f, got.Status.Conditions)
	}
}

// TestResumeAfterImportedRecordsOnce: a runner that stopped after storing
// the generation in the record but before (or after) writing the Image is
// followed by one that only records the same generation: the importer is
// not called again and history has it once.
func TestResumeAfterImportedRecordsOnce(t *testing.T) {
	e := newEnv(t, "me", func(_ int, r importer.Request) (importer.Result, error) { return okResult(r) }, nil)
	rec := e.reserve("imp", "me")
	now := time.Now()
	recordAttempt(rec, now, importer.Result{From: rec.Spec.From, ImageReference: "registry.example.com/org/app@" + digestA, ResolvedAt: now}, nil, true)
	rec = e.records.put(rec)
	// The first runner did write the Image before it died.
	_ = e.images.AddGeneration(context.Background(), "ns", "app", tagger.ImageSpec{}, *rec.Status.HashReference)
	got := e.runToEnd(t, rec)
	if e.importer.count() != 0 {
		t.Errorf("importer called %d times", e.importer.count())
	}
	if c := cond(got, tagger.ConditionImported); c == nil || c.Status != metav1.ConditionTrue {
		t.Fatalf("conditions %+v", got.Status.Conditions)
	}
	if hist := e.images.history("ns", "app"); len(hist) != 1 {
		t.Fatalf("history %+v, want the generation once", hist)
	}
}

// TestLostClaimStopsRun: a runner whose claim was taken over writes nothing
// more.
func TestLostClaimStopsRun(t *testing.T) {
	release := make(chan struct{})
	e := newEnv(t, "me", func(_ int, r importer.Request) (importer.Result, error) {
		<-release
		return okResult(r)
	}, nil)
	rec := e.reserve("imp", "me")
	run := e.c.Start(rec)
	// Another server claims it meanwhile.
	if _, err := e.records.UpdateRecord(context.Background(), "ns", "imp", Preconditions{}, func(ii *tagger.ImageImport) {
		setRenewed(ii, "other", time.Now())
	}); err != nil {
		t.Fatal(err)
	}
	close(release)
	<-run.Done()
	got := e.records.get("ns", "imp")
	if !IsProgressing(got.Status.Conditions) || len(got.Status.ImportAttempts) != 0 {
		t.Fatalf("the run that lost its claim wrote its outcome: %+v", got.Status)
	}
	if len(e.images.history("ns", "app")) != 0 {
		t.Fatal("the run that lost its claim wrote the Image")
	}
}

// TestStopReleases: a stopping server leaves the record Progressing and
// unclaimed, or claimed when told to keep claims (as a crash would).
func TestStopReleases(t *testing.T) {
	for _, keep := range []bool{false, true} {
		t.Run(fmt.Sprintf("keep=%v", keep), func(t *testing.T) {
			started := make(chan struct{})
			e := newEnv(t, "me", func(_ int, r importer.Request) (importer.Result, error) {
				close(started)
				time.Sleep(50 * time.Millisecond)
				return importer.Result{}, context.Canceled
			}, func(c *Config) { c.KeepClaimsOnStop = keep })
			rec := e.reserve("imp", "me")
			e.c.Start(rec)
			<-started
			e.c.Stop()
			got := e.records.get("ns", "imp")
			if !IsProgressing(got.Status.Conditions) || len(got.Status.ImportAttempts) != 0 {
				t.Fatalf("stopped import recorded an outcome: %+v", got.Status)
			}
			if _, claimed := got.Annotations[tagger.AnnotationImportRunner]; claimed != keep {
				t.Fatalf("annotations %v, want claimed=%v", got.Annotations, keep)
			}
		})
	}
}

// TestSyncClaims covers who resumes what.
func TestSyncClaims(t *testing.T) {
	tests := []struct {
		name       string
		runner     string // "" means unclaimed
		renewedAgo time.Duration
		wantRun    bool
	}{
		{name: "unclaimed (released by a stopping server)", wantRun: true},
		{name: "claimed by this server, which restarted", runner: "me", renewedAgo: time.Second, wantRun: true},
		{name: "claimed by this process (its create starts it)", runner: "me", renewedAgo: -time.Second, wantRun: false},
		{name: "claimed by a live replica", runner: "other", renewedAgo: time.Second, wantRun: false},
		{name: "claimed by a replica that stopped renewing", runner: "other", renewedAgo: time.Hour, wantRun: true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			e := newEnv(t, "me", func(_ int, r importer.Request) (importer.Result, error) { return okResult(r) },
				func(c *Config) { c.ResumeAfter = time.Minute })
			rec := e.reserve("imp", "x")
			if tc.runner == "" {
				delete(rec.Annotations, tagger.AnnotationImportRunner)
				delete(rec.Annotations, tagger.AnnotationImportRenewed)
			} else {
				setRenewed(rec, tc.runner, time.Now().Add(-tc.renewedAgo))
			}
			rec = e.records.put(rec)
			indexer := cache.NewIndexer(cache.MetaNamespaceKeyFunc, cache.Indexers{})
			if err := indexer.Add(toV1beta1(rec)); err != nil {
				t.Fatal(err)
			}
			e.c.lister = taggerlisters.NewImageImportLister(indexer)
			after, err := e.c.sync(context.Background(), "ns/imp")
			if err != nil {
				t.Fatal(err)
			}
			if !tc.wantRun {
				if after <= 0 || after > 2*time.Minute {
					t.Errorf("look again after %v, want within a minute", after)
				}
				if e.importer.count() != 0 {
					t.Error("resumed an import a live replica runs")
				}
				return
			}
			if err := wait.PollUntilContextTimeout(context.Background(), 5*time.Millisecond, 10*time.Second, true, func(context.Context) (bool, error) {
				return !IsProgressing(e.records.get("ns", "imp").Status.Conditions), nil
			}); err != nil {
				t.Fatalf("not resumed: %+v", e.records.get("ns", "imp"))
			}
			if hist := e.images.history("ns", "app"); len(hist) != 1 {
				t.Errorf("history %+v", hist)
			}
		})
	}
}

// TestSyncLosesRace: a claim decided on an old resourceVersion fails and
// runs nothing (another replica was faster).
func TestSyncLosesRace(t *testing.T) {
	e := newEnv(t, "me", func(_ int, r importer.Request) (importer.Result, error) { return okResult(r) }, nil)
	rec := e.reserve("imp", "other")
	setRenewed(rec, "other", time.Now().Add(-time.Hour))
	rec = e.records.put(rec)
	indexer := cache.NewIndexer(cache.MetaNamespaceKeyFunc, cache.Indexers{})
	_ = indexer.Add(toV1beta1(rec))
	e.c.lister = taggerlisters.NewImageImportLister(indexer)
	// The other replica writes (renews) after our informer saw the record.
	e.records.put(rec)
	if _, err := e.c.sync(context.Background(), "ns/imp"); err != nil {
		t.Fatal(err)
	}
	time.Sleep(50 * time.Millisecond)
	if e.importer.count() != 0 {
		t.Fatal("resumed an import on a stale read")
	}
}

func toV1beta1(ii *tagger.ImageImport) *taggerv1beta1.ImageImport {
	return &taggerv1beta1.ImageImport{ObjectMeta: *ii.ObjectMeta.DeepCopy(), Status: taggerv1beta1.ImageImportStatus{Conditions: ii.Status.Conditions}}
}

// TestHangingRegistryAttemptTimesOut: an attempt without mirror that never
// gets an answer ends at ResolveTimeout and is retried.
func TestHangingRegistryAttemptTimesOut(t *testing.T) {
	e := newEnv(t, "me", nil, func(c *Config) { c.ResolveTimeout = 50 * time.Millisecond })
	e.importer.ctxFn = func(ctx context.Context, n int, r importer.Request) (importer.Result, error) {
		if n == 1 {
			<-ctx.Done() // a registry that never answers
			return importer.Result{}, ctx.Err()
		}
		return okResult(r)
	}
	got := e.runToEnd(t, e.reserve("imp", "me"))
	if c := cond(got, tagger.ConditionImported); c == nil || c.Status != metav1.ConditionTrue || len(got.Status.ImportAttempts) != 2 {
		t.Fatalf("status %+v", got.Status)
	}
}

// fakeTags lists a fixed set of tags.
type fakeTags []string

func (f fakeTags) ListTags(context.Context, importer.Request) ([]string, error) { return f, nil }

// TestRunTagPolicy: a tag policy picks the tag the importer resolves, and
// a policy nothing matches fails at once with the reason.
func TestRunTagPolicy(t *testing.T) {
	tests := []struct {
		name     string
		tags     fakeTags
		wantFrom string // "" means the import fails
	}{
		{name: "newest in range", tags: fakeTags{"1.2.0", "1.3.1", "2.0.0", "latest"}, wantFrom: "registry.example.com/org/app:1.3.1"},
		{name: "no match", tags: fakeTags{"2.0.0", "latest"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var asked string
			e := newEnv(t, "me", func(_ int, r importer.Request) (importer.Result, error) {
				asked = r.From
				return okResult(r)
			}, func(c *Config) { c.Tags = tc.tags })
			rec := e.reserve("imp", "me")
			rec.Spec.TagPolicy = &tagger.TagPolicy{Semver: ">=1.2.0 <2"}
			rec = e.records.put(rec)
			got := e.runToEnd(t, rec)
			if tc.wantFrom == "" {
				if Failure(got.Status.Conditions) == "" || e.importer.count() != 0 || len(got.Status.ImportAttempts) != 1 {
					t.Fatalf("status %+v, importer called %d times", got.Status, e.importer.count())
				}
				return
			}
			if asked != tc.wantFrom || got.Status.HashReference == nil || got.Status.HashReference.From != tc.wantFrom {
				t.Fatalf("importer asked for %q, generation %+v; want %s", asked, got.Status.HashReference, tc.wantFrom)
			}
		})
	}
}
