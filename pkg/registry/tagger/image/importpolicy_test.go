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

package image

import (
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/validation/field"

	"tagger.dev/tagger/pkg/apis/tagger"
	"tagger.dev/tagger/pkg/apiserver/scheme"
)

func scheduled(d time.Duration) *tagger.ImportPolicy {
	return &tagger.ImportPolicy{Scheduled: true, Interval: &metav1.Duration{Duration: d}}
}

func TestMinImportInterval(t *testing.T) {
	s := NewStrategyWithOptions(scheme.Scheme, Options{MinImportInterval: time.Minute})
	interval := field.NewPath("spec", "importPolicy", "interval")

	img := newImage()
	img.Spec.ImportPolicy = scheduled(30 * time.Second)
	field.ErrorMatcher{}.ByType().ByField().Test(t, field.ErrorList{field.Invalid(interval, "", "")}, s.Validate(ctxNS(), img))
	img.Spec.ImportPolicy = scheduled(time.Minute)
	field.ErrorMatcher{}.ByType().ByField().Test(t, nil, s.Validate(ctxNS(), img))

	// An interval stored before the minimum was raised stays until the
	// policy changes.
	old := newImage()
	old.Spec.ImportPolicy = scheduled(30 * time.Second)
	upd := old.DeepCopy()
	upd.Labels = map[string]string{"team": "b"}
	field.ErrorMatcher{}.ByType().ByField().Test(t, nil, s.ValidateUpdate(ctxNS(), upd, old))
	upd.Spec.ImportPolicy = scheduled(40 * time.Second)
	field.ErrorMatcher{}.ByType().ByField().Test(t, field.ErrorList{field.Invalid(interval, "", "")}, s.ValidateUpdate(ctxNS(), upd, old))

	// Without a minimum (NewStrategy), any positive interval.
	img.Spec.ImportPolicy = scheduled(time.Second)
	field.ErrorMatcher{}.ByType().ByField().Test(t, nil, NewStrategy(scheme.Scheme).Validate(ctxNS(), img))
}

func TestStatusKeepsCheckAndSpecKeepsStatus(t *testing.T) {
	checked := metav1.NewMicroTime(time.Date(2026, 11, 1, 0, 0, 0, 0, time.UTC))
	cond := metav1.Condition{Type: tagger.ConditionChecked, Status: metav1.ConditionTrue, Reason: tagger.ReasonUnchanged, LastTransitionTime: metav1.NewTime(checked.Time)}

	// The spec endpoint cannot write the check.
	old := newImage()
	old.Status.LastCheckedAt, old.Status.Conditions = &checked, []metav1.Condition{cond}
	upd := old.DeepCopy()
	upd.Status.LastCheckedAt, upd.Status.Conditions = nil, nil
	upd.Spec.ImportPolicy = scheduled(time.Hour)
	NewStrategy(scheme.Scheme).PrepareForUpdate(ctxNS(), upd, old)
	if upd.Status.LastCheckedAt == nil || len(upd.Status.Conditions) != 1 {
		t.Errorf("spec update changed the check: %+v", upd.Status)
	}
	if upd.Generation != old.Generation+1 {
		t.Errorf("a new import policy is a new generation: %d", upd.Generation)
	}

	// The status endpoint writes it, and keeps the policies.
	upd = old.DeepCopy()
	later := metav1.NewMicroTime(checked.Add(time.Hour))
	upd.Status.LastCheckedAt = &later
	upd.Spec.TagPolicy = &tagger.TagPolicy{Semver: "^1"}
	NewStatusStrategy(scheme.Scheme).PrepareForUpdate(ctxNS(), upd, old)
	if !upd.Status.LastCheckedAt.Equal(&later) || upd.Spec.TagPolicy != nil {
		t.Errorf("status update: lastCheckedAt %v, tagPolicy %+v", upd.Status.LastCheckedAt, upd.Spec.TagPolicy)
	}

	// A create starts unchecked.
	img := newImage()
	img.Status.LastCheckedAt, img.Status.Conditions = &checked, []metav1.Condition{cond}
	NewStrategy(scheme.Scheme).PrepareForCreate(ctxNS(), img)
	if img.Status.LastCheckedAt != nil || img.Status.Conditions != nil {
		t.Errorf("create kept the check: %+v", img.Status)
	}
}
