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

package v1beta1

import (
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"tagger.dev/tagger/pkg/apis/tagger"
)

// GenerationTime is the time generation r is ordered and pinned by
// (spec.pinnedResolvedAt names it): resolvedAt, else importedAt.
func GenerationTime(r HashReference) metav1.MicroTime {
	return metav1.NewMicroTime(tagger.GenerationTime(r.ResolvedAt, r.ImportedAt))
}

// CurrentGeneration returns the index in status.hashReferences of the
// current generation, as the server sees it: the one spec.pinnedReference
// and spec.pinnedResolvedAt pin, else the newest (0). It is -1 without
// generations, or when the pin names none kept.
func CurrentGeneration(img *Image) int {
	refs := img.Status.HashReferences
	if img.Spec.PinnedReference == "" {
		if len(refs) == 0 {
			return -1
		}
		return 0
	}
	return tagger.PinnedIndex(len(refs),
		func(i int) string { return refs[i].ImageReference },
		func(i int) time.Time { return tagger.GenerationTime(refs[i].ResolvedAt, refs[i].ImportedAt) },
		img.Spec.PinnedReference, img.Spec.PinnedResolvedAt)
}
