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

package rollout

import (
	"context"
	"strings"
	"sync"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/client-go/kubernetes/fake"
	k8stesting "k8s.io/client-go/testing"

	taggerv1beta1 "tagger.dev/tagger/pkg/apis/tagger/v1beta1"
	taggerfake "tagger.dev/tagger/pkg/generated/clientset/versioned/fake"
)

const (
	ref1 = "mirror.example/ns/app@sha256:1111111111111111111111111111111111111111111111111111111111111111"
	ref2 = "mirror.example/ns/app@sha256:2222222222222222222222222222222222222222222222222222222222222222"
)

func deployment(name, image string, follow bool) *appsv1.Deployment {
	d := &appsv1.Deployment{ObjectMeta: metav1.ObjectMeta{Namespace: "ns", Name: name},
		Spec: appsv1.DeploymentSpec{Template: corev1.PodTemplateSpec{Spec: corev1.PodSpec{
			Containers: []corev1.Container{{Name: "c", Image: image}}}}}}
	if follow {
		d.Annotations = map[string]string{FollowAnnotation: "true"}
	}
	return d
}

func appImage(current string) *taggerv1beta1.Image {
	return &taggerv1beta1.Image{ObjectMeta: metav1.ObjectMeta{Namespace: "ns", Name: "app"},
		Status: taggerv1beta1.ImageStatus{CurrentReference: current}}
}

// patches counts patches per workload name.
type patches struct {
	mu sync.Mutex
	n  map[string]int
}

func (p *patches) get(name string) int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.n[name]
}

func setup(t *testing.T, objs ...runtime.Object) (*fake.Clientset, *taggerfake.Clientset, *Controller, *patches) {
	t.Helper()
	kube := fake.NewClientset(objs...)
	tagger := taggerfake.NewClientset(appImage(ref1))
	p := &patches{n: map[string]int{}}
	kube.PrependReactor("patch", "*", func(a k8stesting.Action) (bool, runtime.Object, error) {
		p.mu.Lock()
		p.n[a.(k8stesting.PatchAction).GetName()]++
		p.mu.Unlock()
		return false, nil, nil
	})
	return kube, tagger, New(kube, tagger, 0), p
}

func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("not after 10s: %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func templateAnnotation(t *testing.T, c *Controller, name string) string {
	d, err := c.deployments.Deployments("ns").Get(name)
	if err != nil {
		t.Fatal(err)
	}
	return d.Spec.Template.Annotations[AnnotationKey("app")]
}

func TestImageChangedPatchesOncePerChange(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	_, _, c, p := setup(t,
		deployment("follows", "app", true),
		deployment("explicit", "tagger.dev/app", true),
		deployment("ignores", "app", false),
		deployment("other", "nginx:1.27", true),
		&appsv1.StatefulSet{ObjectMeta: metav1.ObjectMeta{Namespace: "ns", Name: "sts", Annotations: map[string]string{FollowAnnotation: "true"}},
			Spec: appsv1.StatefulSetSpec{Template: corev1.PodTemplateSpec{Spec: corev1.PodSpec{
				InitContainers: []corev1.Container{{Name: "i", Image: "app"}}}}}},
	)
	if err := c.Start(ctx); err != nil {
		t.Fatal(err)
	}
	n, err := c.ImageChanged(ctx, "ns", "app")
	if err != nil || n != 3 {
		t.Fatalf("ImageChanged = %d, %v; want 3 (follows, explicit, sts)", n, err)
	}
	eventually(t, "patched template in the cache", func() bool {
		s, err := c.statefulSets.StatefulSets("ns").Get("sts")
		return err == nil && s.Spec.Template.Annotations[AnnotationKey("app")] == ref1 &&
			templateAnnotation(t, c, "follows") == ref1 && templateAnnotation(t, c, "explicit") == ref1
	})
	// The same change again (a repeated event, a retry, a new leader): nothing.
	if n, err := c.ImageChanged(ctx, "ns", "app"); err != nil || n != 0 {
		t.Fatalf("second ImageChanged = %d, %v; want 0", n, err)
	}
	for name, want := range map[string]int{"follows": 1, "explicit": 1, "sts": 1, "ignores": 0, "other": 0} {
		if got := p.get(name); got != want {
			t.Errorf("%s: %d patches, want %d", name, got, want)
		}
	}
}

// run starts c and waits for its caches; the returned function stops it.
func run(t *testing.T, ctx context.Context, cancel context.CancelFunc, c *Controller) func() {
	t.Helper()
	done := make(chan struct{})
	go func() { _ = c.Run(ctx); close(done) }()
	eventually(t, "caches synced", func() bool {
		for _, s := range c.synced {
			if !s() {
				return false
			}
		}
		return true
	})
	return func() { cancel(); <-done }
}

func TestRunRollsOutOnCurrentChangeOnly(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	kube, tagger, c, p := setup(t, deployment("web", "app", true))
	defer run(t, ctx, cancel, c)()
	// Starting up is not a change: no rollout.
	time.Sleep(200 * time.Millisecond)
	if got := p.get("web"); got != 0 {
		t.Fatalf("%d patches at start", got)
	}

	images := tagger.TaggerV1beta1().Images("ns")
	update := func(mutate func(*taggerv1beta1.Image)) {
		img, err := images.Get(ctx, "app", metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		mutate(img)
		if _, err := images.Update(ctx, img, metav1.UpdateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	// An update that does not move the current generation: no rollout.
	update(func(img *taggerv1beta1.Image) { img.Spec.From = "registry.example.com/org/app:latest" })
	time.Sleep(200 * time.Millisecond)
	if got := p.get("web"); got != 0 {
		t.Fatalf("%d patches without a change", got)
	}

	// An import: one rollout.
	update(func(img *taggerv1beta1.Image) { img.Status.CurrentReference = ref2 })
	eventually(t, "rollout for ref2", func() bool { return p.get("web") == 1 })
	d, err := kube.AppsV1().Deployments("ns").Get(ctx, "web", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if got := d.Spec.Template.Annotations[AnnotationKey("app")]; got != ref2 {
		t.Errorf("template annotation %q, want %q", got, ref2)
	}
	if d.Annotations[FollowAnnotation] != "true" || d.Spec.Template.Spec.Containers[0].Image != "app" {
		t.Errorf("the patch changed more than the annotation: %+v", d)
	}
	time.Sleep(200 * time.Millisecond) // the patch's own update event must not roll out again
	if got := p.get("web"); got != 1 {
		t.Fatalf("%d patches for one change", got)
	}

	// A rollback: one more.
	update(func(img *taggerv1beta1.Image) { img.Spec.PinnedReference, img.Status.CurrentReference = ref1, ref1 })
	eventually(t, "rollout for the rollback", func() bool { return p.get("web") == 2 })
	time.Sleep(200 * time.Millisecond)
	if got := p.get("web"); got != 2 {
		t.Fatalf("%d patches for two changes", got)
	}
}

func TestCatchUp(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	behind := deployment("behind", "app", true)
	behind.Spec.Template.Annotations = map[string]string{AnnotationKey("app"): ref2} // rolled out for ref2; current is ref1
	upToDate := deployment("uptodate", "app", true)
	upToDate.Spec.Template.Annotations = map[string]string{AnnotationKey("app"): ref1}
	_, _, c, p := setup(t, behind, upToDate, deployment("never", "app", true))
	if err := c.Start(ctx); err != nil {
		t.Fatal(err)
	}
	for name, want := range map[string]int{"behind": 1, "uptodate": 0, "never": 0} {
		n, err := c.CatchUp(ctx, Deployment, "ns", name)
		if err != nil || n != want {
			t.Errorf("CatchUp(%s) = %d, %v; want %d", name, n, err, want)
		}
		if got := p.get(name); got != want {
			t.Errorf("%s: %d patches, want %d", name, got, want)
		}
	}
}

func TestAnnotationKey(t *testing.T) {
	if got := AnnotationKey("app"); got != "rollout.tagger.dev/app" {
		t.Errorf("got %s", got)
	}
	long := AnnotationKey(strings.Repeat("a", 100))
	if name := strings.TrimPrefix(long, RolloutAnnotationPrefix); len(name) > 63 || name == long {
		t.Errorf("long key %s", long)
	}
}

// An Image created with its first generation (an import or push into an
// Image that did not exist) rolls out the workloads already waiting for it.
func TestRunRollsOutNewImage(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	_, tagger, c, p := setup(t, deployment("waits", "fresh", true))
	defer run(t, ctx, cancel, c)()
	fresh := appImage(ref2)
	fresh.Name = "fresh"
	if _, err := tagger.TaggerV1beta1().Images("ns").Create(ctx, fresh, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	eventually(t, "rollout for the new Image", func() bool { return p.get("waits") == 1 })
	time.Sleep(200 * time.Millisecond)
	if got := p.get("waits"); got != 1 {
		t.Fatalf("%d patches for one new Image", got)
	}
}
