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

// The limits, condition types, reasons and annotations of the API. They are
// re-exported by v1beta1 so clients use constants, not strings.
const (
	// MaxHashReferences is how many generations an Image keeps.
	MaxHashReferences = 25
	// MaxImportAttempts is how many times an ImageImport tries before giving up.
	MaxImportAttempts = 10
	// MaxImageNameLength bounds Image names: with a 63-character namespace
	// the mirror repository "<namespace>/<name>" stays 64 characters under
	// a registry's 255-character limit, room for a repository prefix.
	MaxImageNameLength = 127
	// MaxReasonLength bounds every attempt reason and condition message the
	// server writes, so a registry's long answer can never make a status
	// invalid.
	MaxReasonLength = 1024

	// ConditionImported reports the outcome of an ImageImport: True once
	// imported; False with ReasonProgressing while it runs, or with
	// ReasonNoMoreAttempts once it failed for good.
	ConditionImported = "Imported"
	// ConditionFailed is True once an ImageImport failed for good, so
	// "kubectl wait --for=condition=Failed" can wait for a failure the way
	// "--for=condition=Imported" waits for a success. It is absent otherwise.
	ConditionFailed = "Failed"
	// ReasonImageImported marks a successful import.
	ReasonImageImported = "ImageImported"
	// ReasonProgressing marks an import that still runs.
	ReasonProgressing = "Progressing"
	// ReasonNoMoreAttempts marks an import that failed for good: its last
	// attempt failed, or its error cannot be cured by retrying.
	ReasonNoMoreAttempts = "NoMoreAttempts"
	// ReasonImagePushed marks the record of a push through images/push.
	ReasonImagePushed = "ImagePushed"

	// AnnotationImportRunner names the server that runs a Progressing
	// ImageImport; AnnotationImportRenewed is when that server last said it
	// still runs it (RFC 3339). A record not renewed for a while is taken
	// over by another server.
	AnnotationImportRunner  = "tagger.dev/import-runner"
	AnnotationImportRenewed = "tagger.dev/import-renewed"

	// DefaultImportInterval is how often a scheduled Image is checked when
	// spec.importPolicy.interval is not set.
	DefaultImportInterval = 15 * time.Minute

	// ConditionChecked reports the last check Tagger made of an Image on its
	// own (scheduled, or asked by a registry webhook): True when the source
	// still resolves to the Image's generation (ReasonUnchanged), when a new
	// digest is being imported (ReasonImportStarted) or was imported
	// (ReasonImageImported); False when the check (ReasonCheckFailed) or the
	// import it started (ReasonImportFailed) failed; Unknown with
	// ReasonChecking while the first check under a new spec runs. Checks
	// back off while it is False.
	ConditionChecked = "Checked"
	// ReasonChecking: the first check under the Image's current spec runs.
	ReasonChecking = "Checking"
	// ReasonUnchanged: the source resolved to the digest already recorded.
	ReasonUnchanged = "Unchanged"
	// ReasonImportStarted: the source moved; an ImageImport records it.
	ReasonImportStarted = "ImportStarted"
	// ReasonCheckFailed: resolving the source (or listing its tags) failed.
	ReasonCheckFailed = "CheckFailed"
	// ReasonImportFailed: the ImageImport a check started failed.
	ReasonImportFailed = "ImportFailed"

	// LabelImportTrigger marks the ImageImports Tagger created on its own,
	// with TriggerScheduled or TriggerWebhook;
	// AnnotationImportTriggerDetail says what was found ("... moved from
	// sha256:... to sha256:...", or which webhook delivered which push).
	LabelImportTrigger            = "tagger.dev/import-trigger"
	AnnotationImportTriggerDetail = "tagger.dev/import-trigger-detail"
	// TriggerScheduled marks an import started by a scheduled check.
	TriggerScheduled = "scheduled"
	// TriggerWebhook marks an import started by a registry webhook.
	TriggerWebhook = "webhook"
)

// +genclient
// +k8s:deepcopy-gen:interfaces=k8s.io/apimachinery/pkg/runtime.Object

// Image names a remote tag and keeps the digests it resolved to.
type Image struct {
	metav1.TypeMeta
	metav1.ObjectMeta

	Spec   ImageSpec
	Status ImageStatus
}

// ImageSpec is what the user asks to track.
type ImageSpec struct {
	From     string
	Mirror   bool
	Insecure bool
	// PinnedReference, when set, is the generation consumers should use
	// instead of the newest (a rollback).
	PinnedReference string
	// PinnedResolvedAt tells which generation PinnedReference pins when
	// its reference appears more than once: the one resolved at this time.
	// Nil means the newest generation with that reference.
	PinnedResolvedAt *metav1.MicroTime
	// ImportPolicy says when Tagger imports on its own; nil means never.
	ImportPolicy *ImportPolicy
	// TagPolicy, when set, chooses the tag of From (which then names a
	// repository) among the repository's tags.
	TagPolicy *TagPolicy
}

// ImportPolicy says when Tagger checks an Image's source on its own.
type ImportPolicy struct {
	// Scheduled turns on the periodic check.
	Scheduled bool
	// Interval is the time between checks.
	Interval *metav1.Duration
}

// TagOrder orders the values a TagPolicy extracts from tags.
type TagOrder string

const (
	// TagOrderAlphabetical compares extracted values as strings.
	TagOrderAlphabetical TagOrder = "Alphabetical"
	// TagOrderNumerical compares extracted values as numbers.
	TagOrderNumerical TagOrder = "Numerical"
)

// TagPolicy chooses a tag among a repository's tags: the highest of those
// it admits.
type TagPolicy struct {
	// Semver is a Masterminds semver range; tags (or their extracted part)
	// are compared as versions.
	Semver string
	// Pattern is a regular expression tags must match.
	Pattern string
	// Extract is the part of a matching tag to compare, with $name or
	// ${n} references to the groups of Pattern; empty means the whole tag.
	Extract string
	// Order compares extracted parts when Semver is not set.
	Order TagOrder
}

// ImageStatus holds the generations, newest first.
type ImageStatus struct {
	HashReferences []HashReference
	// CurrentReference is spec.pinnedReference when set, else the newest
	// generation's reference; the strategies keep it so.
	CurrentReference string
	// LastCheckedAt is when Tagger last checked the source on its own.
	LastCheckedAt *metav1.MicroTime
	// Conditions hold ConditionChecked.
	Conditions []metav1.Condition
}

// HashReference is one generation of an Image.
type HashReference struct {
	From string
	// ResolvedAt is when the registry answered the digest; generations
	// are ordered by it. Zero in records written before it existed.
	ResolvedAt     metav1.MicroTime
	ImportedAt     metav1.Time
	ImageReference string
}

// +k8s:deepcopy-gen:interfaces=k8s.io/apimachinery/pkg/runtime.Object

// ImageList is a list of Images.
type ImageList struct {
	metav1.TypeMeta
	metav1.ListMeta

	Items []Image
}

// +genclient
// +k8s:deepcopy-gen:interfaces=k8s.io/apimachinery/pkg/runtime.Object

// ImageImport is one request to import a new generation into an Image.
type ImageImport struct {
	metav1.TypeMeta
	metav1.ObjectMeta

	Spec   ImageImportSpec
	Status ImageImportStatus
}

// ImageImportSpec says what to import; unset fields come from the target Image.
type ImageImportSpec struct {
	TargetImage string
	From        string
	Mirror      *bool
	Insecure    *bool
	// TagPolicy chooses the tag of From among the repository's tags.
	TagPolicy *TagPolicy
}

// ImageImportStatus is the outcome of the import.
type ImageImportStatus struct {
	HashReference  *HashReference
	ImportAttempts []ImportAttempt
	Conditions     []metav1.Condition
}

// ImportAttempt records one try.
type ImportAttempt struct {
	When    metav1.Time
	Succeed bool
	Reason  string
}

// +k8s:deepcopy-gen:interfaces=k8s.io/apimachinery/pkg/runtime.Object

// ImageImportList is a list of ImageImports.
type ImageImportList struct {
	metav1.TypeMeta
	metav1.ListMeta

	Items []ImageImport
}

// +genclient
// +genclient:onlyVerbs=create
// +k8s:deepcopy-gen:interfaces=k8s.io/apimachinery/pkg/runtime.Object

// RegistryHook is the registry webhook of a namespace: creating one returns
// the URL registries call when a tag is pushed. It is not stored.
type RegistryHook struct {
	metav1.TypeMeta
	metav1.ObjectMeta

	Spec   RegistryHookSpec
	Status RegistryHookStatus
}

// RegistryHookSpec asks for the hook URL.
type RegistryHookSpec struct {
	// Rotate replaces the namespace's token: URLs given out before stop
	// working.
	Rotate bool
}

// RegistryHookStatus is the hook of the namespace.
type RegistryHookStatus struct {
	// URL is what registries call; it carries the token.
	URL string
	// Token authenticates the calls.
	Token string
}

// +k8s:deepcopy-gen:interfaces=k8s.io/apimachinery/pkg/runtime.Object

// ImagePushOptions are the query parameters of images/push.
type ImagePushOptions struct {
	metav1.TypeMeta

	// Path is the registry API path below the repository.
	Path string
	// Method is the registry method the POST stands for.
	Method string
}

// +k8s:deepcopy-gen:interfaces=k8s.io/apimachinery/pkg/runtime.Object

// ImagePullOptions are the query parameters of images/pull.
type ImagePullOptions struct {
	metav1.TypeMeta

	// Path is the registry API path below the repository.
	Path string
	// Method is the registry method the GET stands for.
	Method string
}
