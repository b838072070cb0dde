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
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// GenerationTime is the time a generation is ordered and pinned by: when
// it was resolved, or when it was imported for generations recorded before
// resolvedAt existed. It has a microsecond's precision, as stored.
func GenerationTime(resolvedAt metav1.MicroTime, importedAt metav1.Time) time.Time {
	if !resolvedAt.IsZero() {
		return resolvedAt.Truncate(time.Microsecond)
	}
	return importedAt.Truncate(time.Microsecond)
}

// PinnedIndex returns which of n generations (newest first; generation i
// has reference ref(i) and time at(i)) a pin names, or -1 for none.
//
// The pin is a reference and, optionally, a time. Without a time it names
// the newest generation with that reference (pins written before the time
// existed). With a time it names the generation with that reference and
// time; should none have it, because an import of the same digest moved
// that generation's time forward, the oldest one with that reference
// resolved after the time, and failing that the newest with the
// reference.
func PinnedIndex(n int, ref func(i int) string, at func(i int) time.Time, pin string, pinAt *metav1.MicroTime) int {
	if pin == "" {
		return -1
	}
	var same []int // newest first
	for i := 0; i < n; i++ {
		if ref(i) == pin {
			same = append(same, i)
		}
	}
	if len(same) == 0 {
		return -1
	}
	if pinAt == nil {
		return same[0]
	}
	want := pinAt.Truncate(time.Microsecond)
	for _, i := range same {
		if at(i).Equal(want) {
			return i
		}
	}
	for j := len(same) - 1; j >= 0; j-- {
		if at(same[j]).After(want) {
			return same[j]
		}
	}
	return same[0]
}

// PinnedGeneration returns the index in img.Status.HashReferences of the
// generation spec pins, or -1 when there is no pin or it names no
// generation kept.
func PinnedGeneration(img *Image) int {
	refs := img.Status.HashReferences
	return PinnedIndex(len(refs),
		func(i int) string { return refs[i].ImageReference },
		func(i int) time.Time { return GenerationTime(refs[i].ResolvedAt, refs[i].ImportedAt) },
		img.Spec.PinnedReference, img.Spec.PinnedResolvedAt)
}

// CurrentGeneration returns the index of the current generation: the
// pinned one, else the newest (0); -1 without generations or when the pin
// names none kept.
func CurrentGeneration(img *Image) int {
	if img.Spec.PinnedReference != "" {
		return PinnedGeneration(img)
	}
	if len(img.Status.HashReferences) == 0 {
		return -1
	}
	return 0
}
