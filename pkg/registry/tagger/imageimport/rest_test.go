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

package imageimport

import (
	"context"
	"strings"
	"sync"
	"testing"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	genericapirequest "k8s.io/apiserver/pkg/endpoints/request"
	"k8s.io/apiserver/pkg/registry/generic"
	"k8s.io/apiserver/pkg/registry/rest"
	etcd3testing "k8s.io/apiserver/pkg/storage/etcd3/testing"
	"k8s.io/apiserver/pkg/warning"
	"k8s.io/utils/ptr"

	"tagger.dev/tagger/pkg/apis/tagger"
	"tagger.dev/tagger/pkg/apis/tagger/v1beta1"
	"tagger.dev/tagger/pkg/apiserver/scheme"
	"tagger.dev/tagger/pkg/controller/imports"
)

// fakeImages has one Image.
type fakeImages struct{ img *tagger.Image }

func (f fakeImages) Get(ctx context.Context, name string) (*tagger.Image, error) {
	if f.img == nil || f.img.Name != name {
		return nil, apierrors.NewNotFound(tagger.Resource("images"), name)
	}
	return f.img.DeepCopy(), nil
}

// fakeRunner records what it was asked to run and ends each run with
// outcome (nil: never ends until the test does).
type fakeRunner struct {
	mu      sync.Mutex
	started []*tagger.ImageImport
	outcome func(*tagger.ImageImport) *tagger.ImageImport
	hold    chan struct{}
}

func (f *fakeRunner) Identity() string { return "me" }

func (f *fakeRunner) Start(rec *tagger.ImageImport) *imports.Run {
	f.mu.Lock()
	f.started = append(f.started, rec.DeepCopy())
	f.mu.Unlock()
	return imports.NewRunForTest(func() *tagger.ImageImport {
		if f.outcome == nil {
			<-f.hold
			return nil
		}
		return f.outcome(rec.DeepCopy())
	})
}

func newREST(t *testing.T, img *tagger.Image, runner Runner, sync time.Duration) *REST {
	t.Helper()
	if testing.Short() {
		t.Skip("starts an embedded etcd")
	}
	_, cfg := etcd3testing.NewUnsecuredEtcd3TestClientServer(t)
	cfg.Codec = scheme.Codecs.LegacyCodec(v1beta1.SchemeGroupVersion)
	opts := generic.RESTOptions{
		StorageConfig:           cfg.ForResource(tagger.Resource("imageimports")),
		Decorator:               generic.UndecoratedStorage,
		DeleteCollectionWorkers: 1,
		ResourcePrefix:          "imageimports",
	}
	r, _, err := NewREST(scheme.Scheme, opts, Deps{Images: fakeImages{img}, SyncTimeout: sync})
	if err != nil {
		t.Fatal(err)
	}
	r.SetRunner(runner)
	t.Cleanup(r.Store.DestroyFunc)
	return r
}

func newImport(name, from string) *tagger.ImageImport {
	return &tagger.ImageImport{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: "ns"},
		Spec:       tagger.ImageImportSpec{TargetImage: "app", From: from},
	}
}

func ctxNS() context.Context {
	return genericapirequest.WithNamespace(context.Background(), "ns")
}

func imported(ii *tagger.ImageImport) *tagger.ImageImport {
	ii.Status.Conditions = []metav1.Condition{{Type: tagger.ConditionImported, Status: metav1.ConditionTrue, Reason: tagger.ReasonImageImported, Message: "ok"}}
	return ii
}

// TestCreateNameRace: ten creates of one name; one wins, nine get 409, and
// only the winner's import runs.
func TestCreateNameRace(t *testing.T) {
	runner := &fakeRunner{outcome: imported}
	r := newREST(t, nil, runner, time.Second)
	var wg sync.WaitGroup
	errs := make(chan error, 10)
	for range 10 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			_, err := r.Create(ctxNS(), newImport("same", "registry.example.com/org/app:latest"), nil, &metav1.CreateOptions{})
			errs <- err
		}()
	}
	wg.Wait()
	close(errs)
	created, conflicts := 0, 0
	for err := range errs {
		switch {
		case err == nil:
			created++
		case apierrors.IsAlreadyExists(err):
			conflicts++
		default:
			t.Errorf("create: %v", err)
		}
	}
	if created != 1 || conflicts != 9 {
		t.Fatalf("%d created, %d conflicts; want 1 and 9", created, conflicts)
	}
	if len(runner.started) != 1 {
		t.Fatalf("%d imports started, want 1: a refused create must leave no trace", len(runner.started))
	}
	if rec := runner.started[0]; rec.UID == "" || rec.ResourceVersion == "" || rec.Annotations[tagger.AnnotationImportRunner] != "me" {
		t.Fatalf("the runner got a record that is not stored and claimed: %+v", rec.ObjectMeta)
	}
}

// TestCreateGeneratesName: generateName works as for any resource.
func TestCreateGeneratesName(t *testing.T) {
	r := newREST(t, nil, &fakeRunner{outcome: imported}, time.Second)
	ii := newImport("", "registry.example.com/org/app:latest")
	ii.GenerateName = "app-"
	obj, err := r.Create(ctxNS(), ii, nil, &metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if name := obj.(*tagger.ImageImport).Name; !strings.HasPrefix(name, "app-") || len(name) <= len("app-") {
		t.Fatalf("name %q", name)
	}
}

// TestCreateInherits: unset fields come from the Image; insecure only when
// the import's source is on the Image's registry.
func TestCreateInherits(t *testing.T) {
	img := &tagger.Image{ObjectMeta: metav1.ObjectMeta{Name: "app", Namespace: "ns"},
		Spec: tagger.ImageSpec{From: "127.0.0.1:5000/org/app:latest", Insecure: true, Mirror: true}}
	tests := []struct {
		name         string
		from         string
		wantFrom     string
		wantInsecure bool
	}{
		{name: "from the Image", from: "", wantFrom: img.Spec.From, wantInsecure: true},
		{name: "same registry, other tag", from: "127.0.0.1:5000/org/app:v2", wantFrom: "127.0.0.1:5000/org/app:v2", wantInsecure: true},
		{name: "another registry", from: "registry.example.com/org/app:v2", wantFrom: "registry.example.com/org/app:v2", wantInsecure: false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			runner := &fakeRunner{outcome: imported}
			r := newREST(t, img, runner, time.Second)
			obj, err := r.Create(ctxNS(), newImport("imp", tc.from), nil, &metav1.CreateOptions{})
			if err != nil {
				t.Fatal(err)
			}
			got := obj.(*tagger.ImageImport)
			if got.Spec.From != tc.wantFrom || ptr.Deref(got.Spec.Insecure, false) != tc.wantInsecure || !ptr.Deref(got.Spec.Mirror, false) {
				t.Fatalf("spec %+v, want from %s insecure %v mirror true", got.Spec, tc.wantFrom, tc.wantInsecure)
			}
		})
	}
}

// TestCreateWarnsOnFailure: a failed import is stored and answered with a
// warning kubectl prints.
func TestCreateWarnsOnFailure(t *testing.T) {
	runner := &fakeRunner{outcome: func(ii *tagger.ImageImport) *tagger.ImageImport {
		ii.Status.Conditions = []metav1.Condition{
			{Type: tagger.ConditionImported, Status: metav1.ConditionFalse, Reason: tagger.ReasonNoMoreAttempts, Message: "manifest unknown"},
			{Type: tagger.ConditionFailed, Status: metav1.ConditionTrue, Reason: tagger.ReasonNoMoreAttempts, Message: "manifest unknown"},
		}
		return ii
	}}
	r := newREST(t, nil, runner, time.Second)
	rec := &warningRecorder{}
	ctx := warning.WithWarningRecorder(ctxNS(), rec)
	if _, err := r.Create(ctx, newImport("imp", "registry.example.com/org/app:gone"), nil, &metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	if len(rec.msgs) != 1 || !strings.Contains(rec.msgs[0], "manifest unknown") {
		t.Fatalf("warnings %q", rec.msgs)
	}
}

// TestCreateAnswersProgressing: an import slower than the wait is answered
// Progressing, stored and still running.
func TestCreateAnswersProgressing(t *testing.T) {
	runner := &fakeRunner{hold: make(chan struct{})}
	defer close(runner.hold)
	r := newREST(t, nil, runner, 100*time.Millisecond)
	obj, err := r.Create(ctxNS(), newImport("imp", "registry.example.com/org/app:latest"), nil, &metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if !imports.IsProgressing(obj.(*tagger.ImageImport).Status.Conditions) {
		t.Fatalf("conditions %+v", obj.(*tagger.ImageImport).Status.Conditions)
	}
	if _, err := r.Get(ctxNS(), "imp", &metav1.GetOptions{}); err != nil {
		t.Fatalf("record not stored: %v", err)
	}
}

// TestCreateAnswersAttemptsSoFar: the Progressing answer shows what the
// runner stored meanwhile (failed attempts and why), not the bare record.
func TestCreateAnswersAttemptsSoFar(t *testing.T) {
	runner := &fakeRunner{hold: make(chan struct{})}
	defer close(runner.hold)
	r := newREST(t, nil, runner, 500*time.Millisecond)
	r.SetRunner(writingRunner{runner, r})
	obj, err := r.Create(ctxNS(), newImport("imp", "registry.example.com/org/app:latest"), nil, &metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	got := obj.(*tagger.ImageImport)
	if len(got.Status.ImportAttempts) != 1 || got.Status.ImportAttempts[0].Reason != "connection refused" {
		t.Fatalf("status %+v", got.Status)
	}
}

// writingRunner stores a failed attempt before it holds.
type writingRunner struct {
	*fakeRunner
	r *REST
}

func (w writingRunner) Start(rec *tagger.ImageImport) *imports.Run {
	// A failed write shows as a missing attempt in the test's check.
	_, _ = w.r.UpdateRecord(context.Background(), rec.Namespace, rec.Name, imports.Preconditions{UID: rec.UID}, func(ii *tagger.ImageImport) {
		ii.Status.ImportAttempts = append(ii.Status.ImportAttempts, tagger.ImportAttempt{When: metav1.Now(), Reason: "connection refused"})
	})
	return w.fakeRunner.Start(rec)
}

// TestCreateWaitIsBoundedByDeadline: the wait ends before the request's
// deadline whatever SyncTimeout says.
func TestCreateWaitIsBoundedByDeadline(t *testing.T) {
	runner := &fakeRunner{hold: make(chan struct{})}
	defer close(runner.hold)
	r := newREST(t, nil, runner, time.Hour)
	ctx, cancel := context.WithTimeout(ctxNS(), 2*time.Second)
	defer cancel()
	obj, err := r.Create(ctx, newImport("imp", "registry.example.com/org/app:latest"), nil, &metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if ctx.Err() != nil {
		t.Fatal("answered after the request's deadline")
	}
	if !imports.IsProgressing(obj.(*tagger.ImageImport).Status.Conditions) {
		t.Fatalf("conditions %+v", obj.(*tagger.ImageImport).Status.Conditions)
	}
}

// TestUpdateKeepsClaimFromUsers: users cannot move the claim annotations
// through the main resource.
func TestUpdateKeepsClaimFromUsers(t *testing.T) {
	runner := &fakeRunner{hold: make(chan struct{})}
	defer close(runner.hold)
	r := newREST(t, nil, runner, 10*time.Millisecond)
	obj, err := r.Create(ctxNS(), newImport("imp", "registry.example.com/org/app:latest"), nil, &metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	ii := obj.(*tagger.ImageImport).DeepCopy()
	ii.Annotations[tagger.AnnotationImportRunner] = "mallory"
	ii.Annotations["team"] = "a"
	updated, _, err := r.Store.Update(ctxNS(), "imp", restUpdated(ii), nil, nil, false, &metav1.UpdateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	got := updated.(*tagger.ImageImport).Annotations
	if got[tagger.AnnotationImportRunner] != "me" || got["team"] != "a" {
		t.Fatalf("annotations %v", got)
	}
}

type warningRecorder struct{ msgs []string }

func (w *warningRecorder) AddWarning(agent, text string) { w.msgs = append(w.msgs, text) }

func restUpdated(obj *tagger.ImageImport) rest.UpdatedObjectInfo {
	return rest.DefaultUpdatedObjectInfo(obj)
}
