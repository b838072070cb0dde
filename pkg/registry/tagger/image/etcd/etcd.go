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
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apiserver/pkg/registry/generic"
	genericregistry "k8s.io/apiserver/pkg/registry/generic/registry"
	"k8s.io/apiserver/pkg/registry/rest"

	"tagger.dev/tagger/pkg/apis/tagger"
	"tagger.dev/tagger/pkg/registry/status"
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
	return NewRESTWithOptions(scheme, optsGetter, image.Options{})
}

// NewRESTWithOptions returns the storage of images and images/status,
// enforcing opts.
func NewRESTWithOptions(scheme *runtime.Scheme, optsGetter generic.RESTOptionsGetter, opts image.Options) (*REST, *StatusREST, error) {
	strategy := image.NewStrategyWithOptions(scheme, opts)
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

	return &REST{store}, status.NewREST(store, image.NewStatusStrategy(scheme)), nil
}

// ShortNames implements rest.ShortNamesProvider.
func (r *REST) ShortNames() []string { return []string{"img"} }

// Categories implements rest.CategoriesProvider: "kubectl get tagger".
func (r *REST) Categories() []string { return []string{"tagger"} }

// StatusREST implements the images/status subresource.
type StatusREST = status.REST
