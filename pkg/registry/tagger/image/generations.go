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
	"time"

	"tagger.dev/tagger/pkg/apis/tagger"
)

// AddGeneration puts ref into the Image's history, which is ordered by when
// each generation was resolved (ResolvedAt; ImportedAt for records written
// before it existed), newest first: a slow import whose tag was resolved
// before a fast one's is older, whichever finishes last. Adding the same
// generation twice (a resumed import recording again) changes nothing, and
// importing the digest that is already the newest generation only refreshes
// its times, so a tag that did not move does not push real history out of
// the 25 kept. It reports whether the history changed.
func AddGeneration(img *tagger.Image, ref tagger.HashReference) bool {
	refs := img.Status.HashReferences
	at := orderTime(ref)
	for _, r := range refs {
		if r.ImageReference == ref.ImageReference && orderTime(r).Equal(at) {
			return false // this very generation is recorded already
		}
	}
	pos := 0
	for pos < len(refs) && orderTime(refs[pos]).After(at) {
		pos++
	}
	if pos > 0 && refs[pos-1].ImageReference == ref.ImageReference {
		return false // a newer entry already records this digest
	}
	if pos < len(refs) && refs[pos].ImageReference == ref.ImageReference {
		// The tag did not move.
		refs[pos].ResolvedAt, refs[pos].ImportedAt, refs[pos].From = ref.ResolvedAt, ref.ImportedAt, ref.From
		return true
	}
	if pos >= tagger.MaxHashReferences {
		return false // older than everything kept
	}
	refs = append(refs, tagger.HashReference{})
	copy(refs[pos+1:], refs[pos:])
	refs[pos] = ref
	if len(refs) > tagger.MaxHashReferences {
		refs = refs[:tagger.MaxHashReferences]
	}
	img.Status.HashReferences = refs
	return true
}

// orderTime is the time a generation is ordered by.
func orderTime(r tagger.HashReference) time.Time {
	if !r.ResolvedAt.IsZero() {
		return r.ResolvedAt.Time
	}
	return r.ImportedAt.Time
}
