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

package imageimport

import (
	"context"
	"fmt"
	"math"
	"strings"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	utilruntime "k8s.io/apimachinery/pkg/util/runtime"
	genericapirequest "k8s.io/apiserver/pkg/endpoints/request"
	"k8s.io/apiserver/pkg/registry/rest"
	"k8s.io/klog/v2"
	"k8s.io/utils/ptr"

	"tagger.dev/tagger/pkg/apis/tagger"
	"tagger.dev/tagger/pkg/importer"
	"tagger.dev/tagger/pkg/registry/tagger/image"
)

// job runs the attempts of one ImageImport. Until it is handed off, the
// create request owns the outcome; after, the job writes it to etcd itself.
type job struct {
	r         *REST
	namespace string
	ii        *tagger.ImageImport // guarded by mu while the job runs

	mu        sync.Mutex
	finished  bool
	handedOff bool
	stored    chan struct{} // closed once the handed-off record is stored
	storeErr  error
	done      chan struct{} // closed when the job ends before a hand-off
}

func newJob(r *REST, namespace string, ii *tagger.ImageImport) *job {
	return &job{r: r, namespace: namespace, ii: ii, stored: make(chan struct{}), done: make(chan struct{})}
}

// handOff gives the job the duty of writing its outcome, and returns a copy
// of the ImageImport to store now. It returns false when the job already
// finished: the caller then records the outcome itself.
func (j *job) handOff() (*tagger.ImageImport, bool) {
	j.mu.Lock()
	defer j.mu.Unlock()
	if j.finished {
		return nil, false
	}
	j.handedOff = true
	snapshot := j.ii.DeepCopy()
	markProgressing(snapshot)
	return snapshot, true
}

// markProgressing gives an import without outcome yet its condition, which
// is also what Resume looks for after a restart.
func markProgressing(ii *tagger.ImageImport) {
	if meta.FindStatusCondition(ii.Status.Conditions, tagger.ConditionImported) == nil {
		meta.SetStatusCondition(&ii.Status.Conditions, metav1.Condition{
			Type:    tagger.ConditionImported,
			Status:  metav1.ConditionFalse,
			Reason:  tagger.ReasonProgressing,
			Message: "import in progress",
		})
	}
}

// handedOffAlready marks a job resumed from a stored record.
func (j *job) handedOffAlready() {
	j.handedOff = true
	close(j.stored)
}

// persisted tells a handed-off job whether its record was stored.
func (j *job) persisted(created runtime.Object, err error) {
	j.storeErr = err
	if err == nil {
		j.mu.Lock()
		j.ii.UID = created.(*tagger.ImageImport).UID
		j.mu.Unlock()
	}
	close(j.stored)
}

func (j *job) ctx(parent context.Context) context.Context {
	return genericapirequest.WithNamespace(parent, j.namespace)
}

// abandon ends a job because the server stops: the record stays (or, if the
// create still waits, is stored) Progressing, for a running server to resume.
func (j *job) abandon() {
	j.mu.Lock()
	defer j.mu.Unlock()
	if !j.handedOff {
		markProgressing(j.ii)
		j.finished = true
		close(j.done)
	}
}

// run makes the attempts left, from attempt number first on.
func (j *job) run(ctx context.Context, first int) {
	ctx = j.ctx(ctx)
	logger := klog.FromContext(ctx).WithValues("imageImport", klog.KRef(j.namespace, j.ii.Name), "image", j.ii.Spec.TargetImage)
	backoff := j.r.deps.Backoff
	// Step only grows the delay while Steps remain; the attempt count is ours.
	backoff.Steps = math.MaxInt32
	for attempt := first; attempt < tagger.MaxImportAttempts; attempt++ {
		if attempt > first {
			select {
			case <-j.r.deps.Clock.After(backoff.Step()):
			case <-ctx.Done():
			}
		}
		res, err := j.attempt(ctx)
		if err != nil && j.r.ctx.Err() != nil {
			// The server is stopping: this attempt did not fail, it was cut.
			logger.Info("Import interrupted by shutdown; a running server resumes it")
			j.abandon()
			return
		}
		last := err == nil || attempt == tagger.MaxImportAttempts-1 || ctx.Err() != nil
		j.mu.Lock()
		j.record(res, err, last)
		handedOff := j.handedOff
		if last && !handedOff {
			j.finished = true
			close(j.done)
		}
		j.mu.Unlock()
		if err != nil {
			logger.Info("Import attempt failed", "attempt", attempt+1, "err", err)
		}
		if handedOff {
			if !j.writeStatus(ctx, last) {
				logger.Info("Import record is gone; stopping")
				return
			}
			if last {
				j.mu.Lock()
				ii := j.ii.DeepCopy()
				j.mu.Unlock()
				j.event(ii)
			}
		}
		if last {
			return
		}
	}
}

func (j *job) attempt(ctx context.Context) (importer.Result, error) {
	spec := j.ii.Spec
	req := importer.Request{From: spec.From, Insecure: ptr.Deref(spec.Insecure, false)}
	creds, err := j.r.deps.Sources.Credentials(j.namespace, spec.From)
	if err != nil {
		return importer.Result{}, err
	}
	req.Credentials = creds
	if ptr.Deref(spec.Mirror, false) {
		if req.Mirror, err = j.r.deps.Sources.Mirror(ctx, j.namespace, spec.TargetImage); err != nil {
			return importer.Result{}, err
		}
	}
	res, err := j.r.deps.Importer.Import(ctx, req)
	if err != nil && req.Mirror != nil {
		err = redact(err, req.Mirror.Credential)
	}
	return res, err
}

// record writes one attempt into the ImageImport's status.
func (j *job) record(res importer.Result, err error, last bool) {
	now := metav1.NewTime(j.r.deps.Clock.Now())
	st := &j.ii.Status
	attempt := tagger.ImportAttempt{When: now, Succeed: err == nil}
	cond := metav1.Condition{Type: tagger.ConditionImported, ObservedGeneration: j.ii.Generation}
	if err != nil {
		attempt.Reason = err.Error()
		cond.Status, cond.Reason, cond.Message = metav1.ConditionFalse, tagger.ReasonProgressing, attempt.Reason
		if last {
			cond.Reason = tagger.ReasonNoMoreAttempts
		}
	} else {
		st.HashReference = &tagger.HashReference{From: res.From, ImportedAt: now, ImageReference: res.ImageReference}
		cond.Status, cond.Reason, cond.Message = metav1.ConditionTrue, tagger.ReasonImageImported, "imported "+res.ImageReference
	}
	st.ImportAttempts = append(st.ImportAttempts, attempt)
	if n := len(st.ImportAttempts); n > tagger.MaxImportAttempts {
		st.ImportAttempts = st.ImportAttempts[n-tagger.MaxImportAttempts:]
	}
	meta.SetStatusCondition(&st.Conditions, cond)
}

// recordGeneration prepends the imported reference to the target Image,
// creating the Image when the import is its first.
func (j *job) recordGeneration(ctx context.Context) error {
	ref := j.ii.Status.HashReference
	if ref == nil {
		return nil
	}
	spec := j.ii.Spec
	name := spec.TargetImage
	update := func() error {
		_, err := j.r.deps.Images.UpdateStatus(ctx, name, func(img *tagger.Image) error {
			image.AddGeneration(img, *ref)
			return nil
		})
		return err
	}
	err := update()
	if !apierrors.IsNotFound(err) {
		return err
	}
	_, err = j.r.deps.Images.Create(ctx, &tagger.Image{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: j.namespace},
		Spec: tagger.ImageSpec{
			From:     spec.From,
			Mirror:   ptr.Deref(spec.Mirror, false),
			Insecure: ptr.Deref(spec.Insecure, false),
		},
	})
	if err != nil && !apierrors.IsAlreadyExists(err) {
		return err
	}
	return update()
}

// writeStatus stores the job's status into the record it was handed off as.
// It returns false when there is no such record (never stored, or deleted):
// the job then stops, as nobody could see its outcome.
func (j *job) writeStatus(ctx context.Context, last bool) bool {
	<-j.stored
	if j.storeErr != nil {
		return false
	}
	// The outcome must be stored even when the job's own deadline ended it.
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 30*time.Second)
	defer cancel()
	logger := klog.FromContext(ctx)
	if last {
		if err := j.recordGeneration(ctx); err != nil {
			// The import worked but the Image could not take it: say so in
			// the record rather than claim a generation that does not exist.
			utilruntime.HandleError(fmt.Errorf("recording generation for %s/%s: %w", j.namespace, j.ii.Name, err))
			j.mu.Lock()
			j.ii.Status.HashReference = nil
			meta.SetStatusCondition(&j.ii.Status.Conditions, metav1.Condition{
				Type: tagger.ConditionImported, Status: metav1.ConditionFalse, Reason: tagger.ReasonNoMoreAttempts,
				Message: "imported, but the Image could not be updated: " + err.Error(),
			})
			j.mu.Unlock()
		}
	}
	j.mu.Lock()
	status := *j.ii.Status.DeepCopy()
	uid := j.ii.UID
	j.mu.Unlock()
	transform := func(_ context.Context, _, old runtime.Object) (runtime.Object, error) {
		ii := old.(*tagger.ImageImport).DeepCopy()
		if ii.UID != uid {
			// Deleted and created anew under the same name: not this job's record.
			return nil, apierrors.NewNotFound(tagger.Resource("imageimports"), ii.Name)
		}
		ii.Status = status
		return ii, nil
	}
	_, _, err := j.r.status.Update(ctx, j.ii.Name, rest.DefaultUpdatedObjectInfo(nil, transform),
		rest.ValidateAllObjectFunc, rest.ValidateAllObjectUpdateFunc, false, &metav1.UpdateOptions{})
	if apierrors.IsNotFound(err) {
		return false
	}
	if err != nil {
		logger.Error(err, "Failed writing import status", "imageImport", klog.KRef(j.namespace, j.ii.Name))
	}
	return true
}

// event reports the outcome on the stored ImageImport.
func (j *job) event(ii *tagger.ImageImport) {
	ref := &corev1.ObjectReference{
		APIVersion: "tagger.dev/v1beta1",
		Kind:       "ImageImport",
		Namespace:  ii.Namespace,
		Name:       ii.Name,
		UID:        ii.UID,
	}
	if hr := ii.Status.HashReference; hr != nil {
		j.r.deps.Recorder.Eventf(ref, corev1.EventTypeNormal, "Imported", "Imported %s as %s", ii.Spec.From, hr.ImageReference)
		return
	}
	reason := "unknown error"
	if c := meta.FindStatusCondition(ii.Status.Conditions, tagger.ConditionImported); c != nil {
		reason = c.Message
	}
	j.r.deps.Recorder.Eventf(ref, corev1.EventTypeWarning, "ImportFailed", "Import of %s failed: %s", ii.Spec.From, reason)
}

func isProgressing(ii *tagger.ImageImport) bool {
	c := meta.FindStatusCondition(ii.Status.Conditions, tagger.ConditionImported)
	return c != nil && c.Status == metav1.ConditionFalse && c.Reason == tagger.ReasonProgressing
}

// redact keeps a mirror secret out of status, events and logs even when a
// registry echoes it back.
func redact(err error, cred *importer.Credential) error {
	if cred == nil {
		return err
	}
	msg := err.Error()
	for _, secret := range []string{cred.Password, cred.Token} {
		if len(secret) >= 4 {
			msg = strings.ReplaceAll(msg, secret, "<redacted>")
		}
	}
	if msg == err.Error() {
		return err
	}
	return fmt.Errorf("%s", msg)
}
