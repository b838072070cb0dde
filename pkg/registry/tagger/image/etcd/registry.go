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
package etcd

import (
	"context"
	"fmt"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	genericapirequest "k8s.io/apiserver/pkg/endpoints/request"
	"k8s.io/apiserver/pkg/registry/rest"

	"tagger.dev/tagger/pkg/apis/tagger"
	"tagger.dev/tagger/pkg/registry/tagger/image"
)

// Registry gives the other resources of the group typed access to Images,
// going through the same store (and so the same validation) as the API.
type Registry struct {
	images *REST
	status *StatusREST
}

// NewRegistry wraps the images storage.
func NewRegistry(images *REST, status *StatusREST) *Registry {
	return &Registry{images: images, status: status}
}

// Get returns the Image of the namespace in ctx.
func (r *Registry) Get(ctx context.Context, name string) (*tagger.Image, error) {
	obj, err := r.images.Get(ctx, name, &metav1.GetOptions{})
	if err != nil {
		return nil, err
	}
	return obj.(*tagger.Image), nil
}

// Create stores a new Image.
func (r *Registry) Create(ctx context.Context, img *tagger.Image) (*tagger.Image, error) {
	obj, err := r.images.Create(ctx, img, rest.ValidateAllObjectFunc, &metav1.CreateOptions{})
	if err != nil {
		return nil, err
	}
	return obj.(*tagger.Image), nil
}

// UpdateStatus applies mutate to the newest stored Image and writes the
// status. On a conflict the store re-reads the Image and runs mutate again,
// so concurrent writers never lose each other's generations.
func (r *Registry) UpdateStatus(ctx context.Context, name string, mutate func(*tagger.Image) error) (*tagger.Image, error) {
	transform := func(ctx context.Context, _, old runtime.Object) (runtime.Object, error) {
		img, ok := old.(*tagger.Image)
		if !ok {
			return nil, fmt.Errorf("not an Image: %T", old)
		}
		img = img.DeepCopy()
		if err := mutate(img); err != nil {
			return nil, err
		}
		return img, nil
	}
	obj, _, err := r.status.Update(ctx, name, rest.DefaultUpdatedObjectInfo(nil, transform),
		rest.ValidateAllObjectFunc, rest.ValidateAllObjectUpdateFunc, false, &metav1.UpdateOptions{})
	if err != nil {
		return nil, err
	}
	return obj.(*tagger.Image), nil
}

// AddGeneration records ref in the Image name of the namespace in ctx, the
// one rule imports and pushes share: the generation goes into the history
// by image.AddGeneration, and an Image that does not exist yet is created
// with spec (this generation is then its first).
func (r *Registry) AddGeneration(ctx context.Context, name string, spec tagger.ImageSpec, ref tagger.HashReference) (*tagger.Image, error) {
	add := func() (*tagger.Image, error) {
		return r.UpdateStatus(ctx, name, func(img *tagger.Image) error {
			image.AddGeneration(img, ref)
			return nil
		})
	}
	img, err := add()
	if !apierrors.IsNotFound(err) {
		return img, err
	}
	// A new Image is written once, with this generation as its first.
	ns, _ := genericapirequest.NamespaceFrom(ctx)
	first := &tagger.Image{ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: ns}, Spec: spec}
	image.AddGeneration(first, ref)
	created, err := r.Create(image.WithFirstGeneration(ctx), first)
	if !apierrors.IsAlreadyExists(err) {
		return created, err
	}
	return add() // created meanwhile by another import or push
}
