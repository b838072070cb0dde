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
	"fmt"
	"strings"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/validation/field"
	"k8s.io/utils/ptr"

	"tagger.dev/tagger/pkg/apis/tagger"
)

const testDigest = "sha256:4bcdffd70da292293d059d2435c7056711fab2655f8b74f48ad0abe042b63687"

var now = metav1.NewTime(time.Date(2026, 10, 1, 12, 0, 0, 0, time.UTC))

func hashRef(i int) tagger.HashReference {
	return tagger.HashReference{
		From:           "registry.example.com/org/app:latest",
		ImportedAt:     metav1.NewTime(now.Add(-time.Duration(i) * time.Minute)),
		ImageReference: fmt.Sprintf("registry.example.com/org/app@sha256:%064x", i),
	}
}

func validImage() *tagger.Image {
	return &tagger.Image{
		ObjectMeta: metav1.ObjectMeta{Name: "app", Namespace: "ns", ResourceVersion: "1"},
		Spec:       tagger.ImageSpec{From: "registry.example.com/org/app:latest"},
	}
}

func imageWith(mutate func(*tagger.Image)) *tagger.Image {
	img := validImage()
	mutate(img)
	return img
}

func TestValidateImage(t *testing.T) {
	spec := field.NewPath("spec")
	refs := field.NewPath("status", "hashReferences")
	tests := []struct {
		name string
		img  *tagger.Image
		want field.ErrorList
	}{{
		name: "valid",
		img:  validImage(),
	}, {
		name: "valid with status",
		img:  imageWith(func(img *tagger.Image) { img.Status.HashReferences = []tagger.HashReference{hashRef(0), hashRef(1)} }),
	}, {
		name: "unqualified reference is valid",
		img:  imageWith(func(img *tagger.Image) { img.Spec.From = "nginx" }),
	}, {
		name: "digest reference is valid",
		img:  imageWith(func(img *tagger.Image) { img.Spec.From = "registry.example.com:5000/org/app@" + testDigest }),
	}, {
		name: "exactly 25 references are valid",
		img: imageWith(func(img *tagger.Image) {
			for i := range tagger.MaxHashReferences {
				img.Status.HashReferences = append(img.Status.HashReferences, hashRef(i))
			}
		}),
	}, {
		name: "uppercase name",
		img:  imageWith(func(img *tagger.Image) { img.Name = "App" }),
		want: field.ErrorList{field.Invalid(field.NewPath("metadata", "name"), "", "")},
	}, {
		name: "name too long for a mirror repository",
		img:  imageWith(func(img *tagger.Image) { img.Name = strings.Repeat("a", tagger.MaxImageNameLength+1) }),
		want: field.ErrorList{field.Invalid(field.NewPath("metadata", "name"), "", "")},
	}, {
		name: "longest name",
		img:  imageWith(func(img *tagger.Image) { img.Name = strings.Repeat("a", tagger.MaxImageNameLength) }),
	}, {
		name: "name too long",
		img:  imageWith(func(img *tagger.Image) { img.Name = strings.Repeat("a", 254) }),
		want: field.ErrorList{field.Invalid(field.NewPath("metadata", "name"), "", "")},
	}, {
		name: "missing name",
		img:  imageWith(func(img *tagger.Image) { img.Name = "" }),
		want: field.ErrorList{field.Required(field.NewPath("metadata", "name"), "")},
	}, {
		name: "missing namespace",
		img:  imageWith(func(img *tagger.Image) { img.Namespace = "" }),
		want: field.ErrorList{field.Required(field.NewPath("metadata", "namespace"), "")},
	}, {
		name: "from missing",
		img:  imageWith(func(img *tagger.Image) { img.Spec.From = "" }),
		want: field.ErrorList{field.Required(spec.Child("from"), "")},
	}, {
		name: "from with surrounding spaces",
		img:  imageWith(func(img *tagger.Image) { img.Spec.From = " nginx " }),
		want: field.ErrorList{field.Invalid(spec.Child("from"), "", "")},
	}, {
		name: "from with inner space",
		img:  imageWith(func(img *tagger.Image) { img.Spec.From = "registry.example.com/org/my app" }),
		want: field.ErrorList{field.Invalid(spec.Child("from"), "", "")},
	}, {
		name: "from uppercase repository",
		img:  imageWith(func(img *tagger.Image) { img.Spec.From = "registry.example.com/Org/App" }),
		want: field.ErrorList{field.Invalid(spec.Child("from"), "", "")},
	}, {
		name: "from invalid tag",
		img:  imageWith(func(img *tagger.Image) { img.Spec.From = "nginx:" }),
		want: field.ErrorList{field.Invalid(spec.Child("from"), "", "")},
	}, {
		name: "from invalid digest",
		img:  imageWith(func(img *tagger.Image) { img.Spec.From = "nginx@sha256:abc" }),
		want: field.ErrorList{field.Invalid(spec.Child("from"), "", "")},
	}, {
		name: "hash reference by tag",
		img: imageWith(func(img *tagger.Image) {
			ref := hashRef(0)
			ref.ImageReference = "registry.example.com/org/app:latest"
			img.Status.HashReferences = []tagger.HashReference{hashRef(1), ref}
		}),
		want: field.ErrorList{field.Invalid(refs.Index(1).Child("imageReference"), "", "")},
	}, {
		name: "hash reference unparsable",
		img: imageWith(func(img *tagger.Image) {
			ref := hashRef(0)
			ref.ImageReference = "not a reference"
			img.Status.HashReferences = []tagger.HashReference{ref}
		}),
		want: field.ErrorList{field.Invalid(refs.Index(0).Child("imageReference"), "", "")},
	}, {
		name: "hash reference missing fields",
		img: imageWith(func(img *tagger.Image) {
			img.Status.HashReferences = []tagger.HashReference{{}}
		}),
		want: field.ErrorList{
			field.Required(refs.Index(0).Child("from"), ""),
			field.Required(refs.Index(0).Child("importedAt"), ""),
			field.Required(refs.Index(0).Child("imageReference"), ""),
		},
	}, {
		name: "hash reference missing importedAt",
		img: imageWith(func(img *tagger.Image) {
			ref := hashRef(0)
			ref.ImportedAt = metav1.Time{}
			img.Status.HashReferences = []tagger.HashReference{ref}
		}),
		want: field.ErrorList{field.Required(refs.Index(0).Child("importedAt"), "")},
	}, {
		name: "26 hash references",
		img: imageWith(func(img *tagger.Image) {
			for i := range tagger.MaxHashReferences + 1 {
				img.Status.HashReferences = append(img.Status.HashReferences, hashRef(i))
			}
		}),
		want: field.ErrorList{field.TooMany(refs, tagger.MaxHashReferences+1, tagger.MaxHashReferences)},
	}}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got := ValidateImage(tc.img)
			field.ErrorMatcher{}.ByType().ByField().Test(t, tc.want, got)
		})
	}
}

func TestValidateImageUpdate(t *testing.T) {
	tests := []struct {
		name string
		old  *tagger.Image
		img  *tagger.Image
		want field.ErrorList
	}{{
		name: "no change",
		old:  validImage(),
		img:  validImage(),
	}, {
		name: "spec.from changes",
		old:  validImage(),
		img:  imageWith(func(img *tagger.Image) { img.Spec.From = "registry.example.com/library/nginx:1.27" }),
	}, {
		name: "spec.from becomes invalid",
		old:  validImage(),
		img:  imageWith(func(img *tagger.Image) { img.Spec.From = "Not Valid" }),
		want: field.ErrorList{field.Invalid(field.NewPath("spec", "from"), "", "")},
	}, {
		name: "spec.from removed",
		old:  validImage(),
		img:  imageWith(func(img *tagger.Image) { img.Spec.From = "" }),
		want: field.ErrorList{field.Required(field.NewPath("spec", "from"), "")},
	}, {
		name: "name changes",
		old:  validImage(),
		img:  imageWith(func(img *tagger.Image) { img.Name = "other" }),
		want: field.ErrorList{field.Invalid(field.NewPath("metadata", "name"), "", "")},
	}, {
		name: "namespace changes",
		old:  validImage(),
		img:  imageWith(func(img *tagger.Image) { img.Namespace = "other" }),
		want: field.ErrorList{field.Invalid(field.NewPath("metadata", "namespace"), "", "")},
	}}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got := ValidateImageUpdate(tc.img, tc.old)
			field.ErrorMatcher{}.ByType().ByField().Test(t, tc.want, got)
		})
	}
}

func TestValidateImageStatusUpdate(t *testing.T) {
	refs := field.NewPath("status", "hashReferences")
	tests := []struct {
		name string
		img  *tagger.Image
		want field.ErrorList
	}{{
		name: "generation added",
		img:  imageWith(func(img *tagger.Image) { img.Status.HashReferences = []tagger.HashReference{hashRef(0)} }),
	}, {
		name: "tag reference",
		img: imageWith(func(img *tagger.Image) {
			ref := hashRef(0)
			ref.ImageReference = "registry.example.com/org/app:v1"
			img.Status.HashReferences = []tagger.HashReference{ref}
		}),
		want: field.ErrorList{field.Invalid(refs.Index(0).Child("imageReference"), "", "")},
	}, {
		name: "too many",
		img: imageWith(func(img *tagger.Image) {
			for i := range tagger.MaxHashReferences + 1 {
				img.Status.HashReferences = append(img.Status.HashReferences, hashRef(i))
			}
		}),
		want: field.ErrorList{field.TooMany(refs, tagger.MaxHashReferences+1, tagger.MaxHashReferences)},
	}, {
		name: "missing importedAt",
		img: imageWith(func(img *tagger.Image) {
			ref := hashRef(0)
			ref.ImportedAt = metav1.Time{}
			img.Status.HashReferences = []tagger.HashReference{hashRef(1), ref}
		}),
		want: field.ErrorList{field.Required(refs.Index(1).Child("importedAt"), "")},
	}, {
		name: "name changes",
		img: imageWith(func(img *tagger.Image) {
			img.Name = "other"
			img.Status.HashReferences = []tagger.HashReference{hashRef(0)}
		}),
		want: field.ErrorList{field.Invalid(field.NewPath("metadata", "name"), "", "")},
	}}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got := ValidateImageStatusUpdate(tc.img, validImage())
			field.ErrorMatcher{}.ByType().ByField().Test(t, tc.want, got)
		})
	}
}

func validImport() *tagger.ImageImport {
	return &tagger.ImageImport{
		ObjectMeta: metav1.ObjectMeta{Name: "app-1", Namespace: "ns", ResourceVersion: "1"},
		Spec:       tagger.ImageImportSpec{TargetImage: "app"},
	}
}

func importWith(mutate func(*tagger.ImageImport)) *tagger.ImageImport {
	ii := validImport()
	mutate(ii)
	return ii
}

func validCondition() metav1.Condition {
	return metav1.Condition{
		Type:               tagger.ConditionImported,
		Status:             metav1.ConditionTrue,
		Reason:             tagger.ReasonImageImported,
		LastTransitionTime: now,
	}
}

func attempts(n int) []tagger.ImportAttempt {
	out := make([]tagger.ImportAttempt, n)
	for i := range out {
		out[i] = tagger.ImportAttempt{When: now, Reason: "unauthorized"}
	}
	return out
}

func TestValidateImageImport(t *testing.T) {
	spec := field.NewPath("spec")
	status := field.NewPath("status")
	conds := status.Child("conditions")
	tests := []struct {
		name string
		ii   *tagger.ImageImport
		want field.ErrorList
	}{{
		name: "valid, from inherited from the Image",
		ii:   validImport(),
	}, {
		name: "valid with every field",
		ii: importWith(func(ii *tagger.ImageImport) {
			ii.Spec.From = "nginx"
			ii.Spec.Mirror = ptr.To(true)
			ii.Spec.Insecure = ptr.To(false)
			ref := hashRef(0)
			ii.Status.HashReference = &ref
			ii.Status.ImportAttempts = attempts(tagger.MaxImportAttempts)
			ii.Status.Conditions = []metav1.Condition{validCondition()}
		}),
	}, {
		name: "from by digest",
		ii:   importWith(func(ii *tagger.ImageImport) { ii.Spec.From = "registry.example.com/org/app@" + testDigest }),
	}, {
		name: "uppercase name",
		ii:   importWith(func(ii *tagger.ImageImport) { ii.Name = "App-1" }),
		want: field.ErrorList{field.Invalid(field.NewPath("metadata", "name"), "", "")},
	}, {
		name: "name too long",
		ii:   importWith(func(ii *tagger.ImageImport) { ii.Name = strings.Repeat("a", 254) }),
		want: field.ErrorList{field.Invalid(field.NewPath("metadata", "name"), "", "")},
	}, {
		name: "targetImage missing",
		ii:   importWith(func(ii *tagger.ImageImport) { ii.Spec.TargetImage = "" }),
		want: field.ErrorList{field.Required(spec.Child("targetImage"), "")},
	}, {
		name: "targetImage not a name",
		ii:   importWith(func(ii *tagger.ImageImport) { ii.Spec.TargetImage = "My_Image" }),
		want: field.ErrorList{field.Invalid(spec.Child("targetImage"), "", "")},
	}, {
		name: "targetImage too long",
		ii:   importWith(func(ii *tagger.ImageImport) { ii.Spec.TargetImage = strings.Repeat("a", tagger.MaxImageNameLength+1) }),
		want: field.ErrorList{field.Invalid(spec.Child("targetImage"), "", "")},
	}, {
		name: "from invalid",
		ii:   importWith(func(ii *tagger.ImageImport) { ii.Spec.From = "registry.example.com/org/app:bad tag" }),
		want: field.ErrorList{field.Invalid(spec.Child("from"), "", "")},
	}, {
		name: "from with spaces",
		ii:   importWith(func(ii *tagger.ImageImport) { ii.Spec.From = "nginx " }),
		want: field.ErrorList{field.Invalid(spec.Child("from"), "", "")},
	}, {
		name: "hashReference by tag",
		ii: importWith(func(ii *tagger.ImageImport) {
			ref := hashRef(0)
			ref.ImageReference = "registry.example.com/org/app:latest"
			ii.Status.HashReference = &ref
		}),
		want: field.ErrorList{field.Invalid(status.Child("hashReference", "imageReference"), "", "")},
	}, {
		name: "hashReference without importedAt",
		ii: importWith(func(ii *tagger.ImageImport) {
			ref := hashRef(0)
			ref.ImportedAt = metav1.Time{}
			ii.Status.HashReference = &ref
		}),
		want: field.ErrorList{field.Required(status.Child("hashReference", "importedAt"), "")},
	}, {
		name: "11 import attempts",
		ii:   importWith(func(ii *tagger.ImageImport) { ii.Status.ImportAttempts = attempts(tagger.MaxImportAttempts + 1) }),
		want: field.ErrorList{field.TooMany(status.Child("importAttempts"), tagger.MaxImportAttempts+1, tagger.MaxImportAttempts)},
	}, {
		name: "condition with bad status and no reason",
		ii: importWith(func(ii *tagger.ImageImport) {
			c := validCondition()
			c.Status = "Maybe"
			c.Reason = ""
			ii.Status.Conditions = []metav1.Condition{c}
		}),
		want: field.ErrorList{
			field.NotSupported[string](conds.Index(0).Child("status"), nil, nil),
			field.Required(conds.Index(0).Child("reason"), ""),
		},
	}, {
		name: "condition without time and a bad type",
		ii: importWith(func(ii *tagger.ImageImport) {
			c := validCondition()
			c.Type = "not a type"
			c.LastTransitionTime = metav1.Time{}
			ii.Status.Conditions = []metav1.Condition{c}
		}),
		want: field.ErrorList{
			field.Invalid(conds.Index(0).Child("type"), "", ""),
			field.Required(conds.Index(0).Child("lastTransitionTime"), ""),
		},
	}, {
		name: "duplicate condition",
		ii: importWith(func(ii *tagger.ImageImport) {
			ii.Status.Conditions = []metav1.Condition{validCondition(), validCondition()}
		}),
		want: field.ErrorList{field.Duplicate(conds.Index(1), "")},
	}}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got := ValidateImageImport(tc.ii)
			field.ErrorMatcher{}.ByType().ByField().Test(t, tc.want, got)
		})
	}
}

func TestValidateImageImportUpdate(t *testing.T) {
	tests := []struct {
		name string
		ii   *tagger.ImageImport
		want field.ErrorList
	}{{
		name: "no change",
		ii:   validImport(),
	}, {
		name: "labels change",
		ii:   importWith(func(ii *tagger.ImageImport) { ii.Labels = map[string]string{"team": "a"} }),
	}, {
		name: "targetImage changes",
		ii:   importWith(func(ii *tagger.ImageImport) { ii.Spec.TargetImage = "other" }),
		want: field.ErrorList{field.Invalid(field.NewPath("spec", "targetImage"), "", "")},
	}, {
		name: "from set",
		ii:   importWith(func(ii *tagger.ImageImport) { ii.Spec.From = "nginx" }),
		want: field.ErrorList{field.Invalid(field.NewPath("spec", "from"), "", "")},
	}, {
		name: "mirror set",
		ii:   importWith(func(ii *tagger.ImageImport) { ii.Spec.Mirror = ptr.To(false) }),
		want: field.ErrorList{field.Invalid(field.NewPath("spec", "mirror"), "", "")},
	}, {
		name: "name changes",
		ii:   importWith(func(ii *tagger.ImageImport) { ii.Name = "app-2" }),
		want: field.ErrorList{field.Invalid(field.NewPath("metadata", "name"), "", "")},
	}}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got := ValidateImageImportUpdate(tc.ii, validImport())
			field.ErrorMatcher{}.ByType().ByField().Test(t, tc.want, got)
		})
	}
}

func TestValidateImageImportStatusUpdate(t *testing.T) {
	status := field.NewPath("status")
	tests := []struct {
		name string
		ii   *tagger.ImageImport
		want field.ErrorList
	}{{
		name: "outcome recorded",
		ii: importWith(func(ii *tagger.ImageImport) {
			ref := hashRef(0)
			ii.Status.HashReference = &ref
			ii.Status.ImportAttempts = attempts(1)
			ii.Status.Conditions = []metav1.Condition{validCondition()}
		}),
	}, {
		name: "11 import attempts",
		ii:   importWith(func(ii *tagger.ImageImport) { ii.Status.ImportAttempts = attempts(tagger.MaxImportAttempts + 1) }),
		want: field.ErrorList{field.TooMany(status.Child("importAttempts"), tagger.MaxImportAttempts+1, tagger.MaxImportAttempts)},
	}, {
		name: "invalid condition reason",
		ii: importWith(func(ii *tagger.ImageImport) {
			c := validCondition()
			c.Reason = "no spaces allowed"
			ii.Status.Conditions = []metav1.Condition{c}
		}),
		want: field.ErrorList{field.Invalid(status.Child("conditions").Index(0).Child("reason"), "", "")},
	}, {
		name: "hashReference by tag",
		ii: importWith(func(ii *tagger.ImageImport) {
			ref := hashRef(0)
			ref.ImageReference = "nginx:latest"
			ii.Status.HashReference = &ref
		}),
		want: field.ErrorList{field.Invalid(status.Child("hashReference", "imageReference"), "", "")},
	}, {
		name: "namespace changes",
		ii:   importWith(func(ii *tagger.ImageImport) { ii.Namespace = "other" }),
		want: field.ErrorList{field.Invalid(field.NewPath("metadata", "namespace"), "", "")},
	}}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got := ValidateImageImportStatusUpdate(tc.ii, validImport())
			field.ErrorMatcher{}.ByType().ByField().Test(t, tc.want, got)
		})
	}
}

// TestImmutableSpecSaysWhichField: the error names the field and its value,
// not the Go struct of the whole spec.
func TestImmutableSpecSaysWhichField(t *testing.T) {
	errs := ValidateImageImportUpdate(importWith(func(ii *tagger.ImageImport) { ii.Spec.From = "nginx" }), validImport())
	if len(errs) != 1 {
		t.Fatalf("errors %v", errs)
	}
	if msg := errs.ToAggregate().Error(); !strings.Contains(msg, `spec.from: Invalid value: "nginx"`) || strings.Contains(msg, "TargetImage") {
		t.Fatalf("message %q", msg)
	}
}
