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
	utilruntime "k8s.io/apimachinery/pkg/util/runtime"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/klog/v2"
	"k8s.io/utils/ptr"

	"tagger.dev/tagger/pkg/apis/tagger"
	taggerv1beta1 "tagger.dev/tagger/pkg/apis/tagger/v1beta1"
	"tagger.dev/tagger/pkg/importer"
	"tagger.dev/tagger/pkg/redact"
	"tagger.dev/tagger/pkg/tagpolicy"
)

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
	if o := r.c.cfg.Observer; o != nil {
		o.ImportFinished(ii)
	}
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
