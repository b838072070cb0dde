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
	"tagger.dev/tagger/pkg/apis/tagger"
)

// AddGeneration puts ref at the head of the Image's history. Importing the
// digest that is already the newest generation only refreshes its time, so a
// tag that did not move does not push real history out of the 25 kept.
func AddGeneration(img *tagger.Image, ref tagger.HashReference) {
	refs := img.Status.HashReferences
	// Keep the list ordered by time even when a slow import finishes after a
	// faster one that started later.
	pos := 0
	for pos < len(refs) && refs[pos].ImportedAt.After(ref.ImportedAt.Time) {
		pos++
	}
	if pos > 0 && refs[pos-1].ImageReference == ref.ImageReference {
		return // a newer entry already records this digest
	}
	if pos < len(refs) && refs[pos].ImageReference == ref.ImageReference {
		refs[pos].ImportedAt, refs[pos].From = ref.ImportedAt, ref.From // the tag did not move
		return
	}
	refs = append(refs, tagger.HashReference{})
	copy(refs[pos+1:], refs[pos:])
	refs[pos] = ref
	if len(refs) > tagger.MaxHashReferences {
		refs = refs[:tagger.MaxHashReferences]
	}
	img.Status.HashReferences = refs
}
