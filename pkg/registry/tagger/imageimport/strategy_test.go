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
	"k8s.io/utils/ptr"
	"sigs.k8s.io/structured-merge-diff/v6/fieldpath"

	"tagger.dev/tagger/pkg/apis/tagger"
	"tagger.dev/tagger/pkg/apiserver/scheme"
)

var strategyTestTime = metav1.NewTime(time.Date(2026, 10, 1, 12, 0, 0, 0, time.UTC))

const strategyTestRef = "registry.example.com/org/app@sha256:4bcdffd70da292293d059d2435c7056711fab2655f8b74f48ad0abe042b63687"

// strategyTestImport returns a finished, successful ImageImport.
func strategyTestImport() *tagger.ImageImport {
	return &tagger.ImageImport{
		ObjectMeta: metav1.ObjectMeta{
			Name:            "app-1",
			Namespace:       "ns",
			ResourceVersion: "5",
			Generation:      1,
			Labels:          map[string]string{"team": "a"},
			Annotations:     map[string]string{"note": "old"},
		},
		Spec: tagger.ImageImportSpec{TargetImage: "app", From: "registry.example.com/org/app:latest", Mirror: ptr.To(true)},
		Status: tagger.ImageImportStatus{
			HashReference: &tagger.HashReference{
				From:           "registry.example.com/org/app:latest",
				ImportedAt:     strategyTestTime,
				ImageReference: strategyTestRef,
			},
			ImportAttempts: []tagger.ImportAttempt{
				{When: strategyTestTime, Reason: "unauthorized"},
				{When: strategyTestTime, Succeed: true},
			},
			Conditions: []metav1.Condition{{
				Type:               tagger.ConditionImported,
				Status:             metav1.ConditionTrue,
				Reason:             tagger.ReasonImageImported,
				LastTransitionTime: strategyTestTime,
			}},
		},
	}
}

func strategyTestCtx() context.Context {
	return genericapirequest.WithNamespace(genericapirequest.NewContext(), "ns")
}

func TestImportStrategyBasics(t *testing.T) {
	s, ss := NewStrategy(scheme.Scheme), NewStatusStrategy(scheme.Scheme)
	if !s.NamespaceScoped() || !ss.NamespaceScoped() {
		t.Error("ImageImport strategies are not namespace scoped")
	}
	if s.AllowCreateOnUpdate(strategyTestCtx()) || ss.AllowCreateOnUpdate(strategyTestCtx()) {
		t.Error("AllowCreateOnUpdate() = true, want false")
	}
}

func TestImportPrepareForCreate(t *testing.T) {
	ii := strategyTestImport()
	ii.Generation = 4
	NewStrategy(scheme.Scheme).PrepareForCreate(strategyTestCtx(), ii)
	if !apiequality.Semantic.DeepEqual(ii.Status, tagger.ImageImportStatus{}) {
		t.Errorf("status not cleared: %+v", ii.Status)
	}
	if ii.Generation != 1 {
		t.Errorf("generation = %d, want 1", ii.Generation)
	}
	if diff := cmp.Diff(strategyTestImport().Spec, ii.Spec); diff != "" {
		t.Errorf("spec changed (-want +got):\n%s", diff)
	}
}

func TestImportPrepareForUpdate(t *testing.T) {
	old := strategyTestImport()
	ii := strategyTestImport()
	ii.Labels = map[string]string{"team": "b"}
	ii.Status = tagger.ImageImportStatus{ImportAttempts: []tagger.ImportAttempt{{When: strategyTestTime, Reason: "forged"}}}

	NewStrategy(scheme.Scheme).PrepareForUpdate(strategyTestCtx(), ii, old)

	want := strategyTestImport()
	want.Labels = map[string]string{"team": "b"}
	if !apiequality.Semantic.DeepEqual(want, ii) {
		t.Errorf("update (-want +got):\n%s", cmp.Diff(want, ii))
	}
}

func TestImportStatusPrepareForUpdate(t *testing.T) {
	old := strategyTestImport()
	old.Status = tagger.ImageImportStatus{}
	ii := strategyTestImport()
	ii.Spec = tagger.ImageImportSpec{TargetImage: "other", Insecure: ptr.To(true)}
	ii.Labels = nil
	ii.Annotations = map[string]string{"note": "new"}
	ii.Finalizers = []string{"x/y"}
	ii.OwnerReferences = []metav1.OwnerReference{{APIVersion: "tagger.dev/v1beta1", Kind: "Image", Name: "app", UID: "u"}}

	NewStatusStrategy(scheme.Scheme).PrepareForUpdate(strategyTestCtx(), ii, old)

	want := strategyTestImport() // old metadata and spec, new status
	if !apiequality.Semantic.DeepEqual(want, ii) {
		t.Errorf("status update (-want +got):\n%s", cmp.Diff(want, ii))
	}
}

func TestImportGetResetFields(t *testing.T) {
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

func TestImportValidate(t *testing.T) {
	s, ss := NewStrategy(scheme.Scheme), NewStatusStrategy(scheme.Scheme)
	noTarget := strategyTestImport()
	noTarget.Spec.TargetImage = ""
	retargeted := strategyTestImport()
	retargeted.Spec.TargetImage = "other"
	tooMany := strategyTestImport()
	for range tagger.MaxImportAttempts {
		tooMany.Status.ImportAttempts = append(tooMany.Status.ImportAttempts, tagger.ImportAttempt{When: strategyTestTime})
	}
	status := field.NewPath("status")

	tests := []struct {
		name string
		got  field.ErrorList
		want field.ErrorList
	}{{
		name: "create valid",
		got:  s.Validate(strategyTestCtx(), strategyTestImport()),
	}, {
		name: "create without targetImage",
		got:  s.Validate(strategyTestCtx(), noTarget),
		want: field.ErrorList{field.Required(field.NewPath("spec", "targetImage"), "")},
	}, {
		name: "update valid",
		got:  s.ValidateUpdate(strategyTestCtx(), strategyTestImport(), strategyTestImport()),
	}, {
		name: "update changes spec",
		got:  s.ValidateUpdate(strategyTestCtx(), retargeted, strategyTestImport()),
		want: field.ErrorList{field.Invalid(field.NewPath("spec", "targetImage"), "", "")},
	}, {
		name: "status update valid",
		got:  ss.ValidateUpdate(strategyTestCtx(), strategyTestImport(), strategyTestImport()),
	}, {
		name: "status update with too many attempts",
		got:  ss.ValidateUpdate(strategyTestCtx(), tooMany, strategyTestImport()),
		want: field.ErrorList{field.TooMany(status.Child("importAttempts"), 12, tagger.MaxImportAttempts)},
	}}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			field.ErrorMatcher{}.ByType().ByField().Test(t, tc.want, tc.got)
		})
	}
}

func TestImportGetAttrs(t *testing.T) {
	ii := strategyTestImport()
	ls, fs, err := GetAttrs(ii)
	if err != nil {
		t.Fatal(err)
	}
	if want := (labels.Set{"team": "a"}); !apiequality.Semantic.DeepEqual(ls, want) {
		t.Errorf("labels = %v, want %v", ls, want)
	}
	wantFields := fields.Set{
		"metadata.name":      "app-1",
		"metadata.namespace": "ns",
		"spec.targetImage":   "app",
	}
	if !apiequality.Semantic.DeepEqual(fs, wantFields) {
		t.Errorf("fields = %v, want %v", fs, wantFields)
	}
	if _, _, err := GetAttrs(&tagger.Image{}); err == nil {
		t.Error("GetAttrs(Image) returned no error")
	}

	tests := []struct {
		selector string
		match    bool
	}{
		{"spec.targetImage=app", true},
		{"spec.targetImage=other", false},
		{"spec.targetImage!=other,metadata.name=app-1", true},
	}
	for _, tc := range tests {
		sel, err := fields.ParseSelector(tc.selector)
		if err != nil {
			t.Fatal(err)
		}
		pred := MatchImageImport(labels.Everything(), sel)
		got, err := pred.Matches(ii)
		if err != nil {
			t.Fatal(err)
		}
		if got != tc.match {
			t.Errorf("MatchImageImport(%q) = %v, want %v", tc.selector, got, tc.match)
		}
	}
}

func TestImportConvertToTable(t *testing.T) {
	done := strategyTestImport()
	at := strategyTestTime.UTC().Format(time.RFC3339)
	failing := &tagger.ImageImport{
		ObjectMeta: metav1.ObjectMeta{Name: "app-2", Namespace: "ns", ResourceVersion: "6"},
		Spec:       tagger.ImageImportSpec{TargetImage: "app", Insecure: ptr.To(true), Mirror: ptr.To(false)},
		Status: tagger.ImageImportStatus{ImportAttempts: []tagger.ImportAttempt{
			{When: strategyTestTime, Reason: "timeout"},
			{When: strategyTestTime, Reason: "manifest unknown"},
		}, Conditions: []metav1.Condition{
			{Type: tagger.ConditionImported, Status: metav1.ConditionFalse, Reason: tagger.ReasonNoMoreAttempts},
			{Type: tagger.ConditionFailed, Status: metav1.ConditionTrue, Reason: tagger.ReasonNoMoreAttempts},
		}},
	}
	pending := &tagger.ImageImport{
		ObjectMeta: metav1.ObjectMeta{Name: "app-3", Namespace: "ns", ResourceVersion: "7"},
		Spec:       tagger.ImageImportSpec{TargetImage: "app"},
		Status: tagger.ImageImportStatus{Conditions: []metav1.Condition{
			{Type: tagger.ConditionImported, Status: metav1.ConditionFalse, Reason: tagger.ReasonProgressing},
		}},
	}
	doneRow := []interface{}{"app-1", false, true, "app", "Imported", at, strategyTestRef, ""}
	failingRow := []interface{}{"app-2", true, false, "app", "Failed", "", "", "manifest unknown"}
	pendingRow := []interface{}{"app-3", false, false, "app", "Progressing", "", "", ""}

	wantColumns := []string{"NAME", "INSECURE", "MIRROR", "TARGETIMAGE", "STATUS", "IMPORTEDAT", "IMAGEREFERENCE", "REASON"}
	wantPriority := []int32{0, 0, 0, 0, 0, 0, 0, 1}
	tests := []struct {
		name     string
		obj      runtime.Object
		wantRows [][]interface{}
		wantRV   string
	}{{
		name:     "succeeded",
		obj:      done,
		wantRows: [][]interface{}{doneRow},
		wantRV:   "5",
	}, {
		name:     "failing shows the newest reason",
		obj:      failing,
		wantRows: [][]interface{}{failingRow},
		wantRV:   "6",
	}, {
		name:     "no attempt yet",
		obj:      pending,
		wantRows: [][]interface{}{pendingRow},
		wantRV:   "7",
	}, {
		name: "list",
		obj: &tagger.ImageImportList{
			ListMeta: metav1.ListMeta{ResourceVersion: "9", Continue: "next"},
			Items:    []tagger.ImageImport{*done, *failing, *pending},
		},
		wantRows: [][]interface{}{doneRow, failingRow, pendingRow},
		wantRV:   "9",
	}}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			table, err := TableConvertor{}.ConvertToTable(strategyTestCtx(), tc.obj, nil)
			if err != nil {
				t.Fatal(err)
			}
			var cols []string
			var prios []int32
			for _, c := range table.ColumnDefinitions {
				cols = append(cols, strings.ToUpper(c.Name))
				prios = append(prios, c.Priority)
			}
			if diff := cmp.Diff(wantColumns, cols); diff != "" {
				t.Errorf("columns (-want +got):\n%s", diff)
			}
			if diff := cmp.Diff(wantPriority, prios); diff != "" {
				t.Errorf("column priorities (-want +got):\n%s", diff)
			}
			var rows [][]interface{}
			for _, r := range table.Rows {
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
	if _, err := (TableConvertor{}).ConvertToTable(strategyTestCtx(), &tagger.Image{}, nil); err == nil {
		t.Error("ConvertToTable(Image) returned no error")
	}
}
