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

// Package imports runs ImageImports: the attempts, the generation they add
// to the Image and the outcome in the record. A create request reserves the
// record and hands it here at once (Start), then waits a bounded time for
// the outcome; an import that outlives the request, or whose server stopped,
// goes on here.
//
// Ownership. Every Progressing record names the server that runs it
// (tagger.AnnotationImportRunner) and when that server last said so
// (tagger.AnnotationImportRenewed, renewed every RenewInterval while it
// runs). Every write a runner makes is conditional on still being named, so
// at most one runner writes a record. A record whose runner is this server
// but that it does not run (it restarted), whose runner released it (a
// graceful stop) or whose renewal is older than ResumeAfter (a crash) is
// claimed, conditional on the resourceVersion the claim was decided on, and
// resumed from its next attempt. A successful attempt stores its generation
// in the record before the Image is written, so a runner that takes over
// after that only records the same generation again, which the Image's
// history ignores: every import shows up once in history.
package imports

import (
	"context"
	"errors"
	"fmt"
	"math"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	utilruntime "k8s.io/apimachinery/pkg/util/runtime"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/client-go/tools/cache"
	"k8s.io/client-go/tools/record"
	"k8s.io/client-go/util/workqueue"
	"k8s.io/klog/v2"
	"k8s.io/utils/clock"
	"k8s.io/utils/ptr"

	"tagger.dev/tagger/pkg/apis/tagger"
	taggerv1beta1 "tagger.dev/tagger/pkg/apis/tagger/v1beta1"
	taggerlisters "tagger.dev/tagger/pkg/generated/listers/tagger/v1beta1"
	"tagger.dev/tagger/pkg/importer"
	"tagger.dev/tagger/pkg/redact"
	"tagger.dev/tagger/pkg/tagpolicy"
)

// Records is what the controller needs of ImageImport storage.
type Records interface {
	// UpdateRecord applies mutate to the stored record namespace/name, if it
	// still meets pre, and stores its status and annotations. It returns
	// NotFound when the record is gone or was replaced (another UID), and
	// a Conflict when another precondition fails.
	UpdateRecord(ctx context.Context, namespace, name string, pre Preconditions, mutate func(*tagger.ImageImport)) (*tagger.ImageImport, error)
}

// Preconditions of a record write; empty fields are not checked.
type Preconditions struct {
	UID             types.UID
	ResourceVersion string
	// Runner must be the record's AnnotationImportRunner.
	Runner string
}

// Images is what the controller needs of Images.
type Images interface {
	// AddGeneration adds ref to the Image, creating it with spec when it
	// does not exist.
	AddGeneration(ctx context.Context, namespace, name string, spec tagger.ImageSpec, ref tagger.HashReference) error
}

// Sources tells an import which credentials and which mirror to use.
type Sources interface {
	Credentials(namespace, from string) ([]importer.Credential, error)
	Mirror(ctx context.Context, namespace, name string) (*importer.Mirror, error)
}

// Config is what a Controller needs.
type Config struct {
	// Identity names this server in the records it runs. A server that
	// restarts under the same identity resumes its records at once.
	Identity string
	Importer importer.Interface
	Records  Records
	Images   Images
	Sources  Sources
	// Tags lists the tags of imports with a tag policy; nil means the
	// Importer, if it lists tags (*importer.Importer does).
	Tags     tagpolicy.Lister
	Recorder record.EventRecorder
	Clock    clock.WithTicker
	// Backoff spaces attempts after transient errors; Steps is ignored
	// (there are at most tagger.MaxImportAttempts attempts).
	Backoff wait.Backoff
	// Timeout bounds an import from its record's creation: past it the
	// import ends NoMoreAttempts.
	Timeout time.Duration
	// ResolveTimeout bounds one attempt of an import without mirror (a
	// registry that accepts the connection and never answers must not hold
	// it until Timeout); mirrored attempts copy images of any size and are
	// bounded by Timeout only.
	ResolveTimeout time.Duration
	// RenewInterval is how often a runner renews its claim.
	RenewInterval time.Duration
	// ResumeAfter is how long a claim may go unrenewed before another
	// server takes the import over.
	ResumeAfter time.Duration
	// KeepClaimsOnStop leaves the records of running imports claimed when
	// the controller stops, as a crash would; tests use it. By default a
	// stopping server releases them so a running replica resumes at once.
	KeepClaimsOnStop bool
}

// Controller runs ImageImports.
type Controller struct {
	cfg Config

	// base lives as long as the controller: imports stop with it.
	base   context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup

	// started tells the claims of this process from those of an earlier
	// one under the same identity.
	started time.Time

	mu      sync.Mutex
	running map[types.UID]*Run

	lister taggerlisters.ImageImportLister
	synced cache.InformerSynced
	queue  workqueue.TypedRateLimitingInterface[string]
}

// New returns a Controller. It runs imports handed to Start at once; Run
// adds the informer-driven part that resumes imports.
func New(cfg Config) (*Controller, error) {
	if cfg.Importer == nil || cfg.Records == nil || cfg.Images == nil || cfg.Sources == nil || cfg.Identity == "" {
		return nil, fmt.Errorf("the import controller needs an identity, an importer, records, images and sources")
	}
	if cfg.Tags == nil {
		cfg.Tags, _ = cfg.Importer.(tagpolicy.Lister)
	}
	if cfg.Clock == nil {
		cfg.Clock = clock.RealClock{}
	}
	if cfg.Recorder == nil {
		cfg.Recorder = &record.FakeRecorder{}
	}
	if cfg.Backoff.Duration <= 0 {
		// Ten attempts take about 35 s of waiting at most; permanent
		// errors are not retried at all.
		cfg.Backoff = wait.Backoff{Duration: 500 * time.Millisecond, Factor: 1.5, Jitter: 0.1, Cap: 10 * time.Second}
	}
	if cfg.Timeout <= 0 {
		cfg.Timeout = 30 * time.Minute
	}
	if cfg.ResolveTimeout <= 0 {
		cfg.ResolveTimeout = 2 * time.Minute
	}
	if cfg.RenewInterval <= 0 {
		cfg.RenewInterval = 30 * time.Second
	}
	if cfg.ResumeAfter <= 0 {
		cfg.ResumeAfter = 4 * cfg.RenewInterval
	}
	c := &Controller{cfg: cfg, running: map[types.UID]*Run{}, started: cfg.Clock.Now()}
	c.base, c.cancel = context.WithCancel(context.Background())
	c.queue = workqueue.NewTypedRateLimitingQueueWithConfig(workqueue.DefaultTypedControllerRateLimiter[string](),
		workqueue.TypedRateLimitingQueueConfig[string]{Name: "imageimports"})
	return c, nil
}

// Identity is the name this server writes into the records it runs.
func (c *Controller) Identity() string { return c.cfg.Identity }

// Run is one import this server runs.
type Run struct {
	done   chan struct{}
	result *tagger.ImageImport // set before done closes
}

// Done is closed when the run ended: outcome stored, record gone, or the
// server stopping.
func (r *Run) Done() <-chan struct{} { return r.done }

// Result is the record as last stored by the run; valid once Done is closed.
// It is nil when the run stored nothing.
func (r *Run) Result() *tagger.ImageImport { return r.result }

// NewRunForTest returns a Run that ends with what fn returns; for tests of
// the code that waits for runs.
func NewRunForTest(fn func() *tagger.ImageImport) *Run {
	r := &Run{done: make(chan struct{})}
	go func() {
		r.result = fn()
		close(r.done)
	}()
	return r
}

// Start runs the import of rec, a record this server has just reserved
// (claimed by Identity), from its next attempt on.
func (c *Controller) Start(rec *tagger.ImageImport) *Run {
	run := &Run{done: make(chan struct{})}
	c.mu.Lock()
	if running := c.running[rec.UID]; running != nil {
		c.mu.Unlock()
		return running
	}
	if c.base.Err() != nil {
		// Stopping: the record stays Progressing for a running server to
		// resume.
		c.mu.Unlock()
		close(run.done)
		return run
	}
	c.running[rec.UID] = run
	c.wg.Add(1)
	c.mu.Unlock()
	go func() {
		defer c.wg.Done()
		defer func() {
			c.mu.Lock()
			delete(c.running, rec.UID)
			c.mu.Unlock()
			close(run.done)
		}()
		run.result = c.run(rec)
	}()
	return run
}

// Stop ends every import this server runs and waits for them. Their
// records stay Progressing; unless KeepClaimsOnStop, they are released so
// a running replica resumes them at once.
func (c *Controller) Stop() {
	c.mu.Lock()
	c.cancel() // under the lock: Start adds to wg only before this
	c.mu.Unlock()
	c.wg.Wait()
	c.queue.ShutDown()
}

// isRunning tells whether this server runs the record uid.
func (c *Controller) isRunning(uid types.UID) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.running[uid] != nil
}

// errLost means another server claimed the record.
var errLost = errors.New("the import was taken over by another server")

// run makes the attempts left and stores the outcome. It returns the record
// as last stored.
func (c *Controller) run(rec *tagger.ImageImport) *tagger.ImageImport {
	logger := klog.Background().WithValues("imageImport", klog.KObj(rec), "image", rec.Spec.TargetImage)
	deadline := rec.CreationTimestamp.Add(c.cfg.Timeout)
	ctx, cancel := context.WithDeadline(c.base, deadline)
	defer cancel()
	ctx = klog.NewContext(ctx, logger)

	r := &runner{c: c, rec: rec, logger: logger}
	// Renewals keep the claim while an attempt (a big mirror copy) runs
	// longer than ResumeAfter; losing the claim stops the run.
	renewCtx, stopRenew := context.WithCancel(ctx)
	defer stopRenew()
	go r.renew(renewCtx, cancel)

	if rec.Status.HashReference != nil {
		// Imported by a runner that stopped before finishing: record the
		// generation it stored, do not import again.
		return r.finish(ctx)
	}
	backoff := c.cfg.Backoff
	backoff.Steps = math.MaxInt32 // Step only grows the delay while Steps remain
	var retryAfter time.Duration
	for attempt := len(rec.Status.ImportAttempts); ; attempt++ {
		if attempt > 0 {
			delay := backoff.Step()
			if retryAfter > delay {
				delay = min(retryAfter, c.cfg.Backoff.Cap*3)
			}
			select {
			case <-c.cfg.Clock.After(delay):
			case <-ctx.Done():
			}
		}
		var (
			res importer.Result
			err error
		)
		if ctx.Err() == nil {
			actx, cancelAttempt := ctx, context.CancelFunc(func() {})
			if !ptr.Deref(rec.Spec.Mirror, false) {
				actx, cancelAttempt = context.WithTimeout(ctx, c.cfg.ResolveTimeout)
			}
			res, err = r.attempt(actx)
			cancelAttempt()
		} else {
			err = ctx.Err()
		}
		if c.base.Err() != nil {
			// The server is stopping: this attempt did not fail, it was cut.
			logger.Info("Import interrupted by shutdown; it will be resumed")
			r.release()
			return r.rec
		}
		if r.lost() {
			logger.Info("Import taken over by another server; stopping here")
			return nil
		}
		if errors.Is(err, context.DeadlineExceeded) && !c.cfg.Clock.Now().Before(deadline) {
			err = fmt.Errorf("the import did not finish within %s", c.cfg.Timeout)
		}
		last := err == nil || importer.Permanent(err) || attempt >= tagger.MaxImportAttempts-1 || ctx.Err() != nil
		if err != nil {
			logger.Info("Import attempt failed", "attempt", attempt+1, "last", last, "err", Reason(err))
			retryAfter = importer.RetryAfter(err)
		}
		if !r.store(ctx, func(ii *tagger.ImageImport) { recordAttempt(ii, c.cfg.Clock.Now(), res, err, last) }) {
			return r.rec
		}
		if err == nil {
			return r.finish(ctx)
		}
		if last {
			r.event()
			return r.rec
		}
	}
}

// runner is the state of one run.
type runner struct {
	c      *Controller
	rec    *tagger.ImageImport // as last stored
	logger klog.Logger

	mu     sync.Mutex
	isLost bool
}

func (r *runner) lost() bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.isLost
}

// attempt runs one import attempt.
func (r *runner) attempt(ctx context.Context) (importer.Result, error) {
	spec, ns := r.rec.Spec, r.rec.Namespace
	req := importer.Request{From: spec.From, Insecure: ptr.Deref(spec.Insecure, false)}
	creds, err := r.c.cfg.Sources.Credentials(ns, spec.From)
	if err != nil {
		return importer.Result{}, err
	}
	req.Credentials = creds
	if spec.TagPolicy != nil {
		// The policy chooses the tag; the generation's from names it.
		if r.c.cfg.Tags == nil {
			return importer.Result{}, importer.NewPermanent(errors.New("this server cannot list tags for a tag policy"))
		}
		if req.From, err = tagpolicy.Choose(ctx, r.c.cfg.Tags, req, spec.TagPolicy); err != nil {
			return importer.Result{}, err
		}
	}
	if ptr.Deref(spec.Mirror, false) {
		if req.Mirror, err = r.c.cfg.Sources.Mirror(ctx, ns, spec.TargetImage); err != nil {
			// Configuration, not the registry: retrying cannot help.
			return importer.Result{}, importer.NewPermanent(err)
		}
	}
	return r.c.cfg.Importer.Import(ctx, req)
}

// store writes mutate into the record if this server still runs it. It
// returns false when the run must stop: the record is gone or taken over.
// Writes that fail otherwise are retried until the import's deadline
// (and a little past it, so an outcome is never lost to the deadline).
func (r *runner) store(ctx context.Context, mutate func(*tagger.ImageImport)) bool {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 30*time.Second)
	defer cancel()
	var stored *tagger.ImageImport
	err := wait.ExponentialBackoffWithContext(ctx, wait.Backoff{Duration: 100 * time.Millisecond, Factor: 2, Steps: 8, Cap: 5 * time.Second},
		func(ctx context.Context) (bool, error) {
			var err error
			stored, err = r.c.cfg.Records.UpdateRecord(ctx, r.rec.Namespace, r.rec.Name,
				Preconditions{UID: r.rec.UID, Runner: r.c.cfg.Identity},
				func(ii *tagger.ImageImport) {
					mutate(ii)
					setRenewed(ii, r.c.cfg.Identity, r.c.cfg.Clock.Now())
				})
			switch {
			case err == nil:
				return true, nil
			case apierrors.IsNotFound(err) || apierrors.IsConflict(err):
				return false, err
			default:
				r.logger.Error(err, "Failed writing import record; retrying")
				return false, nil
			}
		})
	switch {
	case err == nil:
		r.rec = stored
		return true
	case apierrors.IsNotFound(err):
		r.logger.Info("Import record is gone; stopping")
	case apierrors.IsConflict(err):
		r.mu.Lock()
		r.isLost = true
		r.mu.Unlock()
		r.logger.Info("Import taken over by another server; stopping here")
	default:
		utilruntime.HandleError(fmt.Errorf("storing import %s/%s: %w", r.rec.Namespace, r.rec.Name, err))
	}
	return false
}

// finish adds the generation stored in the record to the Image and marks
// the record Imported.
func (r *runner) finish(ctx context.Context) *tagger.ImageImport {
	ref := *r.rec.Status.HashReference
	spec := r.rec.Spec
	imgSpec := tagger.ImageSpec{From: spec.From, Mirror: ptr.Deref(spec.Mirror, false), Insecure: ptr.Deref(spec.Insecure, false), TagPolicy: spec.TagPolicy}
	wctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 30*time.Second)
	defer cancel()
	var addErr error
	_ = wait.ExponentialBackoffWithContext(wctx, wait.Backoff{Duration: 100 * time.Millisecond, Factor: 2, Steps: 6, Cap: 5 * time.Second},
		func(ctx context.Context) (bool, error) {
			addErr = r.c.cfg.Images.AddGeneration(ctx, r.rec.Namespace, spec.TargetImage, imgSpec, ref)
			if addErr == nil || apierrors.IsInvalid(addErr) || apierrors.IsForbidden(addErr) || apierrors.IsBadRequest(addErr) {
				return true, nil
			}
			return false, nil
		})
	now := r.c.cfg.Clock.Now()
	if !r.store(ctx, func(ii *tagger.ImageImport) {
		if addErr != nil {
			// The import worked but the Image could not take it: say so
			// rather than claim a generation that does not exist.
			ii.Status.HashReference = nil
			setFailed(ii, now, "imported "+ref.ImageReference+", but the Image could not be updated: "+Reason(addErr))
			return
		}
		setCondition(ii, now, metav1.ConditionTrue, tagger.ReasonImageImported, "imported "+ref.ImageReference)
		meta.RemoveStatusCondition(&ii.Status.Conditions, tagger.ConditionFailed)
		delete(ii.Annotations, tagger.AnnotationImportRunner)
		delete(ii.Annotations, tagger.AnnotationImportRenewed)
	}) {
		return r.rec
	}
	r.event()
	return r.rec
}

// release gives up the claim on a record this server stops running, so a
// running replica resumes it without waiting for ResumeAfter.
func (r *runner) release() {
	if r.c.cfg.KeepClaimsOnStop {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	stored, err := r.c.cfg.Records.UpdateRecord(ctx, r.rec.Namespace, r.rec.Name, Preconditions{UID: r.rec.UID, Runner: r.c.cfg.Identity},
		func(ii *tagger.ImageImport) {
			delete(ii.Annotations, tagger.AnnotationImportRunner)
			delete(ii.Annotations, tagger.AnnotationImportRenewed)
		})
	if err == nil {
		r.rec = stored
	}
}

// renew keeps the claim fresh until ctx ends; when the claim is lost it
// cancels the run.
func (r *runner) renew(ctx context.Context, cancelRun context.CancelFunc) {
	t := r.c.cfg.Clock.NewTicker(r.c.cfg.RenewInterval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C():
		}
		_, err := r.c.cfg.Records.UpdateRecord(ctx, r.rec.Namespace, r.rec.Name, Preconditions{UID: r.rec.UID, Runner: r.c.cfg.Identity},
			func(ii *tagger.ImageImport) { setRenewed(ii, r.c.cfg.Identity, r.c.cfg.Clock.Now()) })
		if apierrors.IsNotFound(err) || apierrors.IsConflict(err) {
			r.mu.Lock()
			r.isLost = true
			r.mu.Unlock()
			cancelRun()
			return
		}
	}
}

// event reports the outcome on the record.
func (r *runner) event() {
	ii := r.rec
	ref := &corev1.ObjectReference{
		APIVersion: taggerv1beta1.SchemeGroupVersion.String(), Kind: "ImageImport",
		Namespace: ii.Namespace, Name: ii.Name, UID: ii.UID,
	}
	if hr := ii.Status.HashReference; hr != nil {
		r.c.cfg.Recorder.Eventf(ref, corev1.EventTypeNormal, "Imported", "Imported %s as %s", ii.Spec.From, hr.ImageReference)
		return
	}
	reason := "unknown error"
	if c := meta.FindStatusCondition(ii.Status.Conditions, tagger.ConditionImported); c != nil {
		reason = c.Message
	}
	r.c.cfg.Recorder.Eventf(ref, corev1.EventTypeWarning, "ImportFailed", "Import of %s failed: %s", ii.Spec.From, reason)
}

// Reason is what the server writes about an import error: bounded and
// redacted, never a registry's response body.
func Reason(err error) string {
	return redact.Message(importer.Reason(err))
}
