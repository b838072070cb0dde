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

	"tagger.dev/tagger/pkg/apis/tagger"
)

// repeated is an Image whose history repeats digest 1: 1, 2, 1 newest
// first, resolved at base+30s, +20s, +10s.
func repeated() *tagger.Image {
	img := newImage()
	img.Status.HashReferences = []tagger.HashReference{gen(1, 30), gen(2, 20), gen(1, 10)}
	for i := range img.Status.HashReferences {
		r := &img.Status.HashReferences[i]
		r.ResolvedAt = metav1.NewMicroTime(r.ImportedAt.Time)
	}
	img.Status.CurrentReference = gen(1, 30).ImageReference
	return img
}

func microAt(sec int) *metav1.MicroTime {
	m := metav1.NewMicroTime(base.Add(time.Duration(sec) * time.Second))
	return &m
}

// A pin names one generation even when its digest repeats: validation
// accepts exactly the generations there are, and kubectl get shows the
// pinned generation (number, reference and time), not the newest.
func TestPinOfARepeatedDigest(t *testing.T) {
	s := NewStrategy(nil)
	row := func(img *tagger.Image) []interface{} {
		t.Helper()
		table, err := (TableConvertor{}).ConvertToTable(ctxNS(), img, nil)
		if err != nil {
			t.Fatal(err)
		}
		return table.Rows[0].Cells
	}
	for name, tc := range map[string]struct {
		ref     tagger.HashReference
		at      *metav1.MicroTime
		wantErr string
		current string
		shownAt int // seconds after base
	}{
		"the older of two":          {ref: gen(1, 10), at: microAt(10), current: "pinned #2", shownAt: 10},
		"the newer of two":          {ref: gen(1, 30), at: microAt(30), current: "pinned #0", shownAt: 30},
		"reference only: newest":    {ref: gen(1, 10), current: "pinned #0", shownAt: 30},
		"the other digest":          {ref: gen(2, 20), at: microAt(20), current: "pinned #1", shownAt: 20},
		"a time of no generation":   {ref: gen(1, 10), at: microAt(15), wantErr: "spec.pinnedResolvedAt"},
		"another digest's time":     {ref: gen(2, 20), at: microAt(10), wantErr: "spec.pinnedResolvedAt"},
		"a digest of no generation": {ref: gen(3, 10), at: microAt(10), wantErr: "spec.pinnedReference"},
	} {
		t.Run(name, func(t *testing.T) {
			old := repeated()
			img := old.DeepCopy()
			img.Spec.PinnedReference, img.Spec.PinnedResolvedAt = tc.ref.ImageReference, tc.at
			s.PrepareForUpdate(ctxNS(), img, old)
			errs := s.ValidateUpdate(ctxNS(), img, old)
			if tc.wantErr != "" {
				if len(errs) != 1 || errs[0].Field != tc.wantErr {
					t.Fatalf("errors %v, want one for %s", errs, tc.wantErr)
				}
				return
			}
			if len(errs) != 0 {
				t.Fatalf("errors %v", errs)
			}
			if img.Status.CurrentReference != tc.ref.ImageReference {
				t.Errorf("currentReference %q", img.Status.CurrentReference)
			}
			cells := row(img)
			wantAt := base.Add(time.Duration(tc.shownAt) * time.Second).UTC().Format(time.RFC3339)
			if cells[4] != tc.ref.ImageReference || cells[5] != wantAt || cells[6] != tc.current {
				t.Errorf("row %v, want IMAGEREFERENCE %s IMPORTEDAT %s CURRENT %s", cells, tc.ref.ImageReference, wantAt, tc.current)
			}
		})
	}
}

// Clients that know only spec.pinnedReference keep working: clearing it
// clears the time, and moving it without the time drops the time.
func TestPinTimeFollowsThePin(t *testing.T) {
	s := NewStrategy(nil)
	old := repeated()
	old.Spec.PinnedReference, old.Spec.PinnedResolvedAt = gen(1, 10).ImageReference, microAt(10)

	cleared := old.DeepCopy()
	cleared.Spec.PinnedReference = ""
	s.PrepareForUpdate(ctxNS(), cleared, old)
	if errs := s.ValidateUpdate(ctxNS(), cleared, old); len(errs) != 0 || cleared.Spec.PinnedResolvedAt != nil {
		t.Fatalf("clearing the pin: %v, time %v", errs, cleared.Spec.PinnedResolvedAt)
	}
	if cleared.Status.CurrentReference != gen(1, 30).ImageReference {
		t.Fatalf("unpinned current %q", cleared.Status.CurrentReference)
	}

	moved := old.DeepCopy()
	moved.Spec.PinnedReference = gen(2, 20).ImageReference
	s.PrepareForUpdate(ctxNS(), moved, old)
	if errs := s.ValidateUpdate(ctxNS(), moved, old); len(errs) != 0 || moved.Spec.PinnedResolvedAt != nil {
		t.Fatalf("moving the pin without its time: %v, time %v", errs, moved.Spec.PinnedResolvedAt)
	}

	created := repeated()
	created.Spec.PinnedResolvedAt = microAt(10)
	s.PrepareForCreate(ctxNS(), created)
	if created.Spec.PinnedResolvedAt != nil {
		t.Fatal("a time without a pin was kept")
	}
}
