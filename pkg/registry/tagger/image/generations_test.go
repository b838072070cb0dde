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
	"fmt"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"tagger.dev/tagger/pkg/apis/tagger"
)

var base = time.Date(2026, 10, 1, 12, 0, 0, 0, time.UTC)

// gen returns the generation with digest number d imported at base+sec.
func gen(d, sec int) tagger.HashReference {
	return tagger.HashReference{
		From:           "registry.example.com/org/app:latest",
		ImportedAt:     metav1.NewTime(base.Add(time.Duration(sec) * time.Second)),
		ImageReference: fmt.Sprintf("registry.example.com/org/app@sha256:%064x", d),
	}
}

// history returns generations with digests ds, imported newest first, one
// second apart, the first at base+len(ds).
func history(ds ...int) []tagger.HashReference {
	out := make([]tagger.HashReference, len(ds))
	for i, d := range ds {
		out[i] = gen(d, len(ds)-i)
	}
	return out
}

func TestAddGeneration(t *testing.T) {
	full := make([]int, tagger.MaxHashReferences)
	for i := range full {
		full[i] = 100 + i
	}
	refreshed := gen(1, 50)
	refreshed.From = "registry.example.com/org/app:stable"

	tests := []struct {
		name     string
		existing []tagger.HashReference
		add      tagger.HashReference
		want     []tagger.HashReference
	}{{
		name: "first generation",
		add:  gen(1, 1),
		want: []tagger.HashReference{gen(1, 1)},
	}, {
		name:     "newest goes first",
		existing: []tagger.HashReference{gen(2, 2), gen(1, 1)},
		add:      gen(3, 3),
		want:     []tagger.HashReference{gen(3, 3), gen(2, 2), gen(1, 1)},
	}, {
		name:     "same digest as head only refreshes it",
		existing: []tagger.HashReference{gen(1, 2), gen(2, 1)},
		add:      refreshed,
		want:     []tagger.HashReference{refreshed, gen(2, 1)},
	}, {
		name:     "digest seen before but not head is a new generation",
		existing: []tagger.HashReference{gen(2, 2), gen(1, 1)},
		add:      gen(1, 3),
		want:     []tagger.HashReference{gen(1, 3), gen(2, 2), gen(1, 1)},
	}, {
		name:     "older import finishing later goes in by time",
		existing: []tagger.HashReference{gen(3, 30), gen(1, 10)},
		add:      gen(2, 20),
		want:     []tagger.HashReference{gen(3, 30), gen(2, 20), gen(1, 10)},
	}, {
		name:     "import older than every generation goes last",
		existing: []tagger.HashReference{gen(3, 30), gen(2, 20)},
		add:      gen(1, 10),
		want:     []tagger.HashReference{gen(3, 30), gen(2, 20), gen(1, 10)},
	}, {
		name:     "cap keeps the newest 25",
		existing: history(full...),
		add:      gen(1, 1000),
		want:     append([]tagger.HashReference{gen(1, 1000)}, history(full...)[:tagger.MaxHashReferences-1]...),
	}, {
		name:     "at the cap an import older than all is dropped",
		existing: history(full...),
		add:      gen(1, 0),
		want:     history(full...),
	}}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			img := &tagger.Image{Status: tagger.ImageStatus{HashReferences: tc.existing}}
			AddGeneration(img, tc.add)
			got := img.Status.HashReferences
			if diff := cmp.Diff(tc.want, got); diff != "" {
				t.Errorf("HashReferences (-want +got):\n%s", diff)
			}
			if len(got) > tagger.MaxHashReferences {
				t.Errorf("%d HashReferences, more than %d", len(got), tagger.MaxHashReferences)
			}
		})
	}
}

// TestAddGenerationByResolveTime: a slow import of A resolved before a fast
// import of B finishes after it; B must stay newest.
func TestAddGenerationByResolveTime(t *testing.T) {
	b := gen(2, 20)
	b.ResolvedAt = metav1.NewMicroTime(base.Add(19 * time.Second))
	a := gen(1, 30)                                                // finished last...
	a.ResolvedAt = metav1.NewMicroTime(base.Add(10 * time.Second)) // ...but resolved first
	img := &tagger.Image{}
	AddGeneration(img, b)
	if !AddGeneration(img, a) {
		t.Fatal("AddGeneration(a) reported no change")
	}
	if diff := cmp.Diff([]tagger.HashReference{b, a}, img.Status.HashReferences); diff != "" {
		t.Errorf("HashReferences (-want +got):\n%s", diff)
	}
	// Recording a again (a resumed import) changes nothing.
	if AddGeneration(img, a) {
		t.Error("adding the same generation twice reported a change")
	}
	if len(img.Status.HashReferences) != 2 {
		t.Errorf("%d generations after adding one twice, want 2", len(img.Status.HashReferences))
	}
}

// TestAddGenerationAnyOrder adds distinct generations in a scrambled order
// and expects every one of them, newest first.
func TestAddGenerationAnyOrder(t *testing.T) {
	order := []int{7, 2, 9, 0, 4, 1, 8, 3, 6, 5}
	img := &tagger.Image{}
	for _, i := range order {
		AddGeneration(img, gen(i, i))
	}
	var want []tagger.HashReference
	for i := 9; i >= 0; i-- {
		want = append(want, gen(i, i))
	}
	if diff := cmp.Diff(want, img.Status.HashReferences); diff != "" {
		t.Errorf("HashReferences (-want +got):\n%s", diff)
	}
}
