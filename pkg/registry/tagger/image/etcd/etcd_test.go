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
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metainternalversion "k8s.io/apimachinery/pkg/apis/meta/internalversion"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/watch"
	genericapirequest "k8s.io/apiserver/pkg/endpoints/request"
	"k8s.io/apiserver/pkg/registry/generic"
	genericregistrytest "k8s.io/apiserver/pkg/registry/generic/testing"
	"k8s.io/apiserver/pkg/registry/rest"
	etcd3testing "k8s.io/apiserver/pkg/storage/etcd3/testing"

	"tagger.dev/tagger/pkg/apis/tagger"
	"tagger.dev/tagger/pkg/apis/tagger/v1beta1"
	"tagger.dev/tagger/pkg/apiserver/scheme"
	"tagger.dev/tagger/pkg/registry/tagger/image"
)

// newStorage starts an embedded etcd and returns the images storage on it.
func newStorage(t *testing.T) (*REST, *StatusREST) {
	t.Helper()
	if testing.Short() {
		t.Skip("starts an embedded etcd")
	}
	_, cfg := etcd3testing.NewUnsecuredEtcd3TestClientServer(t)
	cfg.Codec = scheme.Codecs.LegacyCodec(v1beta1.SchemeGroupVersion)
	opts := generic.RESTOptions{
		StorageConfig:           cfg.ForResource(tagger.Resource("images")),
		Decorator:               generic.UndecoratedStorage,
		DeleteCollectionWorkers: 1,
		ResourcePrefix:          "images",
	}
	st, status, err := NewREST(scheme.Scheme, opts)
	if err != nil {
		t.Fatalf("NewREST: %v", err)
	}
	t.Cleanup(st.Store.DestroyFunc)
	return st, status
}

func validImage() *tagger.Image {
	return &tagger.Image{
		ObjectMeta: metav1.ObjectMeta{Name: "foo", Namespace: metav1.NamespaceDefault},
		Spec:       tagger.ImageSpec{From: "registry.example.com/org/app:latest"},
	}
}

func hashRef(i int, at time.Time) tagger.HashReference {
	return tagger.HashReference{
		From:           "registry.example.com/org/app:latest",
		ImportedAt:     metav1.NewTime(at),
		ImageReference: fmt.Sprintf("registry.example.com/org/app@sha256:%064x", i),
	}
}

func nsContext() context.Context {
	return genericapirequest.WithNamespace(genericapirequest.NewContext(), metav1.NamespaceDefault)
}

func TestCreate(t *testing.T) {
	st, _ := newStorage(t)
	test := genericregistrytest.New(t, st.Store)
	img := validImage()
	img.ObjectMeta = metav1.ObjectMeta{}
	invalid := func(name, from string) *tagger.Image {
		return &tagger.Image{
			ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: test.TestNamespace()},
			Spec:       tagger.ImageSpec{From: from},
		}
	}
	test.TestCreate(
		img,
		invalid("no-from", ""),
		invalid("bad-from", "Not A Reference"),
		invalid("Bad_Name", "nginx"),
	)
}

func TestUpdate(t *testing.T) {
	st, _ := newStorage(t)
	test := genericregistrytest.New(t, st.Store)
	test.TestUpdate(
		validImage(),
		func(obj runtime.Object) runtime.Object {
			img := obj.(*tagger.Image)
			img.Spec.From = "docker.io/library/nginx:1.27"
			img.Spec.Mirror = true
			return img
		},
		func(obj runtime.Object) runtime.Object {
			img := obj.(*tagger.Image)
			img.Spec.From = ""
			return img
		},
		func(obj runtime.Object) runtime.Object {
			img := obj.(*tagger.Image)
			img.Spec.From = "registry.example.com/org/app:bad tag"
			return img
		},
	)
}

func TestDelete(t *testing.T) {
	st, _ := newStorage(t)
	test := genericregistrytest.New(t, st.Store).ReturnDeletedObject()
	test.TestDelete(validImage())
}

func TestGet(t *testing.T) {
	st, _ := newStorage(t)
	test := genericregistrytest.New(t, st.Store)
	test.TestGet(validImage())
}

func TestList(t *testing.T) {
	st, _ := newStorage(t)
	test := genericregistrytest.New(t, st.Store)
	test.TestList(validImage())
}

func TestWatch(t *testing.T) {
	st, _ := newStorage(t)
	test := genericregistrytest.New(t, st.Store)
	test.TestWatch(
		validImage(),
		// matching labels
		[]labels.Set{},
		// not matching labels
		[]labels.Set{
			{"foo": "bar"},
		},
		// matching fields
		[]fields.Set{
			{"metadata.name": "foo"},
			{"spec.from": "registry.example.com/org/app:latest"},
		},
		// not matching fields
		[]fields.Set{
			{"metadata.name": "bar"},
			{"spec.from": "nginx"},
		},
	)
}

func TestShortNamesAndCategories(t *testing.T) {
	st := &REST{}
	if diff := cmp.Diff([]string{"img"}, st.ShortNames()); diff != "" {
		t.Errorf("ShortNames (-want +got):\n%s", diff)
	}
	if diff := cmp.Diff([]string{"tagger"}, st.Categories()); diff != "" {
		t.Errorf("Categories (-want +got):\n%s", diff)
	}
}

// TestUpdateKeepsStatus checks that the main resource cannot write status
// and bumps the generation only when the spec changes.
func TestUpdateKeepsStatus(t *testing.T) {
	st, status := newStorage(t)
	ctx := nsContext()
	created := mustCreate(t, st, validImage())
	withStatus := created.DeepCopy()
	withStatus.Status.HashReferences = []tagger.HashReference{hashRef(1, time.Now().Truncate(time.Second))}
	stored, err := updateStatus(ctx, status, withStatus)
	if err != nil {
		t.Fatalf("status update: %v", err)
	}

	tests := []struct {
		name    string
		mutate  func(*tagger.Image)
		wantGen int64
	}{{
		name:    "labels only",
		mutate:  func(img *tagger.Image) { img.Labels = map[string]string{"team": "a"} },
		wantGen: 1,
	}, {
		name:    "spec change",
		mutate:  func(img *tagger.Image) { img.Spec.Insecure = true },
		wantGen: 2,
	}}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			img := stored.DeepCopy()
			tc.mutate(img)
			img.Status.HashReferences = nil
			obj, _, err := st.Update(ctx, img.Name, rest.DefaultUpdatedObjectInfo(img), rest.ValidateAllObjectFunc, rest.ValidateAllObjectUpdateFunc, false, &metav1.UpdateOptions{})
			if err != nil {
				t.Fatalf("update: %v", err)
			}
			got := obj.(*tagger.Image)
			if diff := cmp.Diff(stored.Status, got.Status); diff != "" {
				t.Errorf("status changed through the main resource (-want +got):\n%s", diff)
			}
			if got.Spec != img.Spec {
				t.Errorf("spec = %+v, want %+v", got.Spec, img.Spec)
			}
			if got.Generation != tc.wantGen {
				t.Errorf("generation = %d, want %d", got.Generation, tc.wantGen)
			}
			stored = got
		})
	}
}

func mustCreate(t *testing.T, st *REST, img *tagger.Image) *tagger.Image {
	t.Helper()
	obj, err := st.Create(nsContext(), img, rest.ValidateAllObjectFunc, &metav1.CreateOptions{})
	if err != nil {
		t.Fatalf("create: %v", err)
	}
	return obj.(*tagger.Image)
}

func updateStatus(ctx context.Context, status *StatusREST, img *tagger.Image) (*tagger.Image, error) {
	obj, _, err := status.Update(ctx, img.Name, rest.DefaultUpdatedObjectInfo(img), rest.ValidateAllObjectFunc, rest.ValidateAllObjectUpdateFunc, false, &metav1.UpdateOptions{})
	if err != nil {
		return nil, err
	}
	return obj.(*tagger.Image), nil
}

func TestStatusUpdate(t *testing.T) {
	st, status := newStorage(t)
	ctx := nsContext()
	base := time.Now().Truncate(time.Second)

	created := mustCreate(t, st, validImage())
	if created.Generation != 1 {
		t.Errorf("generation after create = %d, want 1", created.Generation)
	}

	img := created.DeepCopy()
	img.Status.HashReferences = []tagger.HashReference{hashRef(2, base), hashRef(1, base.Add(-time.Minute))}
	img.Status.CurrentReference = hashRef(2, base).ImageReference
	img.Spec = tagger.ImageSpec{From: "nginx", Mirror: true, Insecure: true}
	img.Labels = map[string]string{"forged": "true"}
	got, err := updateStatus(ctx, status, img)
	if err != nil {
		t.Fatalf("status update: %v", err)
	}
	if diff := cmp.Diff(img.Status, got.Status); diff != "" {
		t.Errorf("returned status (-want +got):\n%s", diff)
	}

	obj, err := status.Get(ctx, "foo", &metav1.GetOptions{})
	if err != nil {
		t.Fatalf("get: %v", err)
	}
	stored := obj.(*tagger.Image)
	if diff := cmp.Diff(img.Status, stored.Status); diff != "" {
		t.Errorf("stored status (-want +got):\n%s", diff)
	}
	if stored.Spec != created.Spec {
		t.Errorf("spec changed through status: got %+v, want %+v", stored.Spec, created.Spec)
	}
	if len(stored.Labels) != 0 {
		t.Errorf("labels changed through status: %v", stored.Labels)
	}
	if stored.Generation != 1 {
		t.Errorf("generation after status update = %d, want 1", stored.Generation)
	}

	// The status endpoint validates the status.
	bad := stored.DeepCopy()
	bad.Status.HashReferences[0].ImageReference = "registry.example.com/org/app:latest"
	if _, err := updateStatus(ctx, status, bad); !apierrors.IsInvalid(err) {
		t.Errorf("status update with a tag reference: err = %v, want Invalid", err)
	}

	// A subresource never creates its parent.
	missing := validImage()
	missing.Name = "missing"
	if _, _, err := status.Update(ctx, missing.Name, rest.DefaultUpdatedObjectInfo(missing), rest.ValidateAllObjectFunc, rest.ValidateAllObjectUpdateFunc, true, &metav1.UpdateOptions{}); !apierrors.IsNotFound(err) {
		t.Errorf("status update of a missing Image: err = %v, want NotFound", err)
	}
}

// TestRegistryUpdateStatusConcurrent appends generations from many
// goroutines at once; the store must retry on conflicts so that none is lost.
func TestRegistryUpdateStatusConcurrent(t *testing.T) {
	st, status := newStorage(t)
	reg := NewRegistry(st, status)
	ctx := nsContext()
	if _, err := reg.Create(ctx, validImage()); err != nil {
		t.Fatalf("create: %v", err)
	}

	const n = 20
	// Whole seconds: metav1.Time is stored with second precision.
	base := time.Now().Truncate(time.Second)
	var wg sync.WaitGroup
	errs := make(chan error, n)
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			ref := hashRef(i, base.Add(time.Duration(i)*time.Second))
			_, err := reg.UpdateStatus(ctx, "foo", func(img *tagger.Image) error {
				image.AddGeneration(img, ref)
				return nil
			})
			if err != nil {
				errs <- fmt.Errorf("generation %d: %w", i, err)
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}

	img, err := reg.Get(ctx, "foo")
	if err != nil {
		t.Fatalf("get: %v", err)
	}
	var want []tagger.HashReference
	for i := n - 1; i >= 0; i-- {
		want = append(want, hashRef(i, base.Add(time.Duration(i)*time.Second)))
	}
	if diff := cmp.Diff(want, img.Status.HashReferences); diff != "" {
		t.Errorf("generations after %d concurrent imports (-want +got):\n%s", n, diff)
	}
	if img.Spec != validImage().Spec {
		t.Errorf("spec changed: %+v", img.Spec)
	}
}

func TestRegistryUpdateStatusErrors(t *testing.T) {
	st, status := newStorage(t)
	reg := NewRegistry(st, status)
	ctx := nsContext()
	if _, err := reg.Create(ctx, validImage()); err != nil {
		t.Fatalf("create: %v", err)
	}
	before, err := reg.Get(ctx, "foo")
	if err != nil {
		t.Fatal(err)
	}

	tests := []struct {
		name   string
		target string
		mutate func(*tagger.Image) error
		check  func(error) bool
	}{{
		name:   "missing Image",
		target: "missing",
		mutate: func(*tagger.Image) error { return nil },
		check:  apierrors.IsNotFound,
	}, {
		name:   "mutate fails",
		target: "foo",
		mutate: func(*tagger.Image) error { return apierrors.NewBadRequest("no") },
		check:  apierrors.IsBadRequest,
	}, {
		name:   "invalid status",
		target: "foo",
		mutate: func(img *tagger.Image) error {
			img.Status.HashReferences = []tagger.HashReference{{From: "nginx", ImageReference: "nginx:latest"}}
			return nil
		},
		check: apierrors.IsInvalid,
	}}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, err := reg.UpdateStatus(ctx, tc.target, tc.mutate)
			if !tc.check(err) {
				t.Errorf("err = %v", err)
			}
		})
	}
	after, err := reg.Get(ctx, "foo")
	if err != nil {
		t.Fatal(err)
	}
	if after.ResourceVersion != before.ResourceVersion {
		t.Errorf("failed updates wrote the Image: resourceVersion %s -> %s", before.ResourceVersion, after.ResourceVersion)
	}
}

// TestAddGenerationCreatesInOneWrite: an import or push into an Image that
// does not exist yet writes it once, with its first generation and current
// reference (a watcher sees one ADDED, no MODIFIED); several racing for the
// same new Image all end up in its history; a client's create still drops
// any status it sends.
func TestAddGenerationCreatesInOneWrite(t *testing.T) {
	st, status := newStorage(t)
	reg := NewRegistry(st, status)
	ctx := nsContext()
	w, err := st.Watch(ctx, &metainternalversion.ListOptions{ResourceVersion: "0"})
	if err != nil {
		t.Fatal(err)
	}
	defer w.Stop()

	base := time.Now().Truncate(time.Second)
	spec := validImage().Spec
	img, err := reg.AddGeneration(ctx, "first", spec, hashRef(1, base))
	if err != nil {
		t.Fatal(err)
	}
	if len(img.Status.HashReferences) != 1 || img.Status.CurrentReference != hashRef(1, base).ImageReference || img.Generation != 1 {
		t.Fatalf("created with status %+v, generation %d", img.Status, img.Generation)
	}
	select {
	case ev := <-w.ResultChan():
		got, _ := ev.Object.(*tagger.Image)
		if ev.Type != watch.Added || got == nil || got.Status.CurrentReference != img.Status.CurrentReference {
			t.Fatalf("first event %s %+v", ev.Type, ev.Object)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("no ADDED event")
	}
	select {
	case ev := <-w.ResultChan():
		t.Fatalf("a second write: %s", ev.Type)
	case <-time.After(500 * time.Millisecond):
	}

	// Racing creators of one new Image: every generation is recorded.
	const n = 8
	var wg sync.WaitGroup
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if _, err := reg.AddGeneration(ctx, "raced", spec, hashRef(10+i, base.Add(time.Duration(i)*time.Second))); err != nil {
				t.Error(err)
			}
		}()
	}
	wg.Wait()
	raced, err := reg.Get(ctx, "raced")
	if err != nil {
		t.Fatal(err)
	}
	if len(raced.Status.HashReferences) != n || raced.Status.CurrentReference != hashRef(10+n-1, base).ImageReference {
		t.Fatalf("racing creators left %d generations, current %q", len(raced.Status.HashReferences), raced.Status.CurrentReference)
	}

	// A generation that does not validate creates nothing.
	bad := hashRef(2, base)
	bad.ImageReference = "not a reference"
	if _, err := reg.AddGeneration(ctx, "bad", spec, bad); !apierrors.IsInvalid(err) {
		t.Fatalf("invalid first generation: %v", err)
	}
	if _, err := reg.Get(ctx, "bad"); !apierrors.IsNotFound(err) {
		t.Fatalf("an Image was created from an invalid generation: %v", err)
	}

	// A client's create cannot set a status.
	withStatus := validImage()
	withStatus.Name = "client"
	withStatus.Status.HashReferences = []tagger.HashReference{hashRef(3, base)}
	created, err := reg.Create(ctx, withStatus)
	if err != nil {
		t.Fatal(err)
	}
	if len(created.Status.HashReferences) != 0 || created.Status.CurrentReference != "" {
		t.Fatalf("a client created an Image with status %+v", created.Status)
	}
}
