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

// Package cleanup removes what Tagger no longer needs:
//
//   - ImageImport records are owned by their Image (an ownerReference, set
//     here once the Image exists) and are deleted with it; at most
//     MaxFinishedImports finished records are kept per Image, the oldest
//     deleted first, never one that is Progressing.
//   - When a generation drops off an Image's history, the tag
//     tagger-sha256-<hex> that kept it in the mirror is removed, unless a
//     generation still in the history needs that digest, so that registry
//     garbage collection can reclaim it.
//   - Images with generations in the mirror carry the finalizer
//     tagger.FinalizerMirrorTags: deleting one removes its mirror tags
//     first. While the mirror cannot be reached the Image waits, with the
//     condition MirrorCleanup=False (MirrorUnreachable) saying why and how
//     to force the deletion (the annotation tagger.dev/skip-mirror-cleanup).
//
// Every replica runs the controller; all its writes are idempotent or
// conditional, and a tag already removed is not an error.
package cleanup

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sort"
	"strings"
	"sync"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/types"
	utilruntime "k8s.io/apimachinery/pkg/util/runtime"
	"k8s.io/apimachinery/pkg/util/sets"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/client-go/tools/cache"
	"k8s.io/client-go/util/workqueue"
	"k8s.io/klog/v2"

	"tagger.dev/tagger/pkg/apis/tagger/v1beta1"
	"tagger.dev/tagger/pkg/controller/imports"
	"tagger.dev/tagger/pkg/generated/clientset/versioned"
	taggerinformers "tagger.dev/tagger/pkg/generated/informers/externalversions/tagger/v1beta1"
	taggerlisters "tagger.dev/tagger/pkg/generated/listers/tagger/v1beta1"
	"tagger.dev/tagger/pkg/importer"
	"tagger.dev/tagger/pkg/metrics"
	"tagger.dev/tagger/pkg/redact"
)

// DefaultMaxFinishedImports is how many finished ImageImports are kept per
// Image unless configured otherwise.
const DefaultMaxFinishedImports = 100

// Mirrors tells where an Image's generations are mirrored.
type Mirrors interface {
	Mirror(ctx context.Context, namespace, name string) (*importer.Mirror, error)
}

// Registry lists and removes tags of a mirror repository
// (*importer.Importer implements it).
type Registry interface {
	MirrorTags(ctx context.Context, m *importer.Mirror) ([]string, error)
	MirrorTagDigest(ctx context.Context, m *importer.Mirror, tag string) (string, error)
	DeleteMirrorTag(ctx context.Context, m *importer.Mirror, tag, digest string) error
}

// Config is what the controller works with.
type Config struct {
	// Client writes Images and ImageImports (the loopback client).
	Client   versioned.Interface
	Mirrors  Mirrors
	Registry Registry
	// MaxFinishedImports bounds the finished ImageImports kept per Image;
	// 0 or less keeps them all.
	MaxFinishedImports int
	// ProgressingRetry is how long a tag removal waits while an import
	// into the Image runs (it may be recording that very digest again);
	// 0 means 2 seconds.
	ProgressingRetry time.Duration
}

// Controller enforces the cleanup rules.
type Controller struct {
	cfg Config

	images       taggerlisters.ImageLister
	imports      cache.Indexer
	importLister taggerlisters.ImageImportLister
	synced       []cache.InformerSynced
	queue        workqueue.TypedRateLimitingInterface[string]

	mu sync.Mutex
	// dropped holds, per Image key, the references that left its history
	// and whose mirror tags are still to be removed.
	dropped map[string]sets.Set[string]
	// gone holds the UIDs of Images deleted since, whose records go too.
	gone map[string]types.UID
}

// New returns a controller; Watch then Run start it.
func New(cfg Config) (*Controller, error) {
	if cfg.Client == nil || cfg.Mirrors == nil || cfg.Registry == nil {
		return nil, fmt.Errorf("the cleanup controller needs a client, mirrors and a registry")
	}
	if cfg.ProgressingRetry <= 0 {
		cfg.ProgressingRetry = 2 * time.Second
	}
	return &Controller{
		cfg: cfg,
		queue: workqueue.NewTypedRateLimitingQueueWithConfig(
			workqueue.NewTypedItemExponentialFailureRateLimiter[string](200*time.Millisecond, 5*time.Minute),
			workqueue.TypedRateLimitingQueueConfig[string]{Name: "tagger-cleanup"}),
		dropped: map[string]sets.Set[string]{},
		gone:    map[string]types.UID{},
	}, nil
}

// indexTarget indexes ImageImports by "<namespace>/<targetImage>".
const indexTarget = "target"

// Watch makes the controller follow the informers, which must not have
// started yet.
func (c *Controller) Watch(images taggerinformers.ImageInformer, records taggerinformers.ImageImportInformer) error {
	if err := records.Informer().AddIndexers(cache.Indexers{indexTarget: func(obj interface{}) ([]string, error) {
		ii, ok := obj.(*v1beta1.ImageImport)
		if !ok {
			return nil, nil
		}
		return []string{ii.Namespace + "/" + ii.Spec.TargetImage}, nil
	}}); err != nil {
		return err
	}
	if _, err := images.Informer().AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc:    c.enqueueImage,
		UpdateFunc: c.imageUpdated,
		DeleteFunc: c.imageDeleted,
	}); err != nil {
		return err
	}
	if _, err := records.Informer().AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc:    c.enqueueTarget,
		UpdateFunc: func(_, obj interface{}) { c.enqueueTarget(obj) },
	}); err != nil {
		return err
	}
	c.images = images.Lister()
	c.imports = records.Informer().GetIndexer()
	c.importLister = records.Lister()
	c.synced = []cache.InformerSynced{images.Informer().HasSynced, records.Informer().HasSynced}
	return nil
}

// Progressing counts the ImageImports that are running (for metrics).
func (c *Controller) Progressing() int {
	if c.importLister == nil {
		return 0
	}
	all, err := c.importLister.List(everything)
	if err != nil {
		return 0
	}
	n := 0
	for _, ii := range all {
		if imports.IsProgressing(ii.Status.Conditions) {
			n++
		}
	}
	return n
}

func (c *Controller) enqueueImage(obj interface{}) {
	if key, err := cache.MetaNamespaceKeyFunc(obj); err == nil {
		c.queue.Add(key)
	}
}

func (c *Controller) imageUpdated(oldObj, newObj interface{}) {
	old, ok1 := oldObj.(*v1beta1.Image)
	img, ok2 := newObj.(*v1beta1.Image)
	if !ok1 || !ok2 {
		return
	}
	key := img.Namespace + "/" + img.Name
	kept := sets.New[string]()
	for _, r := range img.Status.HashReferences {
		kept.Insert(r.ImageReference)
	}
	c.mu.Lock()
	for _, r := range old.Status.HashReferences {
		if !kept.Has(r.ImageReference) {
			if c.dropped[key] == nil {
				c.dropped[key] = sets.New[string]()
			}
			c.dropped[key].Insert(r.ImageReference)
		}
	}
	c.mu.Unlock()
	c.queue.Add(key)
}

func (c *Controller) imageDeleted(obj interface{}) {
	if t, ok := obj.(cache.DeletedFinalStateUnknown); ok {
		obj = t.Obj
	}
	img, ok := obj.(*v1beta1.Image)
	if !ok {
		return
	}
	key := img.Namespace + "/" + img.Name
	c.mu.Lock()
	c.gone[key] = img.UID
	delete(c.dropped, key)
	c.mu.Unlock()
	c.queue.Add(key)
}

func (c *Controller) enqueueTarget(obj interface{}) {
	if ii, ok := obj.(*v1beta1.ImageImport); ok && ii.Spec.TargetImage != "" {
		c.queue.Add(ii.Namespace + "/" + ii.Spec.TargetImage)
	}
}

// Run works until ctx ends.
func (c *Controller) Run(ctx context.Context, workers int) error {
	defer c.queue.ShutDown()
	if c.images == nil {
		return fmt.Errorf("the cleanup controller watches nothing: call Watch first")
	}
	if !cache.WaitForNamedCacheSync("tagger-cleanup", ctx.Done(), c.synced...) {
		return nil // stopped before it started
	}
	for range max(workers, 1) {
		go wait.UntilWithContext(ctx, func(ctx context.Context) {
			for c.processNext(ctx) {
			}
		}, time.Second)
	}
	<-ctx.Done()
	return nil
}

func (c *Controller) processNext(ctx context.Context) bool {
	key, quit := c.queue.Get()
	if quit {
		return false
	}
	defer c.queue.Done(key)
	after, err := c.sync(ctx, key)
	switch {
	case err != nil:
		utilruntime.HandleError(fmt.Errorf("cleanup of Image %s: %w", key, err))
		c.queue.AddRateLimited(key)
	case after > 0:
		c.queue.AddAfter(key, after)
	default:
		c.queue.Forget(key)
	}
	return true
}

// sync applies every rule to the Image key. It returns when to look again.
func (c *Controller) sync(ctx context.Context, key string) (time.Duration, error) {
	namespace, name, err := cache.SplitMetaNamespaceKey(key)
	if err != nil {
		return 0, err
	}
	img, err := c.images.Images(namespace).Get(name)
	if apierrors.IsNotFound(err) {
		return 0, c.deleteRecordsOf(ctx, key)
	}
	if err != nil {
		return 0, err
	}
	if img.DeletionTimestamp != nil {
		if !hasFinalizer(img) {
			return 0, nil
		}
		return c.finalize(ctx, img)
	}
	var errs []error
	if err := c.ownRecords(ctx, img); err != nil {
		errs = append(errs, err)
	}
	if err := c.keepFinished(ctx, img); err != nil {
		errs = append(errs, err)
	}
	m, mirrorErr := c.cfg.Mirrors.Mirror(ctx, namespace, name)
	if mirrorErr != nil {
		// No mirror: nothing of this Image is in one. Tags dropped
		// while one was configured cannot be reached any more.
		c.takeDropped(key)
		return 0, errors.Join(errs...)
	}
	if !hasFinalizer(img) && len(mirrorDigests(img, m)) > 0 {
		if err := c.addFinalizer(ctx, img); err != nil {
			errs = append(errs, err)
		}
	}
	after, err := c.removeDropped(ctx, key, img, m)
	if err != nil {
		errs = append(errs, err)
	}
	return after, errors.Join(errs...)
}

// deleteRecordsOf deletes the records owned by the Image key that was
// deleted (the cluster's garbage collector does the same from the
// ownerReferences; local mode has none).
func (c *Controller) deleteRecordsOf(ctx context.Context, key string) error {
	c.mu.Lock()
	uid, ok := c.gone[key]
	c.mu.Unlock()
	if !ok {
		return nil
	}
	objs, err := c.imports.ByIndex(indexTarget, key)
	if err != nil {
		return err
	}
	var errs []error
	for _, obj := range objs {
		ii := obj.(*v1beta1.ImageImport)
		if !ownedBy(ii, uid) {
			continue
		}
		if err := c.deleteRecord(ctx, ii); err != nil {
			errs = append(errs, err)
		}
	}
	if len(errs) == 0 {
		c.mu.Lock()
		if c.gone[key] == uid {
			delete(c.gone, key)
		}
		c.mu.Unlock()
	}
	return errors.Join(errs...)
}

func (c *Controller) deleteRecord(ctx context.Context, ii *v1beta1.ImageImport) error {
	err := c.cfg.Client.TaggerV1beta1().ImageImports(ii.Namespace).Delete(ctx, ii.Name,
		metav1.DeleteOptions{Preconditions: &metav1.Preconditions{UID: &ii.UID}})
	if apierrors.IsNotFound(err) || apierrors.IsConflict(err) {
		return nil // gone, or another record under this name
	}
	return err
}

// ownRecords makes the Image the owner of the records that target it.
func (c *Controller) ownRecords(ctx context.Context, img *v1beta1.Image) error {
	objs, err := c.imports.ByIndex(indexTarget, img.Namespace+"/"+img.Name)
	if err != nil {
		return err
	}
	var errs []error
	for _, obj := range objs {
		ii := obj.(*v1beta1.ImageImport)
		if ii.DeletionTimestamp != nil || hasImageOwner(ii) {
			continue
		}
		refs := append(append([]metav1.OwnerReference{}, ii.OwnerReferences...), metav1.OwnerReference{
			APIVersion: v1beta1.SchemeGroupVersion.String(),
			Kind:       "Image",
			Name:       img.Name,
			UID:        img.UID,
		})
		patch, err := jsonPatchOwners(ii.UID, refs)
		if err != nil {
			return err
		}
		_, err = c.cfg.Client.TaggerV1beta1().ImageImports(ii.Namespace).Patch(ctx, ii.Name, types.MergePatchType, patch, metav1.PatchOptions{})
		if err != nil && !apierrors.IsNotFound(err) && !apierrors.IsConflict(err) {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// keepFinished deletes the oldest finished records of the Image beyond
// MaxFinishedImports.
func (c *Controller) keepFinished(ctx context.Context, img *v1beta1.Image) error {
	limit := c.cfg.MaxFinishedImports
	if limit <= 0 {
		return nil
	}
	objs, err := c.imports.ByIndex(indexTarget, img.Namespace+"/"+img.Name)
	if err != nil {
		return err
	}
	var finished []*v1beta1.ImageImport
	for _, obj := range objs {
		ii := obj.(*v1beta1.ImageImport)
		if ii.DeletionTimestamp == nil && !imports.IsProgressing(ii.Status.Conditions) {
			finished = append(finished, ii)
		}
	}
	if len(finished) <= limit {
		return nil
	}
	sort.Slice(finished, func(i, j int) bool {
		a, b := finished[i], finished[j]
		if !a.CreationTimestamp.Equal(&b.CreationTimestamp) {
			return a.CreationTimestamp.Before(&b.CreationTimestamp)
		}
		return a.Name < b.Name
	})
	var errs []error
	for _, ii := range finished[:len(finished)-limit] {
		if err := c.deleteRecord(ctx, ii); err != nil {
			errs = append(errs, err)
			continue
		}
		metrics.RecordsDeleted.Inc()
	}
	if len(errs) == 0 {
		klog.FromContext(ctx).V(2).Info("Deleted oldest finished imports", "image", klog.KObj(img), "deleted", len(finished)-limit, "kept", limit)
	}
	return errors.Join(errs...)
}

func (c *Controller) addFinalizer(ctx context.Context, img *v1beta1.Image) error {
	img = img.DeepCopy()
	img.Finalizers = append(img.Finalizers, v1beta1.FinalizerMirrorTags)
	_, err := c.cfg.Client.TaggerV1beta1().Images(img.Namespace).Update(ctx, img, metav1.UpdateOptions{})
	if apierrors.IsConflict(err) || apierrors.IsNotFound(err) {
		c.enqueueImage(img) // its next version is on the way
		return nil
	}
	return err
}

// takeDropped returns and forgets the references dropped from the Image key.
func (c *Controller) takeDropped(key string) sets.Set[string] {
	c.mu.Lock()
	defer c.mu.Unlock()
	d := c.dropped[key]
	delete(c.dropped, key)
	return d
}

// removeDropped removes the mirror tags of the generations that left the
// history, unless one still in it has the same digest. While an import
// into the Image runs, it waits: that import may be recording one of them
// again.
func (c *Controller) removeDropped(ctx context.Context, key string, cached *v1beta1.Image, m *importer.Mirror) (time.Duration, error) {
	dropped := c.takeDropped(key)
	if dropped.Len() == 0 {
		return 0, nil
	}
	requeue := func(refs sets.Set[string]) {
		c.mu.Lock()
		if c.dropped[key] == nil {
			c.dropped[key] = sets.New[string]()
		}
		c.dropped[key] = c.dropped[key].Union(refs)
		c.mu.Unlock()
	}
	candidates := sets.New[string]()
	for ref := range dropped {
		if d, ok := strings.CutPrefix(ref, m.Repository+"@"); ok {
			candidates.Insert(d)
		}
	}
	if candidates.Len() == 0 {
		return 0, nil
	}
	if c.importRunning(cached) {
		requeue(dropped)
		return c.cfg.ProgressingRetry, nil
	}
	// The newest history, not the cache's.
	img, err := c.cfg.Client.TaggerV1beta1().Images(cached.Namespace).Get(ctx, cached.Name, metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		return 0, nil // the finalizer takes over
	}
	if err != nil {
		requeue(dropped)
		return 0, err
	}
	needed := mirrorDigests(img, m)
	var errs []error
	for _, d := range sets.List(candidates) {
		if needed.Has(d) {
			continue
		}
		if err := c.cfg.Registry.DeleteMirrorTag(ctx, m, importer.MirrorTag(d), d); err != nil {
			metrics.MirrorCleanupErrors.WithLabelValues(metrics.Host(m.Repository)).Inc()
			requeue(sets.New(m.Repository + "@" + d))
			errs = append(errs, err)
			continue
		}
		metrics.MirrorTagsRemoved.WithLabelValues(metrics.Host(m.Repository), "history").Inc()
		klog.FromContext(ctx).V(2).Info("Removed the mirror tag of a generation that left the history", "image", klog.KObj(img), "tag", m.Repository+":"+importer.MirrorTag(d))
	}
	return 0, errors.Join(errs...)
}

// importRunning reports whether an import into img is Progressing.
func (c *Controller) importRunning(img *v1beta1.Image) bool {
	objs, err := c.imports.ByIndex(indexTarget, img.Namespace+"/"+img.Name)
	if err != nil {
		return true
	}
	for _, obj := range objs {
		if imports.IsProgressing(obj.(*v1beta1.ImageImport).Status.Conditions) {
			return true
		}
	}
	return false
}

// finalize removes the mirror tags of an Image being deleted, then its
// finalizer. Tags removed: every tagger-sha256-<hex> tag of its mirror
// repository (the repository is the Image's alone), and any other tag that
// names one of its generations.
func (c *Controller) finalize(ctx context.Context, img *v1beta1.Image) (time.Duration, error) {
	logger := klog.FromContext(ctx).WithValues("image", klog.KObj(img))
	if img.Annotations[v1beta1.AnnotationSkipMirrorCleanup] == "true" {
		logger.Info("Deleting Image without removing its mirror tags, as its annotation asks", "annotation", v1beta1.AnnotationSkipMirrorCleanup)
		return 0, c.removeFinalizer(ctx, img)
	}
	m, err := c.cfg.Mirrors.Mirror(ctx, img.Namespace, img.Name)
	if err != nil {
		logger.Info("No mirror configured any more; deleting the Image without removing mirror tags", "err", err)
		return 0, c.removeFinalizer(ctx, img)
	}
	if err := c.removeMirrorTags(ctx, img, m); err != nil {
		metrics.MirrorCleanupErrors.WithLabelValues(metrics.Host(m.Repository)).Inc()
		msg := redact.Message(fmt.Sprintf("removing the tags of %s from the mirror failed (retrying): %s; to delete the Image and leave them: kubectl annotate image %s %s=true",
			m.Repository, importer.Reason(err), img.Name, v1beta1.AnnotationSkipMirrorCleanup))
		if serr := c.setCleanupCondition(ctx, img, msg); serr != nil {
			return 0, errors.Join(err, serr)
		}
		return 0, err
	}
	logger.V(2).Info("Removed the mirror tags of a deleted Image", "repository", m.Repository)
	return 0, c.removeFinalizer(ctx, img)
}

func (c *Controller) removeMirrorTags(ctx context.Context, img *v1beta1.Image, m *importer.Mirror) error {
	tags, err := c.cfg.Registry.MirrorTags(ctx, m)
	if err != nil {
		return err
	}
	history := mirrorDigests(img, m)
	for _, tag := range tags {
		var dgst string
		if hex, ok := strings.CutPrefix(tag, importer.MirrorTagPrefix); ok {
			dgst = "sha256:" + hex
		} else {
			if history.Len() == 0 {
				continue
			}
			if dgst, err = c.cfg.Registry.MirrorTagDigest(ctx, m, tag); err != nil {
				return err
			}
			if !history.Has(dgst) {
				continue // not Tagger's
			}
		}
		if err := c.cfg.Registry.DeleteMirrorTag(ctx, m, tag, dgst); err != nil {
			return err
		}
		metrics.MirrorTagsRemoved.WithLabelValues(metrics.Host(m.Repository), "deleted").Inc()
	}
	return nil
}

func (c *Controller) setCleanupCondition(ctx context.Context, img *v1beta1.Image, msg string) error {
	img = img.DeepCopy()
	if !meta.SetStatusCondition(&img.Status.Conditions, metav1.Condition{
		Type:               v1beta1.ConditionMirrorCleanup,
		Status:             metav1.ConditionFalse,
		Reason:             v1beta1.ReasonMirrorUnreachable,
		Message:            msg,
		ObservedGeneration: img.Generation,
	}) {
		return nil
	}
	_, err := c.cfg.Client.TaggerV1beta1().Images(img.Namespace).UpdateStatus(ctx, img, metav1.UpdateOptions{})
	if apierrors.IsNotFound(err) || apierrors.IsConflict(err) {
		return nil
	}
	return err
}

func (c *Controller) removeFinalizer(ctx context.Context, img *v1beta1.Image) error {
	img = img.DeepCopy()
	var keep []string
	for _, f := range img.Finalizers {
		if f != v1beta1.FinalizerMirrorTags {
			keep = append(keep, f)
		}
	}
	img.Finalizers = keep
	_, err := c.cfg.Client.TaggerV1beta1().Images(img.Namespace).Update(ctx, img, metav1.UpdateOptions{})
	if apierrors.IsNotFound(err) {
		return nil
	}
	return err // a conflict is retried
}

// mirrorDigests returns the digests of img's generations in m's repository.
func mirrorDigests(img *v1beta1.Image, m *importer.Mirror) sets.Set[string] {
	out := sets.New[string]()
	for _, r := range img.Status.HashReferences {
		if d, ok := strings.CutPrefix(r.ImageReference, m.Repository+"@"); ok {
			out.Insert(d)
		}
	}
	return out
}

func hasFinalizer(img *v1beta1.Image) bool {
	for _, f := range img.Finalizers {
		if f == v1beta1.FinalizerMirrorTags {
			return true
		}
	}
	return false
}

func hasImageOwner(ii *v1beta1.ImageImport) bool {
	for _, o := range ii.OwnerReferences {
		if o.Kind == "Image" && strings.HasPrefix(o.APIVersion, v1beta1.GroupName+"/") {
			return true
		}
	}
	return false
}

func ownedBy(ii *v1beta1.ImageImport, uid types.UID) bool {
	for _, o := range ii.OwnerReferences {
		if o.UID == uid {
			return true
		}
	}
	return false
}

// everything selects all objects.
var everything = labels.Everything()

// jsonPatchOwners is a merge patch setting the record's ownerReferences,
// conditional on its UID.
func jsonPatchOwners(uid types.UID, refs []metav1.OwnerReference) ([]byte, error) {
	return json.Marshal(map[string]any{"metadata": map[string]any{"uid": uid, "ownerReferences": refs}})
}
