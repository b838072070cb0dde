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

const (
	// FinalizerMirrorTags is on every Image with generations in its mirror
	// repository: deleting the Image first removes the tags Tagger pushed
	// there (tagger-sha256-<hex>, and tags naming its generations), so that
	// registry garbage collection can reclaim the images.
	FinalizerMirrorTags = "tagger.dev/mirror-tags"
	// ConditionMirrorCleanup is False, with ReasonMirrorUnreachable, while
	// an Image being deleted waits for its mirror tags to be removed; its
	// message says why and how to delete the Image without removing them.
	ConditionMirrorCleanup = "MirrorCleanup"
	// ReasonMirrorUnreachable: the mirror refused or did not answer the
	// removal of the tags; it is retried with backoff.
	ReasonMirrorUnreachable = "MirrorUnreachable"
	// AnnotationSkipMirrorCleanup, set to "true" on an Image, makes its
	// deletion leave the mirror tags in place (the documented way to force
	// the deletion of an Image whose mirror is gone).
	AnnotationSkipMirrorCleanup = "tagger.dev/skip-mirror-cleanup"
)
