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
	"time"

	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"tagger.dev/tagger/pkg/apis/tagger"
	"tagger.dev/tagger/pkg/importer"
	"tagger.dev/tagger/pkg/redact"
)

// Reserve prepares a new record to be stored before its import starts:
// Progressing, claimed by identity.
func Reserve(ii *tagger.ImageImport, identity string, now time.Time) {
	ii.Status = tagger.ImageImportStatus{}
	setCondition(ii, now, metav1.ConditionFalse, tagger.ReasonProgressing, "import in progress")
	setRenewed(ii, identity, now)
}

// IsProgressing tells whether an import has no outcome yet.
func IsProgressing(conds []metav1.Condition) bool {
	c := meta.FindStatusCondition(conds, tagger.ConditionImported)
	return c != nil && c.Status == metav1.ConditionFalse && c.Reason == tagger.ReasonProgressing
}

// Failure returns why an import failed for good, or "" when it did not.
func Failure(conds []metav1.Condition) string {
	if c := meta.FindStatusCondition(conds, tagger.ConditionFailed); c != nil && c.Status == metav1.ConditionTrue {
		return c.Message
	}
	return ""
}

// recordAttempt adds one attempt to the record. A successful attempt stores
// the generation but leaves the record Progressing until the Image has it.
func recordAttempt(ii *tagger.ImageImport, now time.Time, res importer.Result, err error, last bool) {
	st := &ii.Status
	attempt := tagger.ImportAttempt{When: metav1.NewTime(now), Succeed: err == nil}
	if err != nil {
		attempt.Reason = Reason(err)
		if last {
			setFailed(ii, now, attempt.Reason)
		} else {
			setCondition(ii, now, metav1.ConditionFalse, tagger.ReasonProgressing,
				redact.Message("attempt failed, retrying: "+attempt.Reason))
		}
	} else {
		resolved := res.ResolvedAt
		if resolved.IsZero() {
			resolved = now
		}
		st.HashReference = &tagger.HashReference{
			From: res.From, ResolvedAt: metav1.NewMicroTime(resolved), ImportedAt: metav1.NewTime(now), ImageReference: res.ImageReference,
		}
		setCondition(ii, now, metav1.ConditionFalse, tagger.ReasonProgressing, redact.Message("recording "+res.ImageReference))
	}
	st.ImportAttempts = append(st.ImportAttempts, attempt)
	if n := len(st.ImportAttempts); n > tagger.MaxImportAttempts {
		st.ImportAttempts = st.ImportAttempts[n-tagger.MaxImportAttempts:]
	}
}

// setFailed ends an import that failed for good: Imported False with
// NoMoreAttempts, and Failed True, both saying why.
func setFailed(ii *tagger.ImageImport, now time.Time, reason string) {
	reason = redact.Message(reason)
	setCondition(ii, now, metav1.ConditionFalse, tagger.ReasonNoMoreAttempts, reason)
	meta.SetStatusCondition(&ii.Status.Conditions, metav1.Condition{
		Type: tagger.ConditionFailed, Status: metav1.ConditionTrue, Reason: tagger.ReasonNoMoreAttempts,
		Message: reason, ObservedGeneration: ii.Generation, LastTransitionTime: metav1.NewTime(now),
	})
	delete(ii.Annotations, tagger.AnnotationImportRunner)
	delete(ii.Annotations, tagger.AnnotationImportRenewed)
}

// setCondition sets the Imported condition; its transition time is the
// time of the last change of reason too, as users read it as "since when".
func setCondition(ii *tagger.ImageImport, now time.Time, status metav1.ConditionStatus, reason, msg string) {
	c := metav1.Condition{
		Type: tagger.ConditionImported, Status: status, Reason: reason, Message: redact.Message(msg),
		ObservedGeneration: ii.Generation, LastTransitionTime: metav1.NewTime(now),
	}
	if old := meta.FindStatusCondition(ii.Status.Conditions, tagger.ConditionImported); old != nil && old.Status == status && old.Reason == reason {
		c.LastTransitionTime = old.LastTransitionTime
	}
	meta.RemoveStatusCondition(&ii.Status.Conditions, tagger.ConditionImported)
	ii.Status.Conditions = append([]metav1.Condition{c}, ii.Status.Conditions...)
}

// setRenewed claims the record for identity as of now.
func setRenewed(ii *tagger.ImageImport, identity string, now time.Time) {
	if !IsProgressing(ii.Status.Conditions) {
		return // finished records carry no claim
	}
	if ii.Annotations == nil {
		ii.Annotations = map[string]string{}
	}
	ii.Annotations[tagger.AnnotationImportRunner] = identity
	ii.Annotations[tagger.AnnotationImportRenewed] = now.UTC().Format(time.RFC3339Nano)
}

// claim reads a record's claim; ok is false when nobody claims it.
func claim(annotations map[string]string) (runner string, renewed time.Time, ok bool) {
	runner = annotations[tagger.AnnotationImportRunner]
	if runner == "" {
		return "", time.Time{}, false
	}
	renewed, err := time.Parse(time.RFC3339Nano, annotations[tagger.AnnotationImportRenewed])
	if err != nil {
		return runner, time.Time{}, true // unreadable: as old as it gets
	}
	return runner, renewed, true
}
