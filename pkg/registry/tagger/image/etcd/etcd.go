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
// Package etcd stores Images in etcd through the generic registry.
package etcd

import (
	"context"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apiserver/pkg/registry/generic"
	genericregistry "k8s.io/apiserver/pkg/registry/generic/registry"
	"k8s.io/apiserver/pkg/registry/rest"
	"sigs.k8s.io/structured-merge-diff/v6/fieldpath"

	"tagger.dev/tagger/pkg/apis/tagger"
	"tagger.dev/tagger/pkg/registry/tagger/image"
)

// REST implements the images resource.
type REST struct {
	*genericregistry.Store
}

var (
	_ rest.StandardStorage    = &REST{}
	_ rest.ShortNamesProvider = &REST{}
	_ rest.CategoriesProvider = &REST{}
)

// NewREST returns the storage of images and images/status.
func NewREST(scheme *runtime.Scheme, optsGetter generic.RESTOptionsGetter) (*REST, *StatusREST, error) {
	strategy := image.NewStrategy(scheme)
	store := &genericregistry.Store{
		NewFunc:                   func() runtime.Object { return &tagger.Image{} },
		NewListFunc:               func() runtime.Object { return &tagger.ImageList{} },
		PredicateFunc:             image.MatchImage,
		DefaultQualifiedResource:  tagger.Resource("images"),
		SingularQualifiedResource: tagger.Resource("image"),

		CreateStrategy:      strategy,
		UpdateStrategy:      strategy,
		DeleteStrategy:      strategy,
		ResetFieldsStrategy: strategy,

		TableConvertor: image.TableConvertor{},
	}
	if err := store.CompleteWithOptions(&generic.StoreOptions{RESTOptions: optsGetter, AttrFunc: image.GetAttrs}); err != nil {
		return nil, nil, err
	}

	statusStrategy := image.NewStatusStrategy(scheme)
	statusStore := *store
	statusStore.CreateStrategy = nil
	statusStore.DeleteStrategy = nil
	statusStore.UpdateStrategy = statusStrategy
	statusStore.ResetFieldsStrategy = statusStrategy
	return &REST{store}, &StatusREST{store: &statusStore}, nil
}

// ShortNames implements rest.ShortNamesProvider.
func (r *REST) ShortNames() []string { return []string{"img"} }

// Categories implements rest.CategoriesProvider: "kubectl get tagger".
func (r *REST) Categories() []string { return []string{"tagger"} }

// StatusREST implements the images/status subresource.
type StatusREST struct {
	store *genericregistry.Store
}

var (
	_ rest.Patcher                 = &StatusREST{}
	_ rest.ResetFieldsStrategy     = &StatusREST{}
	_ rest.TableConvertor          = &StatusREST{}
	_ rest.SingularNameProvider    = &StatusREST{}
	_ rest.GracefulDeleter         = (*REST)(nil)
	_ rest.StorageVersionProvider  = (*REST)(nil)
	_ rest.NamespaceScopedStrategy = image.NewStrategy(nil)
)

// New implements rest.Storage.
func (r *StatusREST) New() runtime.Object { return &tagger.Image{} }

// Destroy implements rest.Storage; the store is shared with REST, which closes it.
func (r *StatusREST) Destroy() {}

// GetSingularName implements rest.SingularNameProvider.
func (r *StatusREST) GetSingularName() string { return "image" }

// Get implements rest.Getter; Patch needs it.
func (r *StatusREST) Get(ctx context.Context, name string, options *metav1.GetOptions) (runtime.Object, error) {
	return r.store.Get(ctx, name, options)
}

// Update implements rest.Updater. A subresource never creates its parent.
func (r *StatusREST) Update(ctx context.Context, name string, objInfo rest.UpdatedObjectInfo, createValidation rest.ValidateObjectFunc, updateValidation rest.ValidateObjectUpdateFunc, forceAllowCreate bool, options *metav1.UpdateOptions) (runtime.Object, bool, error) {
	return r.store.Update(ctx, name, objInfo, createValidation, updateValidation, false, options)
}

// GetResetFields implements rest.ResetFieldsStrategy.
func (r *StatusREST) GetResetFields() map[fieldpath.APIVersion]*fieldpath.Set {
	return r.store.GetResetFields()
}

// ConvertToTable implements rest.TableConvertor.
func (r *StatusREST) ConvertToTable(ctx context.Context, object runtime.Object, tableOptions runtime.Object) (*metav1.Table, error) {
	return r.store.ConvertToTable(ctx, object, tableOptions)
}
