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
	"context"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	apiequality "k8s.io/apimachinery/pkg/api/equality"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/util/validation/field"
	genericapirequest "k8s.io/apiserver/pkg/endpoints/request"
	"sigs.k8s.io/structured-merge-diff/v6/fieldpath"

	"tagger.dev/tagger/pkg/apis/tagger"
	"tagger.dev/tagger/pkg/apiserver/scheme"
)

func newImage() *tagger.Image {
	return &tagger.Image{
		ObjectMeta: metav1.ObjectMeta{
			Name:            "app",
			Namespace:       "ns",
			ResourceVersion: "7",
			Generation:      3,
			Labels:          map[string]string{"team": "a"},
			Annotations:     map[string]string{"note": "old"},
			Finalizers:      []string{"tagger.dev/keep"},
		},
		Spec: tagger.ImageSpec{From: "registry.example.com/org/app:latest", Mirror: true},
		Status: tagger.ImageStatus{HashReferences: []tagger.HashReference{
			gen(2, 20), gen(1, 10),
		}, CurrentReference: gen(2, 20).ImageReference},
	}
}

func ctxNS() context.Context {
	return genericapirequest.WithNamespace(genericapirequest.NewContext(), "ns")
}

func TestStrategyBasics(t *testing.T) {
	s := NewStrategy(scheme.Scheme)
	if !s.NamespaceScoped() {
		t.Error("NamespaceScoped() = false, want true")
	}
	if s.AllowCreateOnUpdate(ctxNS()) {
		t.Error("AllowCreateOnUpdate() = true, want false")
	}
	if !s.AllowUnconditionalUpdate(ctxNS()) {
		t.Error("AllowUnconditionalUpdate() = false, want true")
	}
	ss := NewStatusStrategy(scheme.Scheme)
	if !ss.NamespaceScoped() {
		t.Error("status NamespaceScoped() = false, want true")
	}
	if ss.AllowCreateOnUpdate(ctxNS()) {
		t.Error("status AllowCreateOnUpdate() = true, want false")
	}
}

func TestPrepareForCreate(t *testing.T) {
	img := newImage()
	img.Generation = 9
	NewStrategy(scheme.Scheme).PrepareForCreate(ctxNS(), img)
	if len(img.Status.HashReferences) != 0 {
		t.Errorf("status not cleared: %+v", img.Status)
	}
	if img.Generation != 1 {
		t.Errorf("generation = %d, want 1", img.Generation)
	}
	if want := newImage().Spec; img.Spec != want {
		t.Errorf("spec changed: got %+v, want %+v", img.Spec, want)
	}
}

func TestPrepareForUpdate(t *testing.T) {
	tests := []struct {
		name    string
		mutate  func(*tagger.Image)
		wantGen int64
	}{{
		name:    "unchanged spec keeps the generation",
		mutate:  func(img *tagger.Image) {},
		wantGen: 3,
	}, {
		name:    "label change keeps the generation",
		mutate:  func(img *tagger.Image) { img.Labels = map[string]string{"team": "b"} },
		wantGen: 3,
	}, {
		name:    "from change bumps the generation",
		mutate:  func(img *tagger.Image) { img.Spec.From = "nginx" },
		wantGen: 4,
	}, {
		name:    "insecure change bumps the generation",
		mutate:  func(img *tagger.Image) { img.Spec.Insecure = true },
		wantGen: 4,
	}}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			old := newImage()
			img := newImage()
			tc.mutate(img)
			// The client also tries to rewrite the status.
			img.Status.HashReferences = []tagger.HashReference{gen(9, 90)}
			wantSpec := img.Spec
			NewStrategy(scheme.Scheme).PrepareForUpdate(ctxNS(), img, old)
			if diff := cmp.Diff(newImage().Status, img.Status); diff != "" {
				t.Errorf("status not kept (-want +got):\n%s", diff)
			}
			if img.Spec != wantSpec {
				t.Errorf("spec = %+v, want %+v", img.Spec, wantSpec)
			}
			if img.Generation != tc.wantGen {
				t.Errorf("generation = %d, want %d", img.Generation, tc.wantGen)
			}
		})
	}
}

func TestStatusPrepareForUpdate(t *testing.T) {
	old := newImage()
	img := newImage()
	img.Spec = tagger.ImageSpec{From: "nginx", Insecure: true}
	img.Labels = map[string]string{"team": "b"}
	img.Annotations = nil
	img.Finalizers = nil
	img.OwnerReferences = []metav1.OwnerReference{{APIVersion: "v1", Kind: "ConfigMap", Name: "x", UID: "u"}}
	newStatus := tagger.ImageStatus{HashReferences: []tagger.HashReference{gen(3, 30), gen(2, 20), gen(1, 10)}, CurrentReference: gen(3, 30).ImageReference}
	img.Status = *newStatus.DeepCopy()

	NewStatusStrategy(scheme.Scheme).PrepareForUpdate(ctxNS(), img, old)

	want := newImage()
	want.Status = newStatus
	if !apiequality.Semantic.DeepEqual(want, img) {
		t.Errorf("status update (-want +got):\n%s", cmp.Diff(want, img))
	}
}

func TestGetResetFields(t *testing.T) {
	tests := []struct {
		name string
		got  map[fieldpath.APIVersion]*fieldpath.Set
		want *fieldpath.Set
	}{{
		name: "main resource resets status",
		got:  NewStrategy(scheme.Scheme).GetResetFields(),
		want: fieldpath.NewSet(fieldpath.MakePathOrDie("status")),
	}, {
		name: "status resets spec, labels and annotations",
		got:  NewStatusStrategy(scheme.Scheme).GetResetFields(),
		want: fieldpath.NewSet(
			fieldpath.MakePathOrDie("spec"),
			fieldpath.MakePathOrDie("metadata", "labels"),
			fieldpath.MakePathOrDie("metadata", "annotations"),
		),
	}}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if len(tc.got) != 1 {
				t.Errorf("reset fields for %d versions, want 1: %v", len(tc.got), tc.got)
			}
			set, ok := tc.got["tagger.dev/v1beta1"]
			if !ok {
				t.Fatalf("no reset fields for tagger.dev/v1beta1: %v", tc.got)
			}
			if !set.Equals(tc.want) {
				t.Errorf("reset fields = %v, want %v", set, tc.want)
			}
		})
	}
}

func TestValidate(t *testing.T) {
	s, ss := NewStrategy(scheme.Scheme), NewStatusStrategy(scheme.Scheme)
	valid := newImage()
	noFrom := newImage()
	noFrom.Spec.From = ""
	tagRef := newImage()
	tagRef.Status.HashReferences[0].ImageReference = "registry.example.com/org/app:latest"
	renamed := newImage()
	renamed.Name = "other"

	tests := []struct {
		name string
		got  field.ErrorList
		want field.ErrorList
	}{{
		name: "create valid",
		got:  s.Validate(ctxNS(), valid),
	}, {
		name: "create without from",
		got:  s.Validate(ctxNS(), noFrom),
		want: field.ErrorList{field.Required(field.NewPath("spec", "from"), "")},
	}, {
		name: "update valid",
		got:  s.ValidateUpdate(ctxNS(), valid, newImage()),
	}, {
		name: "update without from",
		got:  s.ValidateUpdate(ctxNS(), noFrom, newImage()),
		want: field.ErrorList{field.Required(field.NewPath("spec", "from"), "")},
	}, {
		name: "update renames",
		got:  s.ValidateUpdate(ctxNS(), renamed, newImage()),
		want: field.ErrorList{field.Invalid(field.NewPath("metadata", "name"), "", "")},
	}, {
		name: "status update valid",
		got:  ss.ValidateUpdate(ctxNS(), valid, newImage()),
	}, {
		name: "status update with tag reference",
		got:  ss.ValidateUpdate(ctxNS(), tagRef, newImage()),
		want: field.ErrorList{field.Invalid(field.NewPath("status", "hashReferences").Index(0).Child("imageReference"), "", "")},
	}}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			field.ErrorMatcher{}.ByType().ByField().Test(t, tc.want, tc.got)
		})
	}
	if w := s.WarningsOnCreate(ctxNS(), valid); len(w) != 0 {
		t.Errorf("WarningsOnCreate = %v, want none", w)
	}
}

func TestGetAttrs(t *testing.T) {
	img := newImage()
	ls, fs, err := GetAttrs(img)
	if err != nil {
		t.Fatal(err)
	}
	if want := (labels.Set{"team": "a"}); !apiequality.Semantic.DeepEqual(ls, want) {
		t.Errorf("labels = %v, want %v", ls, want)
	}
	wantFields := fields.Set{
		"metadata.name":      "app",
		"metadata.namespace": "ns",
		"spec.from":          "registry.example.com/org/app:latest",
	}
	if !apiequality.Semantic.DeepEqual(fs, wantFields) {
		t.Errorf("fields = %v, want %v", fs, wantFields)
	}
	if _, _, err := GetAttrs(&tagger.ImageImport{}); err == nil {
		t.Error("GetAttrs(ImageImport) returned no error")
	}

	tests := []struct {
		selector string
		match    bool
	}{
		{"spec.from=registry.example.com/org/app:latest", true},
		{"spec.from=nginx", false},
		{"metadata.name=app", true},
		{"metadata.name=other", false},
	}
	for _, tc := range tests {
		sel, err := fields.ParseSelector(tc.selector)
		if err != nil {
			t.Fatal(err)
		}
		pred := MatchImage(labels.Everything(), sel)
		got, err := pred.Matches(img)
		if err != nil {
			t.Fatal(err)
		}
		if got != tc.match {
			t.Errorf("MatchImage(%q) = %v, want %v", tc.selector, got, tc.match)
		}
	}
}

func TestConvertToTable(t *testing.T) {
	created := metav1.NewTime(time.Now().Add(-72 * time.Hour))
	bare := &tagger.Image{
		ObjectMeta: metav1.ObjectMeta{Name: "bare", Namespace: "ns", CreationTimestamp: created, ResourceVersion: "11"},
		Spec:       tagger.ImageSpec{From: "nginx", Insecure: true},
	}
	imported := newImage()
	imported.CreationTimestamp = created
	head := imported.Status.HashReferences[0]
	headAt := head.ImportedAt.UTC().Format(time.RFC3339)

	wantColumns := []string{"NAME", "FROM", "MIRROR", "INSECURE", "IMAGEREFERENCE", "IMPORTEDAT", "CURRENT", "AGE"}
	cases := []struct {
		name     string
		obj      runtime.Object
		wantRows [][]interface{}
		wantRV   string
	}{{
		name:     "image without generations",
		obj:      bare,
		wantRows: [][]interface{}{{"bare", "nginx", false, true, "", "", "", "3d"}},
		wantRV:   "11",
	}, {
		name:     "image with generations shows the newest",
		obj:      imported,
		wantRows: [][]interface{}{{"app", "registry.example.com/org/app:latest", true, false, head.ImageReference, headAt, "newest", "3d"}},
		wantRV:   "7",
	}, {
		name: "list",
		obj: &tagger.ImageList{
			ListMeta: metav1.ListMeta{ResourceVersion: "12"},
			Items:    []tagger.Image{*imported, *bare},
		},
		wantRows: [][]interface{}{
			{"app", "registry.example.com/org/app:latest", true, false, head.ImageReference, headAt, "newest", "3d"},
			{"bare", "nginx", false, true, "", "", "", "3d"},
		},
		wantRV: "12",
	}, {
		name:   "empty list",
		obj:    &tagger.ImageList{ListMeta: metav1.ListMeta{ResourceVersion: "13"}},
		wantRV: "13",
	}}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			table, err := TableConvertor{}.ConvertToTable(ctxNS(), tc.obj, nil)
			if err != nil {
				t.Fatal(err)
			}
			var cols []string
			for _, c := range table.ColumnDefinitions {
				cols = append(cols, strings.ToUpper(c.Name))
				if c.Priority != 0 {
					t.Errorf("column %s has priority %d, want 0", c.Name, c.Priority)
				}
			}
			if diff := cmp.Diff(wantColumns, cols); diff != "" {
				t.Errorf("columns (-want +got):\n%s", diff)
			}
			var rows [][]interface{}
			for _, r := range table.Rows {
				if len(r.Cells) != len(table.ColumnDefinitions) {
					t.Errorf("row has %d cells for %d columns", len(r.Cells), len(table.ColumnDefinitions))
				}
				if r.Object.Object == nil {
					t.Error("row does not carry its object")
				}
				rows = append(rows, r.Cells)
			}
			if diff := cmp.Diff(tc.wantRows, rows); diff != "" {
				t.Errorf("rows (-want +got):\n%s", diff)
			}
			if table.ResourceVersion != tc.wantRV {
				t.Errorf("resourceVersion = %q, want %q", table.ResourceVersion, tc.wantRV)
			}
		})
	}

	if _, err := (TableConvertor{}).ConvertToTable(ctxNS(), &tagger.ImageImport{}, nil); err == nil {
		t.Error("ConvertToTable(ImageImport) returned no error")
	}
}

func TestCurrentReference(t *testing.T) {
	img := newImage()
	refs := img.Status.HashReferences
	if len(refs) < 2 {
		t.Fatalf("fixture has %d generations, want 2 or more", len(refs))
	}
	s, st := NewStrategy(nil), NewStatusStrategy(nil)

	// Create: no generations, nothing current.
	created := img.DeepCopy()
	s.PrepareForCreate(ctxNS(), created)
	if created.Status.CurrentReference != "" {
		t.Errorf("create: current %q", created.Status.CurrentReference)
	}
	// A status write makes the newest current.
	updated := img.DeepCopy()
	updated.Status.CurrentReference = "stale"
	st.PrepareForUpdate(ctxNS(), updated, img)
	if updated.Status.CurrentReference != refs[0].ImageReference {
		t.Errorf("status update: current %q, want %q", updated.Status.CurrentReference, refs[0].ImageReference)
	}
	// A pin makes its generation current, and a spec write keeps it so.
	pinned := img.DeepCopy()
	pinned.Spec.PinnedReference = refs[1].ImageReference
	s.PrepareForUpdate(ctxNS(), pinned, img)
	if pinned.Status.CurrentReference != refs[1].ImageReference {
		t.Errorf("pin: current %q, want %q", pinned.Status.CurrentReference, refs[1].ImageReference)
	}
	if errs := s.ValidateUpdate(ctxNS(), pinned, img); len(errs) != 0 {
		t.Errorf("pin to a generation: %v", errs)
	}
	// A pin to anything else is refused.
	bad := img.DeepCopy()
	bad.Spec.PinnedReference = "registry.example.com/org/app@sha256:" + strings.Repeat("f", 64)
	s.PrepareForUpdate(ctxNS(), bad, img)
	if errs := s.ValidateUpdate(ctxNS(), bad, img); len(errs) != 1 || errs[0].Field != "spec.pinnedReference" {
		t.Errorf("pin to a digest that is no generation: %v", errs)
	}
	// A status write keeps the pin current.
	next := pinned.DeepCopy()
	AddGeneration(next, tagger.HashReference{From: "x", ImportedAt: metav1.Now(), ImageReference: "registry.example.com/org/app@sha256:" + strings.Repeat("e", 64)})
	st.PrepareForUpdate(ctxNS(), next, pinned)
	if next.Status.CurrentReference != refs[1].ImageReference {
		t.Errorf("status update of a pinned image: current %q", next.Status.CurrentReference)
	}
}
