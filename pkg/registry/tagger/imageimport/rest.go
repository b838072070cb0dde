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
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/util/validation/field"
	genericapirequest "k8s.io/apiserver/pkg/endpoints/request"
	"k8s.io/apiserver/pkg/registry/generic"
	genericregistry "k8s.io/apiserver/pkg/registry/generic/registry"
	"k8s.io/apiserver/pkg/registry/rest"
	"k8s.io/apiserver/pkg/warning"
	"k8s.io/client-go/tools/record"
	"k8s.io/utils/clock"
	"k8s.io/utils/ptr"

	"go.podman.io/image/v5/docker/reference"

	"tagger.dev/tagger/pkg/apis/tagger"
	"tagger.dev/tagger/pkg/controller/imports"
	"tagger.dev/tagger/pkg/redact"
	"tagger.dev/tagger/pkg/registry/status"
)

// Images is what an import needs of the images resource.
type Images interface {
	Get(ctx context.Context, name string) (*tagger.Image, error)
}

// SourcePolicy refuses source registries an administrator has not allowed.
type SourcePolicy interface {
	Check(ref string) error
}

// Runner runs the imports whose records Create reserved.
type Runner interface {
	// Identity is what Create writes as the record's runner.
	Identity() string
	// Start runs the import of a reserved record.
	Start(rec *tagger.ImageImport) *imports.Run
}

// Deps are what ImageImport storage needs besides etcd.
type Deps struct {
	Images Images
	// Runner runs imports; Create waits for it a bounded time.
	Runner Runner
	// Policy, when set, refuses a source at validation (422 on spec.from);
	// the importer enforces it again on every connection.
	Policy SourcePolicy
	// Recorder receives an event per push record.
	Recorder record.EventRecorder
	// SyncTimeout bounds how long a create waits for the import before it
	// answers with the record Progressing. The request's own deadline
	// bounds it too: k8s.io/apiserver cuts a create at 34 s.
	SyncTimeout time.Duration
	Clock       clock.Clock
}

// DefaultSyncTimeout is how long a create waits for its import by default:
// all a create gets, as k8s.io/apiserver's create handler bounds a create's
// context at 34 s (endpoints/handlers/create.go) whatever the client asked.
const DefaultSyncTimeout = 33 * time.Second

// answerMargin is kept between the end of the wait and the request's
// deadline, to write the answer (the record is stored already).
const answerMargin = 500 * time.Millisecond

// REST implements the imageimports resource.
type REST struct {
	*genericregistry.Store
	// internal stores records with the status and claim Tagger writes.
	internal *genericregistry.Store
	deps     Deps
}

var (
	_ rest.StandardStorage    = &REST{}
	_ rest.ShortNamesProvider = &REST{}
	_ rest.CategoriesProvider = &REST{}
)

// NewREST returns the storage of imageimports and imageimports/status. Its
// Runner may be set later, with SetRunner, before the server serves.
func NewREST(scheme *runtime.Scheme, optsGetter generic.RESTOptionsGetter, deps Deps) (*REST, *StatusREST, error) {
	if deps.Images == nil {
		return nil, nil, fmt.Errorf("imageimport storage needs images")
	}
	if deps.Clock == nil {
		deps.Clock = clock.RealClock{}
	}
	if deps.Recorder == nil {
		deps.Recorder = &record.FakeRecorder{}
	}
	if deps.SyncTimeout <= 0 {
		deps.SyncTimeout = DefaultSyncTimeout
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
	internal.UpdateStrategy = recordStrategy{strategy}

	statusREST := status.NewREST(store, NewStatusStrategy(scheme))
	return &REST{Store: store, internal: &internal, deps: deps}, statusREST, nil
}

// SetRunner sets the runner of imports; the controller that runs them needs
// this storage first.
func (r *REST) SetRunner(runner Runner) { r.deps.Runner = runner }

// recordStrategy stores an ImageImport as Tagger wrote it: status and the
// claim annotations included, spec and the rest of metadata as stored.
type recordStrategy struct{ importStrategy }

func (recordStrategy) PrepareForCreate(ctx context.Context, obj runtime.Object) {}

func (recordStrategy) PrepareForUpdate(ctx context.Context, obj, old runtime.Object) {
	ii, oldII := obj.(*tagger.ImageImport), old.(*tagger.ImageImport)
	ii.Spec = oldII.Spec
	ii.Labels = oldII.Labels
	ii.Finalizers = oldII.Finalizers
	ii.OwnerReferences = oldII.OwnerReferences
}

func (recordStrategy) ValidateUpdate(ctx context.Context, obj, old runtime.Object) field.ErrorList {
	return importStatusStrategy{}.ValidateUpdate(ctx, obj, old)
}

// ShortNames implements rest.ShortNamesProvider.
func (r *REST) ShortNames() []string { return []string{"ii"} }

// Categories implements rest.CategoriesProvider.
func (r *REST) Categories() []string { return []string{"tagger"} }

// Create reserves the record first (a name taken answers 409 and leaves no
// trace: nothing is imported, no Image written, no event), then hands the
// import to the runner and waits for its outcome a bounded time. An import
// that outlasts the wait is answered Progressing and goes on.
func (r *REST) Create(ctx context.Context, obj runtime.Object, createValidation rest.ValidateObjectFunc, options *metav1.CreateOptions) (runtime.Object, error) {
	ii, ok := obj.(*tagger.ImageImport)
	if !ok {
		return nil, apierrors.NewBadRequest(fmt.Sprintf("not an ImageImport: %T", obj))
	}
	reserved, run, err := r.start(ctx, ii, createValidation, options)
	if err != nil {
		return nil, err
	}
	if run == nil { // dry run
		return reserved, nil
	}

	wait := r.deps.SyncTimeout
	if deadline, ok := ctx.Deadline(); ok {
		wait = min(wait, time.Until(deadline)-answerMargin)
	}
	timer := r.deps.Clock.NewTimer(max(wait, 0))
	defer timer.Stop()
	var res *tagger.ImageImport
	select {
	case <-run.Done():
		res = run.Result()
	case <-timer.C():
	case <-ctx.Done():
	}
	if res == nil {
		// Still running (or the run stored nothing: the server stops, the
		// record was deleted): answer what is stored now, attempts so far
		// included.
		getCtx, cancel := context.WithTimeout(context.WithoutCancel(ctx), answerMargin)
		defer cancel()
		got, err := r.Store.Get(getCtx, reserved.Name, &metav1.GetOptions{})
		if err != nil {
			return reserved, nil
		}
		res = got.(*tagger.ImageImport)
	}
	if msg := imports.Failure(res.Status.Conditions); msg != "" {
		// The record is the audit trail and is stored; kubectl prints this.
		warning.AddWarning(ctx, "", fmt.Sprintf("import of %s failed: %s", res.Spec.From, msg))
	}
	return res, nil
}

// start validates ii and fills it in as Create does, reserves its record
// and hands it to the runner. A dry run stores nothing and returns no run.
func (r *REST) start(ctx context.Context, ii *tagger.ImageImport, createValidation rest.ValidateObjectFunc, options *metav1.CreateOptions) (*tagger.ImageImport, *imports.Run, error) {
	if r.deps.Runner == nil {
		return nil, nil, apierrors.NewServiceUnavailable("imports are not running yet")
	}
	var obj runtime.Object = ii
	rest.FillObjectMetaSystemFields(ii)
	if ii.GenerateName != "" && ii.Name == "" {
		ii.Name = r.Store.CreateStrategy.GenerateName(ii.GenerateName)
	}
	if err := rest.BeforeCreate(r.Store.CreateStrategy, ctx, obj); err != nil {
		return nil, nil, err
	}
	if createValidation != nil {
		if err := createValidation(ctx, obj.DeepCopyObject()); err != nil {
			return nil, nil, err
		}
	}
	if err := r.inherit(ctx, ii); err != nil {
		return nil, nil, err
	}
	if len(options.DryRun) > 0 {
		obj, err := r.Store.Create(ctx, ii, nil, options)
		if err != nil {
			return nil, nil, err
		}
		return obj.(*tagger.ImageImport), nil, nil
	}

	imports.Reserve(ii, r.deps.Runner.Identity(), r.deps.Clock.Now())
	obj, err := r.internal.Create(ctx, ii, nil, options)
	if err != nil {
		return nil, nil, err
	}
	reserved := obj.(*tagger.ImageImport)
	return reserved, r.deps.Runner.Start(reserved), nil
}

// StartImport is Create for the imports Tagger starts on its own (a
// scheduled or webhook-triggered check found a new digest): the same
// validation, inheritance and reserve-then-run path, in ii's namespace,
// without admission and without waiting for the outcome.
func (r *REST) StartImport(ctx context.Context, ii *tagger.ImageImport) (*tagger.ImageImport, error) {
	ctx = genericapirequest.WithNamespace(ctx, ii.Namespace)
	reserved, _, err := r.start(ctx, ii, nil, &metav1.CreateOptions{})
	return reserved, err
}

// inherit fills the unset spec fields from the target Image, so the stored
// ImageImport says what was actually imported. insecure is inherited only
// from an Image whose source is on the same registry: skipping TLS checks
// for one host says nothing about another.
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
		if ii.Spec.TagPolicy == nil {
			// The Image's tag policy goes with its from.
			ii.Spec.TagPolicy = img.Spec.TagPolicy
		}
	}
	if ii.Spec.Mirror == nil {
		ii.Spec.Mirror = ptr.To(img.Spec.Mirror)
	}
	if ii.Spec.Insecure == nil {
		ii.Spec.Insecure = ptr.To(img.Spec.Insecure && sameRegistry(img.Spec.From, ii.Spec.From))
	}
	if r.deps.Policy != nil {
		if err := r.deps.Policy.Check(ii.Spec.From); err != nil {
			return apierrors.NewInvalid(tagger.Kind("ImageImport"), ii.Name, field.ErrorList{
				field.Forbidden(field.NewPath("spec", "from"), redact.Error(err)),
			})
		}
	}
	return nil
}

// sameRegistry tells whether two references name the same registry host.
func sameRegistry(a, b string) bool {
	na, errA := reference.ParseNormalizedNamed(a)
	nb, errB := reference.ParseNormalizedNamed(b)
	return errA == nil && errB == nil && reference.Domain(na) == reference.Domain(nb)
}

// UpdateRecord implements imports.Records: it writes status and claim
// annotations of a record, if it meets pre.
func (r *REST) UpdateRecord(ctx context.Context, namespace, name string, pre imports.Preconditions, mutate func(*tagger.ImageImport)) (*tagger.ImageImport, error) {
	ctx = genericapirequest.WithNamespace(ctx, namespace)
	transform := func(_ context.Context, _, old runtime.Object) (runtime.Object, error) {
		ii := old.(*tagger.ImageImport).DeepCopy()
		if pre.UID != "" && ii.UID != pre.UID {
			// Deleted and created anew under the same name: not this one.
			return nil, apierrors.NewNotFound(tagger.Resource("imageimports"), name)
		}
		if pre.ResourceVersion != "" && ii.ResourceVersion != pre.ResourceVersion {
			return nil, apierrors.NewConflict(tagger.Resource("imageimports"), name, fmt.Errorf("changed since read"))
		}
		if pre.Runner != "" && ii.Annotations[tagger.AnnotationImportRunner] != pre.Runner {
			return nil, apierrors.NewConflict(tagger.Resource("imageimports"), name,
				fmt.Errorf("run by %q, not %q", ii.Annotations[tagger.AnnotationImportRunner], pre.Runner))
		}
		mutate(ii)
		return ii, nil
	}
	obj, _, err := r.internal.Update(ctx, name, rest.DefaultUpdatedObjectInfo(nil, transform),
		rest.ValidateAllObjectFunc, rest.ValidateAllObjectUpdateFunc, false, &metav1.UpdateOptions{})
	if err != nil {
		return nil, err
	}
	return obj.(*tagger.ImageImport), nil
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
