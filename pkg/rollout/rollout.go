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

// Package rollout restarts the Deployments, StatefulSets and DaemonSets that
// follow Images (annotated tagger.dev/follow: "true") when the current
// generation of an Image their pods use changes, the way "kubectl rollout
// restart" does: by changing an annotation of the pod template.
//
// The template annotation rollout.tagger.dev/<image> records the reference a
// workload was last rolled out for, so a change is rolled out once: a second
// event, a retry or another Tagger replica finds the annotation already set
// and patches nothing. Only one replica runs the controller at a time
// (leader election on a Lease, see RunWithLeaderElection).
package rollout

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/types"
	utilruntime "k8s.io/apimachinery/pkg/util/runtime"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	appslisters "k8s.io/client-go/listers/apps/v1"
	"k8s.io/client-go/tools/cache"
	"k8s.io/client-go/util/workqueue"
	"k8s.io/klog/v2"

	taggerv1beta1 "tagger.dev/tagger/pkg/apis/tagger/v1beta1"
	"tagger.dev/tagger/pkg/generated/clientset/versioned"
	taggerinformers "tagger.dev/tagger/pkg/generated/informers/externalversions"
	taggerlisters "tagger.dev/tagger/pkg/generated/listers/tagger/v1beta1"
	"tagger.dev/tagger/pkg/metrics"
	"tagger.dev/tagger/pkg/webhook/podimages"
)

const (
	// FollowAnnotation on a Deployment, StatefulSet or DaemonSet opts it in.
	FollowAnnotation = "tagger.dev/follow"
	// RolloutAnnotationPrefix prefixes the pod template annotation that
	// records, per Image, the reference last rolled out.
	RolloutAnnotationPrefix = "rollout.tagger.dev/"
)

// Kinds of workloads that can follow Images.
const (
	Deployment  = "Deployment"
	StatefulSet = "StatefulSet"
	DaemonSet   = "DaemonSet"
)

// AnnotationKey returns the template annotation for the Image name: the name
// itself when it fits an annotation name (63 characters), else a hash of it.
func AnnotationKey(image string) string {
	if len(image) <= 63 {
		return RolloutAnnotationPrefix + image
	}
	sum := sha256.Sum256([]byte(image))
	return RolloutAnnotationPrefix + "sha256-" + hex.EncodeToString(sum[:])[:48]
}

// Workload is the part of a Deployment, StatefulSet or DaemonSet the
// controller reads.
type Workload struct {
	Kind        string
	Namespace   string
	Name        string
	Annotations map[string]string
	Template    *corev1.PodTemplateSpec
}

// Follows tells whether w opted in.
func (w Workload) Follows() bool { return w.Annotations[FollowAnnotation] == "true" }

// Uses tells whether the pods of w name the Image, as the webhook reads
// image fields (podimages.Target).
func (w Workload) Uses(image string) bool {
	for _, cs := range [][]corev1.Container{w.Template.Spec.InitContainers, w.Template.Spec.Containers} {
		for _, c := range cs {
			if name, _, ok, _ := podimages.Target(c.Image); ok && name == image {
				return true
			}
		}
	}
	return false
}

// Controller rolls out following workloads.
type Controller struct {
	kube         kubernetes.Interface
	images       taggerlisters.ImageLister
	deployments  appslisters.DeploymentLister
	statefulSets appslisters.StatefulSetLister
	daemonSets   appslisters.DaemonSetLister

	kubeInformers   informers.SharedInformerFactory
	taggerInformers taggerinformers.SharedInformerFactory
	synced          []cache.InformerSynced
	queue           workqueue.TypedRateLimitingInterface[key]
}

// key is a queue item: an Image whose current generation changed, or a
// workload to catch up.
type key struct {
	kind      string // "Image", or a workload kind
	namespace string
	name      string
}

// New builds a controller on informers of its own.
func New(kube kubernetes.Interface, tagger versioned.Interface, resync time.Duration) *Controller {
	kf := informers.NewSharedInformerFactory(kube, resync)
	tf := taggerinformers.NewSharedInformerFactory(tagger, resync)
	c := &Controller{
		kube:            kube,
		kubeInformers:   kf,
		taggerInformers: tf,
		queue: workqueue.NewTypedRateLimitingQueueWithConfig(workqueue.DefaultTypedControllerRateLimiter[key](),
			workqueue.TypedRateLimitingQueueConfig[key]{Name: "tagger-rollout"}),
	}
	imgs := tf.Tagger().V1beta1().Images()
	c.images = imgs.Lister()
	_, _ = imgs.Informer().AddEventHandler(cache.ResourceEventHandlerDetailedFuncs{
		// An Image created by the import or push of its first generation
		// has a current reference from its first write. Those listed at
		// start are not a change.
		AddFunc: func(obj any, initialList bool) {
			if n, ok := obj.(*taggerv1beta1.Image); ok && !initialList && n.Status.CurrentReference != "" {
				c.queue.Add(key{kind: "Image", namespace: n.Namespace, name: n.Name})
			}
		},
		UpdateFunc: func(oldObj, newObj any) {
			o, ok1 := oldObj.(*taggerv1beta1.Image)
			n, ok2 := newObj.(*taggerv1beta1.Image)
			if ok1 && ok2 && n.Status.CurrentReference != "" && o.Status.CurrentReference != n.Status.CurrentReference {
				c.queue.Add(key{kind: "Image", namespace: n.Namespace, name: n.Name})
			}
		},
	})
	workloadHandler := func(kind string) cache.ResourceEventHandler {
		enqueue := func(obj any) {
			if m, err := metaOf(obj); err == nil && m.GetAnnotations()[FollowAnnotation] == "true" {
				c.queue.Add(key{kind: kind, namespace: m.GetNamespace(), name: m.GetName()})
			}
		}
		return cache.ResourceEventHandlerFuncs{AddFunc: enqueue, UpdateFunc: func(_, n any) { enqueue(n) }}
	}
	apps := kf.Apps().V1()
	c.deployments = apps.Deployments().Lister()
	c.statefulSets = apps.StatefulSets().Lister()
	c.daemonSets = apps.DaemonSets().Lister()
	_, _ = apps.Deployments().Informer().AddEventHandler(workloadHandler(Deployment))
	_, _ = apps.StatefulSets().Informer().AddEventHandler(workloadHandler(StatefulSet))
	_, _ = apps.DaemonSets().Informer().AddEventHandler(workloadHandler(DaemonSet))
	c.synced = []cache.InformerSynced{imgs.Informer().HasSynced, apps.Deployments().Informer().HasSynced,
		apps.StatefulSets().Informer().HasSynced, apps.DaemonSets().Informer().HasSynced}
	return c
}

func metaOf(obj any) (metav1.Object, error) {
	if t, ok := obj.(cache.DeletedFinalStateUnknown); ok {
		obj = t.Obj
	}
	m, ok := obj.(metav1.Object)
	if !ok {
		return nil, fmt.Errorf("not an object: %T", obj)
	}
	return m, nil
}

// Start starts the informers and waits for their caches.
func (c *Controller) Start(ctx context.Context) error {
	c.kubeInformers.Start(ctx.Done())
	c.taggerInformers.Start(ctx.Done())
	if !cache.WaitForCacheSync(ctx.Done(), c.synced...) {
		return fmt.Errorf("rollout: caches did not sync")
	}
	return nil
}

// Run starts the informers and works the queue until ctx ends.
func (c *Controller) Run(ctx context.Context) error {
	defer utilruntime.HandleCrash()
	defer c.queue.ShutDown()
	if err := c.Start(ctx); err != nil {
		return err
	}
	klog.InfoS("Rollout controller started")
	go wait.UntilWithContext(ctx, func(ctx context.Context) {
		for c.processNext(ctx) {
		}
	}, time.Second)
	<-ctx.Done()
	c.kubeInformers.Shutdown()
	c.taggerInformers.Shutdown()
	return nil
}

func (c *Controller) processNext(ctx context.Context) bool {
	k, quit := c.queue.Get()
	if quit {
		return false
	}
	defer c.queue.Done(k)
	var err error
	if k.kind == "Image" {
		_, err = c.ImageChanged(ctx, k.namespace, k.name)
	} else {
		_, err = c.CatchUp(ctx, k.kind, k.namespace, k.name)
	}
	if err != nil {
		klog.ErrorS(err, "Rollout failed, retrying", "kind", k.kind, "object", klog.KRef(k.namespace, k.name))
		c.queue.AddRateLimited(k)
		return true
	}
	c.queue.Forget(k)
	return true
}

// workloads lists the following workloads of a namespace.
func (c *Controller) workloads(namespace string) ([]Workload, error) {
	var out []Workload
	ds, err := c.deployments.Deployments(namespace).List(labels.Everything())
	if err != nil {
		return nil, err
	}
	for _, d := range ds {
		out = append(out, Workload{Deployment, d.Namespace, d.Name, d.Annotations, &d.Spec.Template})
	}
	ss, err := c.statefulSets.StatefulSets(namespace).List(labels.Everything())
	if err != nil {
		return nil, err
	}
	for _, s := range ss {
		out = append(out, Workload{StatefulSet, s.Namespace, s.Name, s.Annotations, &s.Spec.Template})
	}
	dss, err := c.daemonSets.DaemonSets(namespace).List(labels.Everything())
	if err != nil {
		return nil, err
	}
	for _, d := range dss {
		out = append(out, Workload{DaemonSet, d.Namespace, d.Name, d.Annotations, &d.Spec.Template})
	}
	following := out[:0]
	for _, w := range out {
		if w.Follows() {
			following = append(following, w)
		}
	}
	return following, nil
}

func (c *Controller) workload(kind, namespace, name string) (*Workload, error) {
	var (
		annotations map[string]string
		template    *corev1.PodTemplateSpec
	)
	switch kind {
	case Deployment:
		d, err := c.deployments.Deployments(namespace).Get(name)
		if err != nil {
			return nil, err
		}
		annotations, template = d.Annotations, &d.Spec.Template
	case StatefulSet:
		s, err := c.statefulSets.StatefulSets(namespace).Get(name)
		if err != nil {
			return nil, err
		}
		annotations, template = s.Annotations, &s.Spec.Template
	case DaemonSet:
		d, err := c.daemonSets.DaemonSets(namespace).Get(name)
		if err != nil {
			return nil, err
		}
		annotations, template = d.Annotations, &d.Spec.Template
	default:
		return nil, fmt.Errorf("unknown kind %q", kind)
	}
	return &Workload{kind, namespace, name, annotations, template}, nil
}

// ImageChanged rolls out every following workload of the namespace that uses
// the Image and was not yet rolled out for its current reference. It returns
// how many it patched.
func (c *Controller) ImageChanged(ctx context.Context, namespace, name string) (int, error) {
	img, err := c.images.Images(namespace).Get(name)
	if apierrors.IsNotFound(err) {
		return 0, nil
	}
	if err != nil {
		return 0, err
	}
	current := img.Status.CurrentReference
	if current == "" {
		return 0, nil
	}
	ws, err := c.workloads(namespace)
	if err != nil {
		return 0, err
	}
	n := 0
	var errs []error
	for _, w := range ws {
		if !w.Uses(name) || w.Template.Annotations[AnnotationKey(name)] == current {
			continue
		}
		if err := c.patch(ctx, w, name, current); err != nil {
			errs = append(errs, err)
			continue
		}
		n++
	}
	if len(errs) > 0 {
		return n, fmt.Errorf("%d of the workloads using Image %s/%s: %v", len(errs), namespace, name, errs)
	}
	return n, nil
}

// CatchUp rolls out one workload for the Images it was rolled out for before
// and whose current reference moved since (a change made while no Tagger
// replica led). A workload never rolled out for an Image is left alone: its
// pods were resolved when they were created.
func (c *Controller) CatchUp(ctx context.Context, kind, namespace, name string) (int, error) {
	w, err := c.workload(kind, namespace, name)
	if apierrors.IsNotFound(err) {
		return 0, nil
	}
	if err != nil || !w.Follows() {
		return 0, err
	}
	n := 0
	// What this pass patched; the template itself belongs to the informer cache.
	recordedNow := map[string]string{}
	for _, cs := range [][]corev1.Container{w.Template.Spec.InitContainers, w.Template.Spec.Containers} {
		for _, ctr := range cs {
			image, _, ok, _ := podimages.Target(ctr.Image)
			if !ok {
				continue
			}
			recorded, has := w.Template.Annotations[AnnotationKey(image)]
			if patched, again := recordedNow[image]; again {
				recorded = patched
			}
			if !has {
				continue
			}
			img, err := c.images.Images(namespace).Get(image)
			if apierrors.IsNotFound(err) {
				continue
			}
			if err != nil {
				return n, err
			}
			current := img.Status.CurrentReference
			if current == "" || current == recorded {
				continue
			}
			if err := c.patch(ctx, *w, image, current); err != nil {
				return n, err
			}
			recordedNow[image] = current // a second container of the same Image needs no second patch
			n++
		}
	}
	return n, nil
}

// patch sets the template annotation of one Image, which restarts the pods.
func (c *Controller) patch(ctx context.Context, w Workload, image, current string) error {
	body, err := json.Marshal(map[string]any{"spec": map[string]any{"template": map[string]any{
		"metadata": map[string]any{"annotations": map[string]string{AnnotationKey(image): current}}}}})
	if err != nil {
		return err
	}
	opts := metav1.PatchOptions{FieldManager: "tagger-rollout"}
	switch w.Kind {
	case Deployment:
		_, err = c.kube.AppsV1().Deployments(w.Namespace).Patch(ctx, w.Name, types.MergePatchType, body, opts)
	case StatefulSet:
		_, err = c.kube.AppsV1().StatefulSets(w.Namespace).Patch(ctx, w.Name, types.MergePatchType, body, opts)
	case DaemonSet:
		_, err = c.kube.AppsV1().DaemonSets(w.Namespace).Patch(ctx, w.Name, types.MergePatchType, body, opts)
	}
	if err != nil {
		metrics.RolloutPatches.WithLabelValues(w.Kind, metrics.ResultError).Inc()
		return fmt.Errorf("%s %s/%s: %w", w.Kind, w.Namespace, w.Name, err)
	}
	metrics.RolloutPatches.WithLabelValues(w.Kind, metrics.ResultSuccess).Inc()
	klog.InfoS("Rolled out for a new current generation", "kind", w.Kind, "object", klog.KRef(w.Namespace, w.Name), "image", image, "reference", current)
	return nil
}
