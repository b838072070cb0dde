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
// Package imageimport holds the storage of ImageImports, whose create
// reserves the record, hands the import to the import controller
// (pkg/controller/imports) and waits a bounded time for its outcome.
package imageimport

import (
	"context"
	"fmt"

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

// NewStrategy returns the strategy of the imageimports resource.
func NewStrategy(typer runtime.ObjectTyper) importStrategy {
	return importStrategy{typer, names.SimpleNameGenerator}
}

// NewStatusStrategy returns the strategy of imageimports/status.
func NewStatusStrategy(typer runtime.ObjectTyper) importStatusStrategy {
	return importStatusStrategy{NewStrategy(typer)}
}

// GetAttrs returns the labels and selectable fields of an ImageImport.
func GetAttrs(obj runtime.Object) (labels.Set, fields.Set, error) {
	ii, ok := obj.(*tagger.ImageImport)
	if !ok {
		return nil, nil, fmt.Errorf("not an ImageImport: %T", obj)
	}
	return labels.Set(ii.Labels), SelectableFields(ii), nil
}

// MatchImageImport returns a selection predicate over ImageImports.
func MatchImageImport(label labels.Selector, field fields.Selector) storage.SelectionPredicate {
	return storage.SelectionPredicate{Label: label, Field: field, GetAttrs: GetAttrs}
}

// SelectableFields returns the fields an ImageImport can be selected by;
// spec.targetImage lists the imports of one Image.
func SelectableFields(ii *tagger.ImageImport) fields.Set {
	set := generic.ObjectMetaFieldsSet(&ii.ObjectMeta, true)
	set["spec.targetImage"] = ii.Spec.TargetImage
	return set
}

type importStrategy struct {
	runtime.ObjectTyper
	names.NameGenerator
}

func (importStrategy) NamespaceScoped() bool { return true }

// GetResetFields keeps the main resource from writing status.
func (importStrategy) GetResetFields() map[fieldpath.APIVersion]*fieldpath.Set {
	return map[fieldpath.APIVersion]*fieldpath.Set{
		"tagger.dev/v1beta1": fieldpath.NewSet(fieldpath.MakePathOrDie("status")),
	}
}

// PrepareForCreate drops any status the client sent: only the import writes it.
func (importStrategy) PrepareForCreate(ctx context.Context, obj runtime.Object) {
	ii := obj.(*tagger.ImageImport)
	ii.Status = tagger.ImageImportStatus{}
	ii.Generation = 1
}

// PrepareForUpdate keeps the stored status and which server runs the
// import: only Tagger writes those.
func (importStrategy) PrepareForUpdate(ctx context.Context, obj, old runtime.Object) {
	ii, oldII := obj.(*tagger.ImageImport), old.(*tagger.ImageImport)
	ii.Status = oldII.Status
	for _, k := range []string{tagger.AnnotationImportRunner, tagger.AnnotationImportRenewed} {
		if v, ok := oldII.Annotations[k]; ok {
			if ii.Annotations == nil {
				ii.Annotations = map[string]string{}
			}
			ii.Annotations[k] = v
		} else {
			delete(ii.Annotations, k)
		}
	}
}

func (importStrategy) Validate(ctx context.Context, obj runtime.Object) field.ErrorList {
	return validation.ValidateImageImport(obj.(*tagger.ImageImport))
}

func (importStrategy) WarningsOnCreate(ctx context.Context, obj runtime.Object) []string { return nil }

func (importStrategy) AllowCreateOnUpdate(ctx context.Context) bool { return false }

func (importStrategy) AllowUnconditionalUpdate(ctx context.Context) bool { return true }

func (importStrategy) Canonicalize(obj runtime.Object) {}

func (importStrategy) ValidateUpdate(ctx context.Context, obj, old runtime.Object) field.ErrorList {
	return validation.ValidateImageImportUpdate(obj.(*tagger.ImageImport), old.(*tagger.ImageImport))
}

func (importStrategy) WarningsOnUpdate(ctx context.Context, obj, old runtime.Object) []string {
	return nil
}

type importStatusStrategy struct {
	importStrategy
}

// GetResetFields keeps the status endpoint from writing spec or metadata.
func (importStatusStrategy) GetResetFields() map[fieldpath.APIVersion]*fieldpath.Set {
	return map[fieldpath.APIVersion]*fieldpath.Set{
		"tagger.dev/v1beta1": fieldpath.NewSet(
			fieldpath.MakePathOrDie("spec"),
			fieldpath.MakePathOrDie("metadata", "labels"),
			fieldpath.MakePathOrDie("metadata", "annotations"),
		),
	}
}

// PrepareForUpdate keeps everything but the status as stored.
func (importStatusStrategy) PrepareForUpdate(ctx context.Context, obj, old runtime.Object) {
	ii, oldII := obj.(*tagger.ImageImport), old.(*tagger.ImageImport)
	ii.Spec = oldII.Spec
	ii.Labels = oldII.Labels
	ii.Annotations = oldII.Annotations
	ii.Finalizers = oldII.Finalizers
	ii.OwnerReferences = oldII.OwnerReferences
}

func (importStatusStrategy) ValidateUpdate(ctx context.Context, obj, old runtime.Object) field.ErrorList {
	return validation.ValidateImageImportStatusUpdate(obj.(*tagger.ImageImport), old.(*tagger.ImageImport))
}

func (importStatusStrategy) WarningsOnUpdate(ctx context.Context, obj, old runtime.Object) []string {
	return nil
}
