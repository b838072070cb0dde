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

package tagger

import (
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

func TestPinnedGenerationWithRepeatedDigests(t *testing.T) {
	base := time.Date(2026, 11, 22, 6, 0, 0, 0, time.UTC)
	at := func(s int) metav1.MicroTime { return metav1.NewMicroTime(base.Add(time.Duration(s) * time.Second)) }
	gen := func(ref string, s int) HashReference {
		return HashReference{From: "x", ResolvedAt: at(s), ImportedAt: metav1.NewTime(base.Add(time.Duration(s) * time.Second)), ImageReference: ref}
	}
	img := &Image{Status: ImageStatus{HashReferences: []HashReference{
		gen("r@A", 30), gen("r@B", 20), gen("r@A", 10), // push A, B, A: newest first
	}}}
	// A record written before resolvedAt existed: its importedAt counts.
	legacy := HashReference{From: "x", ImportedAt: metav1.NewTime(base.Add(5 * time.Second)), ImageReference: "r@C"}
	img.Status.HashReferences = append(img.Status.HashReferences, legacy)
	ptr := func(m metav1.MicroTime) *metav1.MicroTime { return &m }
	for name, tc := range map[string]struct {
		pin  string
		at   *metav1.MicroTime
		want int
	}{
		"no pin":                          {"", nil, -1},
		"reference alone: newest with it": {"r@A", nil, 0},
		"the newer A":                     {"r@A", ptr(at(30)), 0},
		"the older A":                     {"r@A", ptr(at(10)), 2},
		"B":                               {"r@B", ptr(at(20)), 1},
		"nanoseconds below the stored µs": {"r@A", ptr(metav1.NewMicroTime(at(10).Add(300 * time.Nanosecond))), 2},
		// An import of the same digest moved the older A's time forward.
		"time moved forward":   {"r@A", ptr(at(8)), 2},
		"time of nothing":      {"r@A", ptr(at(40)), 0},
		"legacy by importedAt": {"r@C", ptr(at(5)), 3},
		"not a generation":     {"r@D", nil, -1},
	} {
		t.Run(name, func(t *testing.T) {
			img := img.DeepCopy()
			img.Spec.PinnedReference, img.Spec.PinnedResolvedAt = tc.pin, tc.at
			if got := PinnedGeneration(img); got != tc.want {
				t.Errorf("PinnedGeneration = %d, want %d", got, tc.want)
			}
			want := tc.want
			if tc.pin == "" {
				want = 0
			}
			if got := CurrentGeneration(img); got != want {
				t.Errorf("CurrentGeneration = %d, want %d", got, want)
			}
		})
	}
	if got := CurrentGeneration(&Image{}); got != -1 {
		t.Errorf("CurrentGeneration without generations = %d", got)
	}
}
