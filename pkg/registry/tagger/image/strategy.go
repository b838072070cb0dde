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
// Package image holds the storage strategies of Images.
package image

import (
	"context"
	"fmt"
	"time"

	apiequality "k8s.io/apimachinery/pkg/api/equality"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/util/validation/field"
	"k8s.io/apiserver/pkg/registry/generic"
	"k8s.io/apiserver/pkg/storage"
	"k8s.io/apiserver/pkg/storage/names"
	"sigs.k8s.io/structured-merge-diff/v6/fieldpath"

	"tagger.dev/tagger/pkg/apis/tagger"
	"tagger.dev/tagger/pkg/apis/tagger/validation"
)

// NewStrategy returns the strategy of the images resource.
func NewStrategy(typer runtime.ObjectTyper) imageStrategy {
	return NewStrategyWithOptions(typer, Options{})
}

// Options are the server's rules for Images beyond validation.
type Options struct {
	// MinImportInterval is the shortest spec.importPolicy.interval
	// accepted (--min-import-interval).
	MinImportInterval time.Duration
}

// NewStrategyWithOptions returns the strategy of the images resource,
// enforcing opts.
func NewStrategyWithOptions(typer runtime.ObjectTyper, opts Options) imageStrategy {
	return imageStrategy{typer, names.SimpleNameGenerator, opts}
}

// NewStatusStrategy returns the strategy of the images/status subresource.
func NewStatusStrategy(typer runtime.ObjectTyper) imageStatusStrategy {
	return imageStatusStrategy{NewStrategy(typer)}
}

// importIntervalPath is where the minimum interval applies.
var importIntervalPath = field.NewPath("spec", "importPolicy")

// GetAttrs returns the labels and selectable fields of an Image.
func GetAttrs(obj runtime.Object) (labels.Set, fields.Set, error) {
	img, ok := obj.(*tagger.Image)
	if !ok {
		return nil, nil, fmt.Errorf("not an Image: %T", obj)
	}
	return labels.Set(img.Labels), SelectableFields(img), nil
}

// MatchImage returns a selection predicate over Images.
func MatchImage(label labels.Selector, field fields.Selector) storage.SelectionPredicate {
	return storage.SelectionPredicate{Label: label, Field: field, GetAttrs: GetAttrs}
}

// SelectableFields returns the fields an Image can be selected by.
func SelectableFields(img *tagger.Image) fields.Set {
	set := generic.ObjectMetaFieldsSet(&img.ObjectMeta, true)
	set["spec.from"] = img.Spec.From
	return set
}

type firstGenerationKey struct{}

// WithFirstGeneration marks ctx for creating an Image together with its
// first generation (an import or push into an Image that does not exist
// yet): the history the caller set is kept and validated, so that the
// Image is written once instead of created and then updated. Requests
// cannot set it; only the server's own Registry.AddGeneration does.
func WithFirstGeneration(ctx context.Context) context.Context {
	return context.WithValue(ctx, firstGenerationKey{}, true)
}

func firstGeneration(ctx context.Context) bool {
	v, _ := ctx.Value(firstGenerationKey{}).(bool)
	return v
}

type imageStrategy struct {
	runtime.ObjectTyper
	names.NameGenerator
	opts Options
}

func (imageStrategy) NamespaceScoped() bool { return true }

// GetResetFields keeps the main resource from writing status under server-side apply.
func (imageStrategy) GetResetFields() map[fieldpath.APIVersion]*fieldpath.Set {
	return map[fieldpath.APIVersion]*fieldpath.Set{
		"tagger.dev/v1beta1": fieldpath.NewSet(fieldpath.MakePathOrDie("status")),
	}
}

// PrepareForCreate drops any status: generations are only added by imports
// and pushes (an Image they create keeps its first: WithFirstGeneration).
func (imageStrategy) PrepareForCreate(ctx context.Context, obj runtime.Object) {
	img := obj.(*tagger.Image)
	history := img.Status.HashReferences
	img.Status = tagger.ImageStatus{}
	if firstGeneration(ctx) {
		img.Status.HashReferences = history
	}
	img.Generation = 1
	normalizePin(img, nil)
	SetCurrentReference(img)
}

// normalizePin drops a pin time that no longer goes with the pin: when the
// pin is cleared, or when the reference changed but the time did not (a
// client that knows only spec.pinnedReference moved it); the pin then names
// the newest generation with its reference.
func normalizePin(img, old *tagger.Image) {
	spec := &img.Spec
	switch {
	case spec.PinnedReference == "":
		spec.PinnedResolvedAt = nil
	case old != nil && spec.PinnedReference != old.Spec.PinnedReference &&
		apiequality.Semantic.DeepEqual(spec.PinnedResolvedAt, old.Spec.PinnedResolvedAt):
		spec.PinnedResolvedAt = nil
	}
}

// SetCurrentReference makes status.currentReference what consumers should
// run: the pinned generation when there is a pin, else the newest. Every
// write of spec or status goes through it, so it never goes stale.
func SetCurrentReference(img *tagger.Image) {
	switch {
	case img.Spec.PinnedReference != "":
		img.Status.CurrentReference = img.Spec.PinnedReference
	case len(img.Status.HashReferences) > 0:
		img.Status.CurrentReference = img.Status.HashReferences[0].ImageReference
	default:
		img.Status.CurrentReference = ""
	}
}

// PrepareForUpdate keeps the stored status: the spec endpoint cannot write it.
func (imageStrategy) PrepareForUpdate(ctx context.Context, obj, old runtime.Object) {
	img, oldImg := obj.(*tagger.Image), old.(*tagger.Image)
	img.Status = oldImg.Status
	normalizePin(img, oldImg)
	if !apiequality.Semantic.DeepEqual(img.Spec, oldImg.Spec) {
		img.Generation = oldImg.Generation + 1
	}
	SetCurrentReference(img)
}

func (s imageStrategy) Validate(ctx context.Context, obj runtime.Object) field.ErrorList {
	img := obj.(*tagger.Image)
	errs := validation.ValidateImage(img)
	if firstGeneration(ctx) {
		errs = append(errs, validation.ValidateImageStatus(&img.Status)...)
	}
	return append(errs, validation.ValidateImportInterval(img.Spec.ImportPolicy, s.opts.MinImportInterval, importIntervalPath)...)
}

func (imageStrategy) WarningsOnCreate(ctx context.Context, obj runtime.Object) []string { return nil }

func (imageStrategy) AllowCreateOnUpdate(ctx context.Context) bool { return false }

func (imageStrategy) AllowUnconditionalUpdate(ctx context.Context) bool { return true }

func (imageStrategy) Canonicalize(obj runtime.Object) {}

func (s imageStrategy) ValidateUpdate(ctx context.Context, obj, old runtime.Object) field.ErrorList {
	img, oldImg := obj.(*tagger.Image), old.(*tagger.Image)
	errs := validation.ValidateImageUpdate(img, oldImg)
	// An interval accepted before the minimum was raised stays valid until
	// the policy changes (checks use the minimum meanwhile).
	if !apiequality.Semantic.DeepEqual(img.Spec.ImportPolicy, oldImg.Spec.ImportPolicy) {
		errs = append(errs, validation.ValidateImportInterval(img.Spec.ImportPolicy, s.opts.MinImportInterval, importIntervalPath)...)
	}
	return errs
}

func (imageStrategy) WarningsOnUpdate(ctx context.Context, obj, old runtime.Object) []string {
	return nil
}

type imageStatusStrategy struct {
	imageStrategy
}

// GetResetFields keeps the status endpoint from writing spec or metadata.
func (imageStatusStrategy) GetResetFields() map[fieldpath.APIVersion]*fieldpath.Set {
	return map[fieldpath.APIVersion]*fieldpath.Set{
		"tagger.dev/v1beta1": fieldpath.NewSet(
			fieldpath.MakePathOrDie("spec"),
			fieldpath.MakePathOrDie("metadata", "labels"),
			fieldpath.MakePathOrDie("metadata", "annotations"),
		),
	}
}

// PrepareForUpdate keeps everything but the status as stored.
func (imageStatusStrategy) PrepareForUpdate(ctx context.Context, obj, old runtime.Object) {
	img, oldImg := obj.(*tagger.Image), old.(*tagger.Image)
	img.Spec = oldImg.Spec
	img.Labels = oldImg.Labels
	img.Annotations = oldImg.Annotations
	img.Finalizers = oldImg.Finalizers
	img.OwnerReferences = oldImg.OwnerReferences
	SetCurrentReference(img)
}

func (imageStatusStrategy) ValidateUpdate(ctx context.Context, obj, old runtime.Object) field.ErrorList {
	return validation.ValidateImageStatusUpdate(obj.(*tagger.Image), old.(*tagger.Image))
}

func (imageStatusStrategy) WarningsOnUpdate(ctx context.Context, obj, old runtime.Object) []string {
	return nil
}
