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

package validation

import (
	"strings"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/validation/field"

	"tagger.dev/tagger/pkg/apis/tagger"
)

func TestValidateImagePolicies(t *testing.T) {
	spec := field.NewPath("spec")
	tp := spec.Child("tagPolicy")
	withPolicy := func(p tagger.TagPolicy) *tagger.Image {
		return imageWith(func(img *tagger.Image) {
			img.Spec.From = "registry.example.com/org/app"
			img.Spec.TagPolicy = &p
		})
	}
	tests := []struct {
		name string
		img  *tagger.Image
		want field.ErrorList
	}{{
		name: "scheduled with interval",
		img: imageWith(func(img *tagger.Image) {
			img.Spec.ImportPolicy = &tagger.ImportPolicy{Scheduled: true, Interval: &metav1.Duration{Duration: time.Hour}}
		}),
	}, {
		name: "zero interval",
		img: imageWith(func(img *tagger.Image) {
			img.Spec.ImportPolicy = &tagger.ImportPolicy{Scheduled: true, Interval: &metav1.Duration{}}
		}),
		want: field.ErrorList{field.Invalid(spec.Child("importPolicy", "interval"), "", "")},
	}, {
		name: "semver",
		img:  withPolicy(tagger.TagPolicy{Semver: ">=1.2.0 <2"}),
	}, {
		name: "pattern, extract by name, numerical",
		img:  withPolicy(tagger.TagPolicy{Pattern: `^main-[a-f0-9]+-(?P<ts>[0-9]+)$`, Extract: "$ts", Order: tagger.TagOrderNumerical}),
	}, {
		name: "pattern, extract by number and literal dollar, alphabetical",
		img:  withPolicy(tagger.TagPolicy{Pattern: `^rc-(\d+)$`, Extract: "$$${1}", Order: tagger.TagOrderAlphabetical}),
	}, {
		name: "pattern with semver on the extracted part",
		img:  withPolicy(tagger.TagPolicy{Pattern: `^app-(?P<v>.*)$`, Extract: "${v}", Semver: "^1"}),
	}, {
		name: "from with a tag",
		img: imageWith(func(img *tagger.Image) {
			img.Spec.TagPolicy = &tagger.TagPolicy{Semver: "^1"}
		}),
		want: field.ErrorList{field.Invalid(spec.Child("from"), "", "")},
	}, {
		name: "from with a digest",
		img: imageWith(func(img *tagger.Image) {
			img.Spec.From = "registry.example.com/org/app@" + testDigest
			img.Spec.TagPolicy = &tagger.TagPolicy{Semver: "^1"}
		}),
		want: field.ErrorList{field.Invalid(spec.Child("from"), "", "")},
	}, {
		name: "neither semver nor order",
		img:  withPolicy(tagger.TagPolicy{Pattern: "^v"}),
		want: field.ErrorList{field.Required(tp, "")},
	}, {
		name: "semver and order",
		img:  withPolicy(tagger.TagPolicy{Semver: "^1", Order: tagger.TagOrderNumerical}),
		want: field.ErrorList{field.Forbidden(tp.Child("order"), "")},
	}, {
		name: "semver does not compile",
		img:  withPolicy(tagger.TagPolicy{Semver: ">=1.2.0 <<2"}),
		want: field.ErrorList{field.Invalid(tp.Child("semver"), "", "")},
	}, {
		name: "unknown order",
		img:  withPolicy(tagger.TagPolicy{Order: "Newest"}),
		want: field.ErrorList{field.NotSupported[string](tp.Child("order"), "", nil)},
	}, {
		name: "pattern does not compile",
		img:  withPolicy(tagger.TagPolicy{Pattern: "^(v", Order: tagger.TagOrderAlphabetical}),
		want: field.ErrorList{field.Invalid(tp.Child("pattern"), "", "")},
	}, {
		name: "extract without pattern",
		img:  withPolicy(tagger.TagPolicy{Extract: "$ts", Order: tagger.TagOrderNumerical}),
		want: field.ErrorList{field.Required(tp.Child("pattern"), "")},
	}, {
		name: "extract names an unknown group",
		img:  withPolicy(tagger.TagPolicy{Pattern: `^(?P<ts>\d+)$`, Extract: "$time", Order: tagger.TagOrderNumerical}),
		want: field.ErrorList{field.Invalid(tp.Child("extract"), "", "")},
	}, {
		name: "extract names a group number too high",
		img:  withPolicy(tagger.TagPolicy{Pattern: `^(\d+)$`, Extract: "${2}", Order: tagger.TagOrderNumerical}),
		want: field.ErrorList{field.Invalid(tp.Child("extract"), "", "")},
	}, {
		name: "pattern too long",
		img:  withPolicy(tagger.TagPolicy{Pattern: strings.Repeat("a", 1025), Order: tagger.TagOrderAlphabetical}),
		want: field.ErrorList{field.TooLong(tp.Child("pattern"), "", 0)},
	}}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			field.ErrorMatcher{}.ByType().ByField().Test(t, tc.want, ValidateImage(tc.img))
		})
	}
}

func TestValidateImportInterval(t *testing.T) {
	path := field.NewPath("spec", "importPolicy")
	policy := func(d time.Duration) *tagger.ImportPolicy {
		return &tagger.ImportPolicy{Scheduled: true, Interval: &metav1.Duration{Duration: d}}
	}
	tests := []struct {
		name   string
		policy *tagger.ImportPolicy
		min    time.Duration
		want   field.ErrorList
	}{
		{name: "no policy", min: time.Minute},
		{name: "at the minimum", policy: policy(time.Minute), min: time.Minute},
		{name: "below the minimum", policy: policy(30 * time.Second), min: time.Minute,
			want: field.ErrorList{field.Invalid(path.Child("interval"), "", "")}},
		{name: "no minimum", policy: policy(time.Second)},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			field.ErrorMatcher{}.ByType().ByField().Test(t, tc.want, ValidateImportInterval(tc.policy, tc.min, path))
		})
	}
}

func TestValidateImageImportTagPolicy(t *testing.T) {
	spec := field.NewPath("spec")
	tests := []struct {
		name string
		ii   *tagger.ImageImport
		want field.ErrorList
	}{{
		name: "policy with a repository",
		ii: importWith(func(ii *tagger.ImageImport) {
			ii.Spec.From = "registry.example.com/org/app"
			ii.Spec.TagPolicy = &tagger.TagPolicy{Semver: "~1.2"}
		}),
	}, {
		name: "policy without from (inherited)",
		ii: importWith(func(ii *tagger.ImageImport) {
			ii.Spec.From = ""
			ii.Spec.TagPolicy = &tagger.TagPolicy{Semver: "~1.2"}
		}),
	}, {
		name: "policy with a tagged from",
		ii: importWith(func(ii *tagger.ImageImport) {
			ii.Spec.From = "registry.example.com/org/app:v1"
			ii.Spec.TagPolicy = &tagger.TagPolicy{Semver: "~1.2"}
		}),
		want: field.ErrorList{field.Invalid(spec.Child("from"), "", "")},
	}, {
		name: "invalid policy",
		ii: importWith(func(ii *tagger.ImageImport) {
			ii.Spec.TagPolicy = &tagger.TagPolicy{Semver: "one"}
		}),
		want: field.ErrorList{field.Invalid(spec.Child("tagPolicy", "semver"), "", "")},
	}}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			field.ErrorMatcher{}.ByType().ByField().Test(t, tc.want, ValidateImageImport(tc.ii))
		})
	}
}

func TestValidateImageConditions(t *testing.T) {
	img := validImage()
	img.Status.Conditions = []metav1.Condition{{Type: tagger.ConditionChecked, Status: "Maybe", Reason: tagger.ReasonUnchanged, LastTransitionTime: now}}
	want := field.ErrorList{field.NotSupported[string](field.NewPath("status", "conditions").Index(0).Child("status"), "", nil)}
	field.ErrorMatcher{}.ByType().ByField().Test(t, want, ValidateImageStatusUpdate(img, validImage()))
}
