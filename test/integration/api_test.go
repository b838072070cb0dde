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

package integration

import (
	"context"
	"testing"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/watch"

	"tagger.dev/tagger/pkg/apis/tagger/v1beta1"
	applyv1beta1 "tagger.dev/tagger/pkg/generated/applyconfiguration/tagger/v1beta1"
)

const ns = "default"

func newImage(name, from string) *v1beta1.Image {
	return &v1beta1.Image{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: ns, Labels: map[string]string{"app": name}},
		Spec:       v1beta1.ImageSpec{From: from},
	}
}

func digestRef(i int) v1beta1.HashReference {
	return v1beta1.HashReference{
		From:           "127.0.0.1:5000/app:latest",
		ImportedAt:     metav1.NewTime(time.Date(2026, 1, 1, 0, i, 0, 0, time.UTC)),
		ImageReference: "127.0.0.1:5000/app@sha256:" + hex64(i),
	}
}

func hex64(i int) string {
	const digits = "0123456789abcdef"
	b := make([]byte, 64)
	for j := range b {
		b[j] = digits[(i+j)%16]
	}
	return string(b)
}

// causeFields returns the field paths of an Invalid error.
func causeFields(t *testing.T, err error) []string {
	t.Helper()
	if !apierrors.IsInvalid(err) {
		t.Fatalf("want 422 Invalid, got %v", err)
	}
	var fields []string
	for _, c := range err.(apierrors.APIStatus).Status().Details.Causes {
		fields = append(fields, c.Field)
	}
	return fields
}

func TestImageLifecycle(t *testing.T) {
	s := startServer(t, serverOptions{})
	ctx := context.Background()
	images := s.client.TaggerV1beta1().Images(ns)

	// Create drops a client-sent status: only imports write generations.
	in := newImage("app", "nginx")
	in.Status.HashReferences = []v1beta1.HashReference{digestRef(1)}
	created, err := images.Create(ctx, in, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if len(created.Status.HashReferences) != 0 || created.Generation != 1 {
		t.Fatalf("create kept status or bad generation: %+v", created)
	}

	w, err := images.Watch(ctx, metav1.ListOptions{ResourceVersion: created.ResourceVersion})
	if err != nil {
		t.Fatal(err)
	}
	defer w.Stop()

	// Status through the status subresource; spec changes there are ignored.
	withStatus := created.DeepCopy()
	withStatus.Spec.From = "ignored:1"
	withStatus.Status.HashReferences = []v1beta1.HashReference{digestRef(2), digestRef(1)}
	updated, err := images.UpdateStatus(ctx, withStatus, metav1.UpdateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if updated.Spec.From != "nginx" || len(updated.Status.HashReferences) != 2 {
		t.Fatalf("status update: spec %q, %d refs", updated.Spec.From, len(updated.Status.HashReferences))
	}

	// Spec through the main resource; status changes there are ignored.
	withSpec := updated.DeepCopy()
	withSpec.Spec.From = "registry.example.com/org/app:v2"
	withSpec.Status.HashReferences = nil
	updated2, err := images.Update(ctx, withSpec, metav1.UpdateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if updated2.Spec.From != "registry.example.com/org/app:v2" || len(updated2.Status.HashReferences) != 2 || updated2.Generation != 2 {
		t.Fatalf("spec update: %+v", updated2)
	}

	// A stale resourceVersion conflicts.
	stale := updated.DeepCopy()
	stale.Spec.From = "busybox"
	if _, err := images.Update(ctx, stale, metav1.UpdateOptions{}); !apierrors.IsConflict(err) {
		t.Fatalf("want conflict, got %v", err)
	}

	// Status must hold digest references, at most 25.
	bad := updated2.DeepCopy()
	bad.Status.HashReferences = []v1beta1.HashReference{{From: "x", ImportedAt: metav1.Now(), ImageReference: "127.0.0.1:5000/app:latest"}}
	_, err = images.UpdateStatus(ctx, bad, metav1.UpdateOptions{})
	if got := causeFields(t, err); len(got) != 1 || got[0] != "status.hashReferences[0].imageReference" {
		t.Fatalf("causes %v", got)
	}
	bad = updated2.DeepCopy()
	bad.Status.HashReferences = nil
	for i := 0; i < 26; i++ {
		bad.Status.HashReferences = append(bad.Status.HashReferences, digestRef(i))
	}
	_, err = images.UpdateStatus(ctx, bad, metav1.UpdateOptions{})
	if got := causeFields(t, err); len(got) != 1 || got[0] != "status.hashReferences" {
		t.Fatalf("causes %v", got)
	}

	// The watch saw both updates, in order.
	for _, want := range []string{"nginx", "registry.example.com/org/app:v2"} {
		select {
		case ev := <-w.ResultChan():
			img := ev.Object.(*v1beta1.Image)
			if ev.Type != watch.Modified || img.Spec.From != want {
				t.Fatalf("watch event %s %q, want Modified %q", ev.Type, img.Spec.From, want)
			}
		case <-time.After(10 * time.Second):
			t.Fatal("no watch event")
		}
	}

	if err := images.Delete(ctx, "app", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	if _, err := images.Get(ctx, "app", metav1.GetOptions{}); !apierrors.IsNotFound(err) {
		t.Fatalf("after delete: %v", err)
	}
}

func TestImageValidation(t *testing.T) {
	s := startServer(t, serverOptions{})
	ctx := context.Background()
	cases := map[string]struct {
		img  *v1beta1.Image
		want []string
	}{
		"uppercase name":      {newImage("App", "nginx"), []string{"metadata.name"}},
		"missing from":        {newImage("a", ""), []string{"spec.from"}},
		"unparsable from":     {newImage("b", "UPPER::bad"), []string{"spec.from"}},
		"name and from wrong": {newImage("C", "a b"), []string{"metadata.name", "spec.from"}},
	}
	for name, tc := range cases {
		t.Run(name, func(t *testing.T) {
			_, err := s.client.TaggerV1beta1().Images(ns).Create(ctx, tc.img, metav1.CreateOptions{})
			got := causeFields(t, err)
			if len(got) != len(tc.want) {
				t.Fatalf("causes %v, want %v", got, tc.want)
			}
			for i := range got {
				if got[i] != tc.want[i] {
					t.Fatalf("causes %v, want %v", got, tc.want)
				}
			}
		})
	}
	// Nothing half-written.
	list, err := s.client.TaggerV1beta1().Images(ns).List(ctx, metav1.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if len(list.Items) != 0 {
		t.Fatalf("invalid creates stored %d images", len(list.Items))
	}
}

func TestImageSelectorsAndApply(t *testing.T) {
	s := startServer(t, serverOptions{})
	ctx := context.Background()
	images := s.client.TaggerV1beta1().Images(ns)
	for _, img := range []*v1beta1.Image{newImage("one", "nginx"), newImage("two", "busybox")} {
		if _, err := images.Create(ctx, img, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	byLabel, err := images.List(ctx, metav1.ListOptions{LabelSelector: "app=two"})
	if err != nil {
		t.Fatal(err)
	}
	byField, err := images.List(ctx, metav1.ListOptions{FieldSelector: "spec.from=nginx"})
	if err != nil {
		t.Fatal(err)
	}
	if len(byLabel.Items) != 1 || byLabel.Items[0].Name != "two" || len(byField.Items) != 1 || byField.Items[0].Name != "one" {
		t.Fatalf("selectors: label %v, field %v", byLabel.Items, byField.Items)
	}

	// Server-side apply creates, then a second manager conflicts on a field
	// the first one owns, and the status subresource has its own manager.
	apply := applyv1beta1.Image("applied", ns).WithSpec(applyv1beta1.ImageSpec().WithFrom("nginx:1.27").WithMirror(true))
	got, err := images.Apply(ctx, apply, metav1.ApplyOptions{FieldManager: "alice"})
	if err != nil {
		t.Fatal(err)
	}
	if got.Spec.From != "nginx:1.27" || !got.Spec.Mirror {
		t.Fatalf("applied %+v", got.Spec)
	}
	other := applyv1beta1.Image("applied", ns).WithSpec(applyv1beta1.ImageSpec().WithFrom("nginx:1.28"))
	if _, err := images.Apply(ctx, other, metav1.ApplyOptions{FieldManager: "bob"}); !apierrors.IsConflict(err) {
		t.Fatalf("want apply conflict, got %v", err)
	}
	if got, err = images.Apply(ctx, other, metav1.ApplyOptions{FieldManager: "bob", Force: true}); err != nil || got.Spec.From != "nginx:1.28" {
		t.Fatalf("forced apply: %v %+v", err, got)
	}
	status := applyv1beta1.Image("applied", ns).WithStatus(applyv1beta1.ImageStatus().WithHashReferences(
		applyv1beta1.HashReference().WithFrom("nginx:1.28").WithImportedAt(metav1.Now()).
			WithImageReference("docker.io/library/nginx@sha256:" + hex64(3))))
	got, err = images.ApplyStatus(ctx, status, metav1.ApplyOptions{FieldManager: "importer"})
	if err != nil {
		t.Fatal(err)
	}
	if len(got.Status.HashReferences) != 1 || got.Spec.From != "nginx:1.28" {
		t.Fatalf("apply status: %+v", got)
	}
}
