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

// Package refresh keeps Images current by themselves: it checks the source
// of every scheduled Image on its interval, and of the Images a registry
// webhook names at once, and starts an import when the tag moved.
//
// A check only resolves (a manifest HEAD through the importer, with the
// namespace's credentials and the source policy, as an import does; with a
// tag policy, the tag list first). When the tag resolves to the digest the
// Image last recorded from it, the check writes only status.lastCheckedAt
// (and the Checked condition when it changes). When it moved, the check
// creates an ImageImport through the imageimport storage's reserve-then-run
// path (StartImport), labelled tagger.dev/import-trigger, and the import
// controller runs it like any other: generation, event, mirror copy.
//
// One check per interval, across restarts and replicas: the schedule is
// derived from status.lastCheckedAt, and a replica claims a check by
// writing lastCheckedAt conditionally on the resourceVersion it decided on;
// the replica that loses sees a conflict and a fresh lastCheckedAt.
package refresh

import (
	"context"
	"errors"
	"fmt"
	"hash/fnv"
	"strings"
	"sync"
	"time"

	"go.podman.io/image/v5/docker/reference"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	utilruntime "k8s.io/apimachinery/pkg/util/runtime"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/client-go/tools/cache"
	"k8s.io/client-go/util/workqueue"
	"k8s.io/klog/v2"
	"k8s.io/utils/clock"

	"tagger.dev/tagger/pkg/apis/tagger"
	taggerv1beta1 "tagger.dev/tagger/pkg/apis/tagger/v1beta1"
	"tagger.dev/tagger/pkg/controller/imports"
	taggerinformers "tagger.dev/tagger/pkg/generated/informers/externalversions/tagger/v1beta1"
	taggerlisters "tagger.dev/tagger/pkg/generated/listers/tagger/v1beta1"
	"tagger.dev/tagger/pkg/importer"
	"tagger.dev/tagger/pkg/metrics"
	"tagger.dev/tagger/pkg/redact"
	"tagger.dev/tagger/pkg/tagpolicy"
)

// Images is what checks need of Image storage.
type Images interface {
	// UpdateStatus applies mutate to the newest stored Image and writes
	// its status; an error from mutate aborts the write and is returned.
	UpdateStatus(ctx context.Context, namespace, name string, mutate func(*tagger.Image) error) (*tagger.Image, error)
}

// Imports starts the imports checks decide on.
type Imports interface {
	// StartImport reserves the record of ii and hands it to the import
	// controller, as a create of an ImageImport does.
	StartImport(ctx context.Context, ii *tagger.ImageImport) (*tagger.ImageImport, error)
}

// Credentials gives a check the namespace's credentials for a source.
type Credentials interface {
	Credentials(namespace, from string) ([]importer.Credential, error)
}

// Config is what a Controller needs.
type Config struct {
	// Resolver resolves sources; requests never carry a mirror.
	Resolver importer.Interface
	// Tags lists tags for tag policies; nil means Resolver, when it can.
	Tags        tagpolicy.Lister
	Credentials Credentials
	Images      Images
	Imports     Imports
	Clock       clock.WithTicker
	// MinInterval is the shortest interval between two scheduled checks
	// of an Image (--min-import-interval), whatever its spec says.
	MinInterval time.Duration
	// PerRegistry bounds the checks running at once against one registry
	// host; 0 means DefaultPerRegistry.
	PerRegistry int
	// Workers is how many checks run at once in all; 0 means
	// DefaultWorkers.
	Workers int
	// CheckTimeout bounds one check; 0 means a minute.
	CheckTimeout time.Duration
}

const (
	// DefaultPerRegistry is how many checks run at once against one
	// registry by default.
	DefaultPerRegistry = 4
	// DefaultWorkers is how many checks run at once by default.
	DefaultWorkers = 16
	// MaxBackoffFactor bounds the back-off of failing checks: at most this
	// many intervals between two checks (and at most a day, unless the
	// interval is longer).
	MaxBackoffFactor = 16
	// JitterFraction is the largest jitter added to an interval.
	JitterFraction = 0.1
)

// key is a unit of work: an Image to check, or (Import set) the outcome of
// an import a check started, to report on the Image.
type key struct {
	Namespace, Name string
	Import          string
}

// trigger is a pending request to check an Image at once.
type trigger struct {
	kind   string // tagger.TriggerWebhook
	detail string
}

// Controller checks Images.
type Controller struct {
	cfg Config

	images  taggerlisters.ImageLister
	indexer cache.Indexer
	records taggerlisters.ImageImportLister
	byImage cache.Indexer
	synced  []cache.InformerSynced
	queue   workqueue.TypedRateLimitingInterface[key]

	mu       sync.Mutex
	triggers map[key]trigger
	running  map[string]int // registry host -> checks running
}

// New returns a Controller; Watch and Run start it.
func New(cfg Config) (*Controller, error) {
	if cfg.Resolver == nil || cfg.Credentials == nil || cfg.Images == nil || cfg.Imports == nil {
		return nil, errors.New("checks need a resolver, credentials, images and imports")
	}
	if cfg.Tags == nil {
		cfg.Tags, _ = cfg.Resolver.(tagpolicy.Lister)
	}
	if cfg.Clock == nil {
		cfg.Clock = clock.RealClock{}
	}
	if cfg.PerRegistry <= 0 {
		cfg.PerRegistry = DefaultPerRegistry
	}
	if cfg.Workers <= 0 {
		cfg.Workers = DefaultWorkers
	}
	if cfg.CheckTimeout <= 0 {
		cfg.CheckTimeout = time.Minute
	}
	return &Controller{
		cfg: cfg,
		queue: workqueue.NewTypedRateLimitingQueueWithConfig(
			workqueue.NewTypedItemExponentialFailureRateLimiter[key](time.Second, 5*time.Minute),
			workqueue.TypedRateLimitingQueueConfig[key]{Name: "image-checks", Clock: cfg.Clock}),
		triggers: map[key]trigger{},
		running:  map[string]int{},
	}, nil
}

// Index names of the informer indexers Watch adds.
const (
	indexRepository = "tagger.dev/repository" // "<namespace>/<repository>" of spec.from
	indexTarget     = "tagger.dev/target"     // "<namespace>/<targetImage>" of an ImageImport
)

// Watch makes the controller follow Images and the ImageImports it starts.
// It must be called before the informers start.
func (c *Controller) Watch(images taggerinformers.ImageInformer, records taggerinformers.ImageImportInformer) error {
	ii := images.Informer()
	if err := ii.AddIndexers(cache.Indexers{indexRepository: repositoryIndex}); err != nil {
		return err
	}
	if _, err := ii.AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc:    c.enqueueImage,
		UpdateFunc: func(_, obj interface{}) { c.enqueueImage(obj) },
	}); err != nil {
		return err
	}
	ri := records.Informer()
	if err := ri.AddIndexers(cache.Indexers{indexTarget: targetIndex}); err != nil {
		return err
	}
	if _, err := ri.AddEventHandler(cache.ResourceEventHandlerFuncs{
		UpdateFunc: c.importUpdated,
	}); err != nil {
		return err
	}
	c.images, c.indexer = images.Lister(), ii.GetIndexer()
	c.records, c.byImage = records.Lister(), ri.GetIndexer()
	c.synced = []cache.InformerSynced{ii.HasSynced, ri.HasSynced}
	return nil
}

func repositoryIndex(obj interface{}) ([]string, error) {
	img, ok := obj.(*taggerv1beta1.Image)
	if !ok {
		return nil, nil
	}
	named, err := reference.ParseNormalizedNamed(img.Spec.From)
	if err != nil {
		return nil, nil
	}
	return []string{img.Namespace + "/" + named.Name()}, nil
}

func targetIndex(obj interface{}) ([]string, error) {
	ii, ok := obj.(*taggerv1beta1.ImageImport)
	if !ok {
		return nil, nil
	}
	return []string{ii.Namespace + "/" + ii.Spec.TargetImage}, nil
}

func (c *Controller) enqueueImage(obj interface{}) {
	img, ok := obj.(*taggerv1beta1.Image)
	if !ok {
		return
	}
	k := key{Namespace: img.Namespace, Name: img.Name}
	c.mu.Lock()
	_, triggered := c.triggers[k]
	c.mu.Unlock()
	if triggered || scheduled(&img.Spec) {
		c.queue.Add(k)
	}
}

// importUpdated reports on the Image the outcome of an import a check
// started.
func (c *Controller) importUpdated(oldObj, obj interface{}) {
	old, ok1 := oldObj.(*taggerv1beta1.ImageImport)
	ii, ok2 := obj.(*taggerv1beta1.ImageImport)
	if !ok1 || !ok2 || ii.Labels[tagger.LabelImportTrigger] == "" {
		return
	}
	if done(old.Status.Conditions) || !done(ii.Status.Conditions) {
		return
	}
	c.queue.Add(key{Namespace: ii.Namespace, Name: ii.Spec.TargetImage, Import: ii.Name})
}

// done tells whether an import has its outcome.
func done(conds []metav1.Condition) bool {
	c := meta.FindStatusCondition(conds, tagger.ConditionImported)
	return c != nil && (c.Status == metav1.ConditionTrue || c.Reason == tagger.ReasonNoMoreAttempts)
}

func scheduled(spec *taggerv1beta1.ImageSpec) bool {
	return spec.ImportPolicy != nil && spec.ImportPolicy.Scheduled
}

// Run checks until ctx ends.
func (c *Controller) Run(ctx context.Context) error {
	defer c.queue.ShutDown()
	if c.images == nil {
		return errors.New("the check controller watches nothing: call Watch first")
	}
	if !cache.WaitForNamedCacheSync("image-checks", ctx.Done(), c.synced...) {
		return ctx.Err()
	}
	for range c.cfg.Workers {
		go wait.UntilWithContext(ctx, func(ctx context.Context) {
			for c.processNext(ctx) {
			}
		}, time.Second)
	}
	<-ctx.Done()
	return nil
}

func (c *Controller) processNext(ctx context.Context) bool {
	k, quit := c.queue.Get()
	if quit {
		return false
	}
	defer c.queue.Done(k)
	var err error
	if k.Import != "" {
		err = c.reportOutcome(ctx, k)
	} else {
		err = c.sync(ctx, k)
	}
	if err != nil {
		utilruntime.HandleError(fmt.Errorf("checking image %s/%s: %w", k.Namespace, k.Name, err))
		c.queue.AddRateLimited(k)
		return true
	}
	c.queue.Forget(k)
	return true
}

// Trigger asks for a check of the Image namespace/name at once, whatever
// its schedule; detail says why, for the record an import would leave.
func (c *Controller) Trigger(namespace, name, detail string) {
	k := key{Namespace: namespace, Name: name}
	c.mu.Lock()
	c.triggers[k] = trigger{kind: tagger.TriggerWebhook, detail: detail}
	c.mu.Unlock()
	c.queue.Add(k)
}

// sync checks one Image if it is due (or triggered), else schedules it.
func (c *Controller) sync(ctx context.Context, k key) error {
	img, err := c.images.Images(k.Namespace).Get(k.Name)
	if apierrors.IsNotFound(err) {
		c.mu.Lock()
		delete(c.triggers, k)
		c.mu.Unlock()
		return nil
	}
	if err != nil {
		return err
	}
	c.mu.Lock()
	trig, triggered := c.triggers[k]
	c.mu.Unlock()
	if !triggered && !scheduled(&img.Spec) {
		return nil
	}
	now := c.cfg.Clock.Now()
	if !triggered {
		if due := c.Due(img); now.Before(due) {
			c.queue.AddAfter(k, due.Sub(now))
			return nil
		}
	}
	host := registryHost(img.Spec.From)
	if !c.acquire(host) {
		// The registry has its share of checks running: come back soon.
		c.queue.AddAfter(k, jitter(k, now, 200*time.Millisecond, time.Second))
		return nil
	}
	defer c.release(host)
	if triggered {
		c.mu.Lock()
		delete(c.triggers, k)
		c.mu.Unlock()
	} else {
		trig = trigger{kind: tagger.TriggerScheduled}
	}
	if requeue := c.check(ctx, img, trig); requeue {
		if triggered {
			c.mu.Lock()
			if _, again := c.triggers[k]; !again {
				c.triggers[k] = trig
			}
			c.mu.Unlock()
		}
		c.queue.AddAfter(k, jitter(k, now, 100*time.Millisecond, 500*time.Millisecond))
	}
	return nil
}

// acquire takes one of the checks host may have running, if one is free.
func (c *Controller) acquire(host string) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.running[host] >= c.cfg.PerRegistry {
		return false
	}
	c.running[host]++
	return true
}

func (c *Controller) release(host string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.running[host]--; c.running[host] <= 0 {
		delete(c.running, host)
	}
}

// registryHost is the registry a source is checked against.
func registryHost(from string) string {
	named, err := reference.ParseNormalizedNamed(from)
	if err != nil {
		return ""
	}
	return reference.Domain(named)
}

// Interval is the time between two scheduled checks of img: its spec's,
// at least the minimum.
func (c *Controller) Interval(img *taggerv1beta1.Image) time.Duration {
	d := tagger.DefaultImportInterval
	if p := img.Spec.ImportPolicy; p != nil && p.Interval != nil && p.Interval.Duration > 0 {
		d = p.Interval.Duration
	}
	return max(d, c.cfg.MinInterval)
}

// Due is when img's next scheduled check is due: at once when it was never
// checked under its current spec; else an interval after the last check,
// plus a jitter of up to a tenth of the interval (the same on every
// replica); while checks fail, the delay doubles from one interval up to
// MaxBackoffFactor intervals (at most a day, unless the interval is
// longer).
func (c *Controller) Due(img *taggerv1beta1.Image) time.Time {
	cond := meta.FindStatusCondition(img.Status.Conditions, tagger.ConditionChecked)
	last := img.Status.LastCheckedAt
	if last == nil || cond == nil || cond.ObservedGeneration != img.Generation {
		return time.Time{}
	}
	interval := c.Interval(img)
	delay := interval
	if cond.Status == metav1.ConditionFalse {
		failing := last.Sub(cond.LastTransitionTime.Time)
		limit := min(MaxBackoffFactor*interval, max(interval, 24*time.Hour))
		delay = min(max(interval, failing), limit)
	}
	k := key{Namespace: img.Namespace, Name: img.Name, Import: string(img.UID)}
	return last.Add(delay + jitter(k, last.Time, 0, time.Duration(float64(interval)*JitterFraction)))
}

// jitter is a duration in [lo, hi) that depends only on k and at.
func jitter(k key, at time.Time, lo, hi time.Duration) time.Duration {
	if hi <= lo {
		return lo
	}
	h := fnv.New64a()
	fmt.Fprintf(h, "%s/%s/%s/%d", k.Namespace, k.Name, k.Import, at.UnixNano())
	return lo + time.Duration(h.Sum64()%uint64(hi-lo))
}

// errConflict means the Image changed since the check was decided on.
var errConflict = errors.New("the image changed since it was read")

// check claims and runs one check of img. It returns true when the claim
// lost to a change of the Image, which must be looked at again.
func (c *Controller) check(ctx context.Context, img *taggerv1beta1.Image, trig trigger) bool {
	logger := klog.FromContext(ctx).WithValues("image", klog.KObj(img), "trigger", trig.kind)
	checkedAt := c.cfg.Clock.Now()
	now := metav1.NewTime(checkedAt)
	claimed, err := c.cfg.Images.UpdateStatus(ctx, img.Namespace, img.Name, func(cur *tagger.Image) error {
		if cur.UID != img.UID || cur.ResourceVersion != img.ResourceVersion {
			return errConflict
		}
		cur.Status.LastCheckedAt = &metav1.MicroTime{Time: checkedAt}
		// A first check under this spec says so at once: the schedule
		// counts from this claim, not from the outcome.
		if old := meta.FindStatusCondition(cur.Status.Conditions, tagger.ConditionChecked); old == nil || old.ObservedGeneration != cur.Generation {
			meta.SetStatusCondition(&cur.Status.Conditions, metav1.Condition{
				Type: tagger.ConditionChecked, Status: metav1.ConditionUnknown, Reason: tagger.ReasonChecking,
				Message: "checking " + cur.Spec.From, ObservedGeneration: cur.Generation, LastTransitionTime: now,
			})
		}
		return nil
	})
	switch {
	case errors.Is(err, errConflict) || apierrors.IsConflict(err):
		logger.V(4).Info("Image changed before its check; looking again")
		return true
	case apierrors.IsNotFound(err):
		return false
	case err != nil:
		logger.Error(err, "Failed claiming check")
		return true
	}

	ctx, cancel := context.WithTimeout(ctx, c.cfg.CheckTimeout)
	defer cancel()
	cond := c.resolveAndCompare(ctx, logger, claimed, trig)
	result := map[string]string{tagger.ReasonUnchanged: "unchanged", tagger.ReasonImportStarted: "import_started"}[cond.Reason]
	if result == "" {
		result = metrics.ResultError
	}
	metrics.ScheduledChecks.WithLabelValues(metrics.Host(claimed.Spec.From), result).Inc()
	cond.ObservedGeneration = claimed.Generation
	cond.LastTransitionTime = now
	c.setCondition(ctx, logger, claimed, cond, "")
	return false
}

// resolveAndCompare resolves the source of img and starts an import when
// it moved. It returns the Checked condition that says what happened.
func (c *Controller) resolveAndCompare(ctx context.Context, logger klog.Logger, img *tagger.Image, trig trigger) metav1.Condition {
	failed := func(err error) metav1.Condition {
		reason := imports.Reason(err)
		logger.Info("Image check failed", "reason", reason)
		return metav1.Condition{Type: tagger.ConditionChecked, Status: metav1.ConditionFalse, Reason: tagger.ReasonCheckFailed, Message: reason}
	}
	creds, err := c.cfg.Credentials.Credentials(img.Namespace, img.Spec.From)
	if err != nil {
		return failed(err)
	}
	req := importer.Request{From: img.Spec.From, Insecure: img.Spec.Insecure, Credentials: creds}
	if tp := img.Spec.TagPolicy; tp != nil {
		if c.cfg.Tags == nil {
			return failed(errors.New("this server cannot list tags for a tag policy"))
		}
		if req.From, err = tagpolicy.Choose(ctx, c.cfg.Tags, req, tp); err != nil {
			return failed(err)
		}
	}
	res, err := c.cfg.Resolver.Import(ctx, req)
	if err != nil {
		return failed(err)
	}
	dgst := res.Digest
	last := lastFrom(img, res.From)
	if last != "" && last == dgst {
		logger.V(2).Info("Image source unchanged", "from", res.From, "digest", dgst)
		return metav1.Condition{Type: tagger.ConditionChecked, Status: metav1.ConditionTrue, Reason: tagger.ReasonUnchanged,
			Message: redact.Message(fmt.Sprintf("%s still resolves to %s", res.From, dgst))}
	}
	if name := c.progressing(img.Namespace, img.Name); name != "" {
		logger.V(2).Info("Image source moved; an import is already running", "imageImport", name)
		return metav1.Condition{Type: tagger.ConditionChecked, Status: metav1.ConditionTrue, Reason: tagger.ReasonImportStarted,
			Message: redact.Message(fmt.Sprintf("%s resolves to %s; importing as ImageImport %s", res.From, dgst, name))}
	}
	detail := fmt.Sprintf("%s resolved to %s", res.From, dgst)
	if last != "" {
		detail += " (was " + last + ")"
	} else {
		detail += " (first generation from this tag)"
	}
	if trig.kind == tagger.TriggerScheduled {
		detail = "scheduled check: " + detail
	} else {
		detail = trig.detail + ": " + detail
	}
	ii := &tagger.ImageImport{
		ObjectMeta: metav1.ObjectMeta{
			GenerateName: img.Name + "-" + trig.kind + "-",
			Namespace:    img.Namespace,
			Labels:       map[string]string{tagger.LabelImportTrigger: trig.kind},
			Annotations:  map[string]string{tagger.AnnotationImportTriggerDetail: redact.Message(detail)},
		},
		// The tag that was resolved (the one a tag policy chose): the
		// import resolves it again and records what it finds then.
		Spec: tagger.ImageImportSpec{TargetImage: img.Name, From: res.From},
	}
	started, err := c.cfg.Imports.StartImport(ctx, ii)
	if err != nil {
		return failed(fmt.Errorf("starting the import: %w", err))
	}
	logger.Info("Image source moved; importing", "from", res.From, "digest", dgst, "previous", last, "imageImport", started.Name)
	return metav1.Condition{Type: tagger.ConditionChecked, Status: metav1.ConditionTrue, Reason: tagger.ReasonImportStarted,
		Message: redact.Message(fmt.Sprintf("%s resolves to %s; importing as ImageImport %s", res.From, dgst, started.Name))}
}

// lastFrom returns the digest of the newest generation img recorded from
// from, "" when none: the tag moved when it resolves to something else.
// Generations from other references (a push, an import of another tag) do
// not count.
func lastFrom(img *tagger.Image, from string) string {
	for _, ref := range img.Status.HashReferences {
		if ref.From != from {
			continue
		}
		if _, dgst, ok := strings.Cut(ref.ImageReference, "@"); ok {
			return dgst
		}
	}
	return ""
}

// progressing returns the name of an import into namespace/image that
// still runs, if any.
func (c *Controller) progressing(namespace, image string) string {
	objs, err := c.byImage.ByIndex(indexTarget, namespace+"/"+image)
	if err != nil {
		return ""
	}
	for _, o := range objs {
		if ii, ok := o.(*taggerv1beta1.ImageImport); ok && imports.IsProgressing(ii.Status.Conditions) {
			return ii.Name
		}
	}
	return ""
}

// errNoChange aborts a status write that would change nothing.
var errNoChange = errors.New("no change")

// setCondition writes cond on the Image img (the same UID) unless it says
// what is already there. When onlyAfter is set, the Image is changed only
// if its condition still reports that import started.
func (c *Controller) setCondition(ctx context.Context, logger klog.Logger, img *tagger.Image, cond metav1.Condition, onlyAfter string) {
	wctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 30*time.Second)
	defer cancel()
	cond.Message = redact.Message(cond.Message)
	_, err := c.cfg.Images.UpdateStatus(wctx, img.Namespace, img.Name, func(cur *tagger.Image) error {
		if cur.UID != img.UID {
			return errNoChange
		}
		old := meta.FindStatusCondition(cur.Status.Conditions, tagger.ConditionChecked)
		if onlyAfter != "" && (old == nil || old.Reason != tagger.ReasonImportStarted || !strings.HasSuffix(old.Message, "ImageImport "+onlyAfter)) {
			return errNoChange
		}
		if old != nil && old.Status == cond.Status && old.Reason == cond.Reason && old.Message == cond.Message && old.ObservedGeneration == cond.ObservedGeneration {
			return errNoChange
		}
		meta.SetStatusCondition(&cur.Status.Conditions, cond)
		return nil
	})
	if err != nil && !errors.Is(err, errNoChange) && !apierrors.IsNotFound(err) {
		logger.Error(err, "Failed writing the Checked condition")
	}
}

// reportOutcome writes on the Image what became of an import a check
// started.
func (c *Controller) reportOutcome(ctx context.Context, k key) error {
	ii, err := c.records.ImageImports(k.Namespace).Get(k.Import)
	if apierrors.IsNotFound(err) {
		return nil
	}
	if err != nil {
		return err
	}
	logger := klog.FromContext(ctx).WithValues("image", klog.KRef(k.Namespace, k.Name), "imageImport", klog.KObj(ii))
	imported := meta.FindStatusCondition(ii.Status.Conditions, tagger.ConditionImported)
	if imported == nil {
		return nil
	}
	cond := metav1.Condition{Type: tagger.ConditionChecked, LastTransitionTime: imported.LastTransitionTime}
	if imported.Status == metav1.ConditionTrue && ii.Status.HashReference != nil {
		cond.Status, cond.Reason = metav1.ConditionTrue, tagger.ReasonImageImported
		cond.Message = fmt.Sprintf("imported %s as %s (ImageImport %s)", ii.Status.HashReference.From, ii.Status.HashReference.ImageReference, ii.Name)
	} else {
		cond.Status, cond.Reason = metav1.ConditionFalse, tagger.ReasonImportFailed
		cond.Message = fmt.Sprintf("ImageImport %s failed: %s", ii.Name, imported.Message)
	}
	img, err := c.images.Images(k.Namespace).Get(k.Name)
	if apierrors.IsNotFound(err) {
		return nil
	}
	if err != nil {
		return err
	}
	cond.ObservedGeneration = img.Generation
	c.setCondition(ctx, logger, &tagger.Image{ObjectMeta: metav1.ObjectMeta{Namespace: img.Namespace, Name: img.Name, UID: img.UID}}, cond, ii.Name)
	return nil
}

// Matches returns the names of the Images of namespace that a push of
// repository (a normalized name, "quay.io/org/app") and tag concerns:
// those whose from names that repository and tag, and those whose tag
// policy on that repository admits the tag. Images pinned to a digest
// never match.
func (c *Controller) Matches(namespace, repository, tag string) ([]string, error) {
	if c.indexer == nil {
		return nil, errors.New("the check controller watches nothing")
	}
	objs, err := c.indexer.ByIndex(indexRepository, namespace+"/"+repository)
	if err != nil {
		return nil, err
	}
	var names []string
	for _, o := range objs {
		img, ok := o.(*taggerv1beta1.Image)
		if !ok || !matches(img, tag) {
			continue
		}
		names = append(names, img.Name)
	}
	return names, nil
}

func matches(img *taggerv1beta1.Image, tag string) bool {
	if tag == "" {
		return false
	}
	if tp := img.Spec.TagPolicy; tp != nil {
		var p tagger.TagPolicy
		if err := taggerv1beta1.Convert_v1beta1_TagPolicy_To_tagger_TagPolicy(tp, &p, nil); err != nil {
			return false
		}
		compiled, err := tagpolicy.Compile(&p)
		return err == nil && compiled.Admits(tag)
	}
	named, err := reference.ParseNormalizedNamed(img.Spec.From)
	if err != nil {
		return false
	}
	if _, pinned := named.(reference.Digested); pinned {
		return false
	}
	tagged, ok := reference.TagNameOnly(named).(reference.Tagged)
	return ok && tagged.Tag() == tag
}
