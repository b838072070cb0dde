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
	"fmt"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/util/validation/field"
	"k8s.io/apimachinery/pkg/util/wait"
	genericapirequest "k8s.io/apiserver/pkg/endpoints/request"
	"k8s.io/apiserver/pkg/registry/generic"
	genericregistry "k8s.io/apiserver/pkg/registry/generic/registry"
	"k8s.io/apiserver/pkg/registry/rest"
	"k8s.io/client-go/tools/record"
	"k8s.io/klog/v2"
	"k8s.io/utils/clock"
	"k8s.io/utils/ptr"

	"tagger.dev/tagger/pkg/apis/tagger"
	"tagger.dev/tagger/pkg/importer"
	"tagger.dev/tagger/pkg/registry/status"
)

// Images is what an import needs of the images resource.
type Images interface {
	Get(ctx context.Context, name string) (*tagger.Image, error)
	Create(ctx context.Context, img *tagger.Image) (*tagger.Image, error)
	UpdateStatus(ctx context.Context, name string, mutate func(*tagger.Image) error) (*tagger.Image, error)
}

// Sources tells an import which credentials and which mirror to use.
type Sources interface {
	// Credentials returns the credentials to try for from, read from the
	// namespace's pull secrets, best match first.
	Credentials(namespace, from string) ([]importer.Credential, error)
	// Mirror returns where the Image namespace/name is mirrored, or an error
	// that tells the user how to configure a mirror.
	Mirror(ctx context.Context, namespace, name string) (*importer.Mirror, error)
}

// SourcePolicy refuses source registries an administrator has not allowed.
type SourcePolicy interface {
	Check(ref string) error
}

// Deps are what ImageImport storage needs besides etcd.
type Deps struct {
	Importer importer.Interface
	Images   Images
	Sources  Sources
	// Policy, when set, is checked before any request reaches a registry.
	Policy SourcePolicy
	// Recorder receives an event per finished import.
	Recorder record.EventRecorder
	// Backoff spaces the attempts; Steps is ignored (there are always 10).
	Backoff wait.Backoff
	// SyncTimeout bounds how long a create waits for the import before it
	// stores the ImageImport as Progressing and finishes in the background.
	// It is further bounded by the request's own deadline.
	SyncTimeout time.Duration
	// BackgroundTimeout bounds a whole import, all attempts included.
	BackgroundTimeout time.Duration
	// ResumeAfter is how long an import may stay Progressing without any
	// write before a server that does not run it takes it over.
	ResumeAfter time.Duration
	// ResumeInterval is how often servers look for such imports.
	ResumeInterval time.Duration
	Clock          clock.Clock
}

// deadlineMargin is left between the end of the synchronous wait and the
// request deadline, for storing the record and writing the response.
const deadlineMargin = 3 * time.Second

// REST implements the imageimports resource.
type REST struct {
	*genericregistry.Store
	// internal stores records without clearing the status the import wrote.
	internal *genericregistry.Store
	status   *genericregistry.Store
	deps     Deps

	// ctx lives as long as the server: background imports stop with it and
	// stay Progressing, for the next start to resume.
	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup

	runningMu sync.Mutex
	running   map[string]bool // namespace/name of the imports this server runs
}

var (
	_ rest.StandardStorage    = &REST{}
	_ rest.ShortNamesProvider = &REST{}
	_ rest.CategoriesProvider = &REST{}
)

// NewREST returns the storage of imageimports and imageimports/status.
func NewREST(scheme *runtime.Scheme, optsGetter generic.RESTOptionsGetter, deps Deps) (*REST, *StatusREST, error) {
	if deps.Importer == nil || deps.Images == nil || deps.Sources == nil {
		return nil, nil, fmt.Errorf("imageimport storage needs an importer, images and sources")
	}
	if deps.Clock == nil {
		deps.Clock = clock.RealClock{}
	}
	if deps.Recorder == nil {
		deps.Recorder = &record.FakeRecorder{}
	}
	if deps.SyncTimeout <= 0 {
		deps.SyncTimeout = 50 * time.Second
	}
	if deps.BackgroundTimeout <= 0 {
		deps.BackgroundTimeout = 30 * time.Minute
	}
	if deps.ResumeAfter <= 0 {
		// Longer than any pause between two attempts' status writes, so a
		// replica never takes over an import another one still runs, unless a
		// single attempt (a mirror copy) runs longer; running it twice is
		// harmless, the digest is the same.
		deps.ResumeAfter = 5 * time.Minute
	}
	if deps.ResumeInterval <= 0 {
		deps.ResumeInterval = time.Minute
	}
	if deps.Backoff.Duration <= 0 {
		// Ten attempts take about 35 s of waiting, so an import that fails
		// fast still reports NoMoreAttempts inside kube-apiserver's 60 s.
		deps.Backoff = wait.Backoff{Duration: 500 * time.Millisecond, Factor: 1.5, Jitter: 0.1, Cap: 10 * time.Second}
	}

	strategy := NewStrategy(scheme)
	store := &genericregistry.Store{
		NewFunc:                   func() runtime.Object { return &tagger.ImageImport{} },
		NewListFunc:               func() runtime.Object { return &tagger.ImageImportList{} },
		PredicateFunc:             MatchImageImport,
		DefaultQualifiedResource:  tagger.Resource("imageimports"),
		SingularQualifiedResource: tagger.Resource("imageimport"),

		CreateStrategy:      strategy,
		UpdateStrategy:      strategy,
		DeleteStrategy:      strategy,
		ResetFieldsStrategy: strategy,

		TableConvertor: TableConvertor{},
	}
	if err := store.CompleteWithOptions(&generic.StoreOptions{RESTOptions: optsGetter, AttrFunc: GetAttrs}); err != nil {
		return nil, nil, err
	}

	internal := *store
	internal.CreateStrategy = recordStrategy{strategy}

	statusREST := status.NewREST(store, NewStatusStrategy(scheme))
	r := &REST{Store: store, internal: &internal, status: statusREST.Store(), deps: deps}
	r.ctx, r.cancel = context.WithCancel(context.Background())
	r.running = map[string]bool{}
	return r, statusREST, nil
}

// recordStrategy stores an ImageImport as the import left it.
type recordStrategy struct{ importStrategy }

func (recordStrategy) PrepareForCreate(ctx context.Context, obj runtime.Object) {}

// ShortNames implements rest.ShortNamesProvider.
func (r *REST) ShortNames() []string { return []string{"ii"} }

// Categories implements rest.CategoriesProvider.
func (r *REST) Categories() []string { return []string{"tagger"} }

// Destroy implements rest.Storage: it stops background imports, leaving
// them Progressing, and waits for them to end.
func (r *REST) Destroy() {
	r.runningMu.Lock()
	r.cancel() // under the lock: start adds to wg only before this
	r.runningMu.Unlock()
	r.wg.Wait()
	r.Store.Destroy()
}

// start runs j in the background, from attempt number first on.
func (r *REST) start(j *job, first int) {
	key := j.namespace + "/" + j.ii.Name
	r.runningMu.Lock()
	if r.ctx.Err() != nil {
		// Stopping: the job ends at once, its record stays Progressing and
		// is resumed by a server that runs.
		r.runningMu.Unlock()
		j.abandon()
		return
	}
	r.running[key] = true
	r.wg.Add(1)
	r.runningMu.Unlock()
	go func() {
		defer r.wg.Done()
		defer func() {
			r.runningMu.Lock()
			delete(r.running, key)
			r.runningMu.Unlock()
		}()
		ctx, cancel := context.WithTimeout(r.ctx, r.deps.BackgroundTimeout)
		defer cancel()
		j.run(ctx, first)
	}()
}

// Create runs the import and then stores the ImageImport with its outcome.
// An import that outlasts the request is stored as Progressing and finishes
// in the background, writing its outcome into the stored status.
func (r *REST) Create(ctx context.Context, obj runtime.Object, createValidation rest.ValidateObjectFunc, options *metav1.CreateOptions) (runtime.Object, error) {
	ii, ok := obj.(*tagger.ImageImport)
	if !ok {
		return nil, apierrors.NewBadRequest(fmt.Sprintf("not an ImageImport: %T", obj))
	}
	// The name is needed before the record exists: the import is logged and,
	// if it outlasts the request, stored under it.
	rest.FillObjectMetaSystemFields(ii)
	if ii.GenerateName != "" && ii.Name == "" {
		ii.Name = r.Store.CreateStrategy.GenerateName(ii.GenerateName)
	}
	if err := rest.BeforeCreate(r.Store.CreateStrategy, ctx, obj); err != nil {
		return nil, err
	}
	if createValidation != nil {
		if err := createValidation(ctx, obj.DeepCopyObject()); err != nil {
			return nil, err
		}
	}
	// The import has side effects; refuse a taken name before running it.
	if ii.Name != "" {
		if _, err := r.Store.Get(ctx, ii.Name, &metav1.GetOptions{}); err == nil {
			return nil, apierrors.NewAlreadyExists(tagger.Resource("imageimports"), ii.Name)
		} else if !apierrors.IsNotFound(err) {
			return nil, err
		}
	}
	if err := r.inherit(ctx, ii); err != nil {
		return nil, err
	}
	if len(options.DryRun) > 0 {
		return r.Store.Create(ctx, ii, nil, options)
	}

	namespace := genericapirequest.NamespaceValue(ctx)
	// The import belongs to the server from here on: a client that goes
	// away or a request that times out must not cut it short.
	j := newJob(r, namespace, ii)
	r.start(j, 0)

	wait := r.deps.SyncTimeout
	if deadline, ok := ctx.Deadline(); ok {
		if left := time.Until(deadline) - deadlineMargin; left < wait {
			wait = left
		}
	}
	timer := r.deps.Clock.NewTimer(max(wait, 0))
	defer timer.Stop()
	select {
	case <-j.done:
		return r.finishInRequest(ctx, j, options)
	case <-timer.C():
	case <-ctx.Done():
	}
	snapshot, handedOff := j.handOff()
	if !handedOff {
		<-j.done
		return r.finishInRequest(ctx, j, options)
	}
	// Store the record with a context of its own: the request's may be gone.
	storeCtx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 30*time.Second)
	defer cancel()
	created, err := r.internal.Create(storeCtx, snapshot, nil, options)
	j.persisted(created, err)
	if err != nil {
		return nil, err
	}
	return created, nil
}

// finishInRequest records a generation and the ImageImport after an import
// that ended while the client waited.
func (r *REST) finishInRequest(ctx context.Context, j *job, options *metav1.CreateOptions) (runtime.Object, error) {
	if err := j.recordGeneration(ctx); err != nil {
		return nil, err
	}
	created, err := r.internal.Create(ctx, j.ii, nil, options)
	if err != nil {
		return nil, err
	}
	j.event(created.(*tagger.ImageImport))
	return created, nil
}

// inherit fills the unset spec fields from the target Image, so the stored
// ImageImport says what was actually imported.
func (r *REST) inherit(ctx context.Context, ii *tagger.ImageImport) error {
	img, err := r.deps.Images.Get(ctx, ii.Spec.TargetImage)
	switch {
	case apierrors.IsNotFound(err):
		if ii.Spec.From == "" {
			return apierrors.NewInvalid(tagger.Kind("ImageImport"), ii.Name, field.ErrorList{
				field.Required(field.NewPath("spec", "from"),
					fmt.Sprintf("Image %q does not exist: set spec.from to create it", ii.Spec.TargetImage)),
			})
		}
		img = &tagger.Image{}
	case err != nil:
		return err
	}
	if ii.Spec.From == "" {
		ii.Spec.From = img.Spec.From
	}
	if ii.Spec.Mirror == nil {
		ii.Spec.Mirror = ptr.To(img.Spec.Mirror)
	}
	if ii.Spec.Insecure == nil {
		ii.Spec.Insecure = ptr.To(img.Spec.Insecure)
	}
	if r.deps.Policy != nil {
		if err := r.deps.Policy.Check(ii.Spec.From); err != nil {
			return apierrors.NewInvalid(tagger.Kind("ImageImport"), ii.Name, field.ErrorList{
				field.Forbidden(field.NewPath("spec", "from"), err.Error()),
			})
		}
	}
	return nil
}

// ResumeLoop takes over, until ctx ends, the imports left Progressing by a
// server that stopped (a restart, a rolling update, a crash), so none stays
// Progressing forever.
func (r *REST) ResumeLoop(ctx context.Context) {
	wait.UntilWithContext(ctx, func(ctx context.Context) {
		if err := r.Resume(ctx); err != nil {
			klog.ErrorS(err, "Failed looking for imports to resume")
		}
	}, r.deps.ResumeInterval)
}

// Resume takes over the Progressing imports nobody wrote to for ResumeAfter.
// Replicas race for each through the record's resourceVersion: one wins.
func (r *REST) Resume(ctx context.Context) error {
	list, err := r.Store.List(genericapirequest.WithNamespace(ctx, metav1.NamespaceAll), nil)
	if err != nil {
		return err
	}
	now := r.deps.Clock.Now()
	for i := range list.(*tagger.ImageImportList).Items {
		ii := &list.(*tagger.ImageImportList).Items[i]
		r.runningMu.Lock()
		mine := r.running[ii.Namespace+"/"+ii.Name]
		r.runningMu.Unlock()
		if mine || !isProgressing(ii) || now.Sub(lastWrite(ii)) < r.deps.ResumeAfter {
			continue
		}
		claimed, err := r.claim(ctx, ii)
		if err != nil {
			if !apierrors.IsConflict(err) && !apierrors.IsNotFound(err) {
				klog.ErrorS(err, "Failed claiming import to resume", "imageImport", klog.KObj(ii))
			}
			continue
		}
		klog.InfoS("Resuming import left progressing", "imageImport", klog.KObj(claimed), "attempts", len(claimed.Status.ImportAttempts))
		j := newJob(r, claimed.Namespace, claimed)
		j.handedOffAlready()
		r.start(j, len(claimed.Status.ImportAttempts))
	}
	return nil
}

// claim writes to the record only if it is unchanged since listed.
func (r *REST) claim(ctx context.Context, listed *tagger.ImageImport) (*tagger.ImageImport, error) {
	ctx = genericapirequest.WithNamespace(ctx, listed.Namespace)
	transform := func(_ context.Context, _, old runtime.Object) (runtime.Object, error) {
		ii := old.(*tagger.ImageImport).DeepCopy()
		if ii.ResourceVersion != listed.ResourceVersion || ii.UID != listed.UID {
			return nil, apierrors.NewConflict(tagger.Resource("imageimports"), ii.Name, fmt.Errorf("changed since listed"))
		}
		c := meta.FindStatusCondition(ii.Status.Conditions, tagger.ConditionImported)
		c.Message = "import resumed after the server running it stopped"
		c.LastTransitionTime = metav1.NewTime(r.deps.Clock.Now())
		return ii, nil
	}
	obj, _, err := r.status.Update(ctx, listed.Name, rest.DefaultUpdatedObjectInfo(nil, transform),
		rest.ValidateAllObjectFunc, rest.ValidateAllObjectUpdateFunc, false, &metav1.UpdateOptions{})
	if err != nil {
		return nil, err
	}
	return obj.(*tagger.ImageImport), nil
}

// lastWrite is the newest time the import's record says something happened.
func lastWrite(ii *tagger.ImageImport) time.Time {
	t := ii.CreationTimestamp.Time
	if n := len(ii.Status.ImportAttempts); n > 0 && ii.Status.ImportAttempts[n-1].When.After(t) {
		t = ii.Status.ImportAttempts[n-1].When.Time
	}
	if c := meta.FindStatusCondition(ii.Status.Conditions, tagger.ConditionImported); c != nil && c.LastTransitionTime.After(t) {
		t = c.LastTransitionTime.Time
	}
	return t
}

// RecordPush stores the record of a push through images/push: an
// ImageImport whose status already holds the pushed generation, and an
// event on it. It implements imageetcd.PushRecorder.
func (r *REST) RecordPush(ctx context.Context, ii *tagger.ImageImport) (*tagger.ImageImport, error) {
	obj, err := r.internal.Create(ctx, ii, rest.ValidateAllObjectFunc, &metav1.CreateOptions{})
	if err != nil {
		return nil, err
	}
	created := obj.(*tagger.ImageImport)
	ref := &corev1.ObjectReference{
		APIVersion: "tagger.dev/v1beta1", Kind: "ImageImport",
		Namespace: created.Namespace, Name: created.Name, UID: created.UID,
	}
	if hr := created.Status.HashReference; hr != nil {
		r.deps.Recorder.Eventf(ref, corev1.EventTypeNormal, "Pushed", "Pushed %s as %s", created.Spec.From, hr.ImageReference)
	}
	return created, nil
}

// StatusREST implements the imageimports/status subresource.
type StatusREST = status.REST
