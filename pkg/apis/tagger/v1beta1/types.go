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
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// +genclient
// +k8s:deepcopy-gen:interfaces=k8s.io/apimachinery/pkg/runtime.Object

// Image names a remote image tag and keeps a bounded history of the digest
// references it resolved to. New generations are added by creating
// ImageImports (or by pushing through the images/push subresource).
type Image struct {
	metav1.TypeMeta `json:",inline"`
	// Standard object metadata.
	// +optional
	metav1.ObjectMeta `json:"metadata,omitempty"`

	// Spec says which remote image this Image tracks and how to import it.
	Spec ImageSpec `json:"spec"`
	// Status holds the generations this Image resolved to, newest first.
	// +optional
	Status ImageStatus `json:"status,omitempty"`
}

// ImageSpec says which remote image an Image tracks and how it is imported.
type ImageSpec struct {
	// From is the source of the image, a docker reference such as
	// "quay.io/org/app:latest". Unqualified names mean Docker Hub
	// ("nginx" is "docker.io/library/nginx:latest") and a missing tag
	// means "latest".
	// +required
	From string `json:"from"`
	// Mirror, when true, copies every imported generation into the
	// cluster's mirror registry and points the generation at the copy.
	// +optional
	Mirror bool `json:"mirror,omitempty"`
	// Insecure skips TLS verification (and allows plain http) when talking
	// to the source registry.
	// +optional
	Insecure bool `json:"insecure,omitempty"`
	// PinnedReference, when set, makes an older generation the current one
	// (a rollback): it must be the imageReference of one of
	// status.hashReferences. Unset means the newest generation is current.
	// "kubectl image rollback" and "rollforward" set and clear it.
	// +optional
	PinnedReference string `json:"pinnedReference,omitempty"`
	// PinnedResolvedAt says which generation spec.pinnedReference pins when
	// that reference appears more than once in status.hashReferences (the
	// same image pushed or imported again later): the one whose resolvedAt
	// (importedAt for generations recorded without resolvedAt) is this
	// time. Unset means the newest generation with that reference, as
	// before this field existed. It is only valid with pinnedReference and
	// is dropped when pinnedReference is cleared, or changed without it.
	// "kubectl image rollback" and "rollforward" set both.
	// +optional
	PinnedResolvedAt *metav1.MicroTime `json:"pinnedResolvedAt,omitempty"`
	// ImportPolicy says when Tagger imports this Image on its own: on a
	// schedule ("scheduled: true"). Registry webhooks re-import every
	// Image they match, whatever this says. Unset means only when asked.
	// +optional
	ImportPolicy *ImportPolicy `json:"importPolicy,omitempty"`
	// TagPolicy, when set, chooses the tag to import among the tags of the
	// repository spec.from names (spec.from then has no tag): the highest
	// tag the policy admits. Every import uses it, manual, scheduled or
	// webhook; the generation's from names the chosen tag.
	// +optional
	TagPolicy *TagPolicy `json:"tagPolicy,omitempty"`
}

// ImportPolicy says when Tagger checks an Image's source on its own. A
// check resolves the source (a manifest HEAD; with a tag policy, the tag
// list first): when the tag moved, an ImageImport labelled
// tagger.dev/import-trigger records the import as if created by hand;
// otherwise only status.lastCheckedAt and the Checked condition change.
type ImportPolicy struct {
	// Scheduled turns on the periodic check.
	// +optional
	Scheduled bool `json:"scheduled,omitempty"`
	// Interval is the time between two checks, e.g. "15m" (the default) or
	// "1h"; the server refuses intervals shorter than its
	// --min-import-interval (1m by default). Checks are spread by a jitter
	// of up to a tenth of the interval, and back off while they fail.
	// +optional
	Interval *metav1.Duration `json:"interval,omitempty"`
}

// TagOrder orders the values a TagPolicy extracts from tags.
type TagOrder string

const (
	// TagOrderAlphabetical compares extracted values as strings
	// (byte-wise), e.g. RFC 3339 timestamps.
	TagOrderAlphabetical TagOrder = "Alphabetical"
	// TagOrderNumerical compares extracted values as numbers; tags whose
	// value is not a number are ignored.
	TagOrderNumerical TagOrder = "Numerical"
)

// TagPolicy chooses a tag among a repository's tags, as Flux's ImagePolicy
// does: the tags Pattern matches (all when unset) are reduced to the part
// Extract names, and the highest by Semver or Order wins. Exactly one of
// semver and order is set.
type TagPolicy struct {
	// Semver is a semantic version range ("Masterminds/semver" syntax,
	// e.g. ">=1.2.0 <2", "~1.4", "^2"): tags (or their extracted part)
	// that parse as versions ("1.2.3", "v1.2.3") and are in the range are
	// compared as versions. Pre-releases count only when the range names
	// one.
	// +optional
	Semver string `json:"semver,omitempty"`
	// Pattern is a regular expression (RE2 syntax) the tag must match,
	// e.g. "^main-[a-f0-9]+-(?P<ts>[0-9]+)$".
	// +optional
	Pattern string `json:"pattern,omitempty"`
	// Extract is the part of a matching tag that is compared, with "$name"
	// or "${1}" references to the groups of pattern, e.g. "$ts". Empty
	// means the whole tag. Needs pattern.
	// +optional
	Extract string `json:"extract,omitempty"`
	// Order compares the extracted parts when semver is not set:
	// "Alphabetical" or "Numerical". The highest wins.
	// +optional
	Order TagOrder `json:"order,omitempty"`
}

// ImageStatus holds the generations of an Image.
type ImageStatus struct {
	// HashReferences are the digest references this Image resolved to,
	// newest first, at most 25.
	// +optional
	// +listType=atomic
	HashReferences []HashReference `json:"hashReferences,omitempty"`
	// CurrentReference is the digest reference consumers should run:
	// spec.pinnedReference when set, else the newest generation's
	// imageReference. The server maintains it on every write.
	// +optional
	CurrentReference string `json:"currentReference,omitempty"`
	// LastCheckedAt is when Tagger last checked spec.from on its own (on
	// schedule, or asked by a registry webhook). Replicas claim a check by
	// writing it, so each interval sees one check. To the microsecond.
	// +optional
	LastCheckedAt *metav1.MicroTime `json:"lastCheckedAt,omitempty"`
	// Conditions hold "Checked", the outcome of the last check Tagger made
	// on its own: True with reason Unchanged (the source still resolves to
	// the recorded digest), ImportStarted (it moved: the message names the
	// ImageImport) or ImageImported; False with reason CheckFailed or
	// ImportFailed and why; Unknown with reason Checking while the first
	// check under a new spec runs.
	// +optional
	// +listType=map
	// +listMapKey=type
	Conditions []metav1.Condition `json:"conditions,omitempty"`
}

// HashReference is one generation of an Image: where it came from and the
// digest reference it resolved to.
type HashReference struct {
	// From is the reference the generation was imported from, usually a tag.
	From string `json:"from"`
	// ResolvedAt is when the registry answered the digest for From (the
	// manifest HEAD or GET of the import, or the manifest PUT of a push),
	// to the microsecond. Generations are ordered by it, newest first: a
	// slow import that resolved before a fast one is older, whichever
	// finishes last. Records written before this field existed order by
	// importedAt.
	// +optional
	ResolvedAt metav1.MicroTime `json:"resolvedAt,omitempty"`
	// ImportedAt is when the generation was recorded (the import, mirror
	// copy included, finished).
	ImportedAt metav1.Time `json:"importedAt"`
	// ImageReference is the digest reference ("registry/repo@sha256:...")
	// of the generation; it points at the mirror registry when mirrored.
	ImageReference string `json:"imageReference"`
}

// +k8s:deepcopy-gen:interfaces=k8s.io/apimachinery/pkg/runtime.Object

// ImageList is a list of Images.
type ImageList struct {
	metav1.TypeMeta `json:",inline"`
	// Standard list metadata.
	// +optional
	metav1.ListMeta `json:"metadata,omitempty"`

	// Items are the Images.
	Items []Image `json:"items"`
}

// +genclient
// +k8s:deepcopy-gen:interfaces=k8s.io/apimachinery/pkg/runtime.Object

// ImageImport asks Tagger to import a new generation into an Image. The
// import runs while the ImageImport is created: the create request returns
// with the result already in the status.
type ImageImport struct {
	metav1.TypeMeta `json:",inline"`
	// Standard object metadata.
	// +optional
	metav1.ObjectMeta `json:"metadata,omitempty"`

	// Spec says what to import and into which Image.
	Spec ImageImportSpec `json:"spec"`
	// Status is the outcome of the import.
	// +optional
	Status ImageImportStatus `json:"status,omitempty"`
}

// ImageImportSpec says what to import. Fields left unset are taken from the
// target Image; the stored ImageImport records the values actually used.
type ImageImportSpec struct {
	// TargetImage is the name of the Image, in the same namespace, that
	// receives the new generation. It is created when it does not exist.
	// +required
	TargetImage string `json:"targetImage"`
	// From is the source reference; defaults to the target Image's spec.from.
	// +optional
	From string `json:"from,omitempty"`
	// Mirror copies the image into the mirror registry; defaults to the
	// target Image's spec.mirror.
	// +optional
	Mirror *bool `json:"mirror,omitempty"`
	// Insecure skips TLS verification for the source; defaults to the
	// target Image's spec.insecure.
	// +optional
	Insecure *bool `json:"insecure,omitempty"`
	// TagPolicy chooses the tag of from among the repository's tags (from
	// then has no tag). It defaults to the target Image's spec.tagPolicy
	// when from is unset too.
	// +optional
	TagPolicy *TagPolicy `json:"tagPolicy,omitempty"`
}

// ImageImportStatus is the outcome of an ImageImport.
type ImageImportStatus struct {
	// HashReference is the generation this import produced.
	// +optional
	HashReference *HashReference `json:"hashReference,omitempty"`
	// ImportAttempts lists every attempt, oldest first, at most 10.
	// +optional
	// +listType=atomic
	ImportAttempts []ImportAttempt `json:"importAttempts,omitempty"`
	// Conditions hold the "Imported" condition (True once imported; False
	// with reason Progressing while the import runs, NoMoreAttempts once it
	// failed for good) and, after a failure, the "Failed" condition (True).
	// +optional
	// +listType=map
	// +listMapKey=type
	Conditions []metav1.Condition `json:"conditions,omitempty"`
}

// ImportAttempt records one attempt at importing.
type ImportAttempt struct {
	// When the attempt was made.
	When metav1.Time `json:"when"`
	// Succeed tells whether the attempt imported the image.
	Succeed bool `json:"succeed"`
	// Reason says why the attempt failed: the registry's error code and
	// message, never a response body, redacted and at most 1024 bytes.
	// +optional
	Reason string `json:"reason,omitempty"`
}

// +k8s:deepcopy-gen:interfaces=k8s.io/apimachinery/pkg/runtime.Object

// ImageImportList is a list of ImageImports.
type ImageImportList struct {
	metav1.TypeMeta `json:",inline"`
	// Standard list metadata.
	// +optional
	metav1.ListMeta `json:"metadata,omitempty"`

	// Items are the ImageImports.
	Items []ImageImport `json:"items"`
}

// +genclient
// +genclient:onlyVerbs=create
// +k8s:deepcopy-gen:interfaces=k8s.io/apimachinery/pkg/runtime.Object

// RegistryHook is the registry webhook of a namespace. Creating one (any
// name, or none) returns in its status the URL a registry calls when a tag
// is pushed, creating the namespace's token when there is none; nothing is
// stored but the token ("kubectl image hook-url" does this). A call
// re-imports the Images of the namespace whose spec.from names the pushed
// repository and tag (or whose tag policy admits the tag).
type RegistryHook struct {
	metav1.TypeMeta `json:",inline"`
	// Standard object metadata.
	// +optional
	metav1.ObjectMeta `json:"metadata,omitempty"`

	// Spec asks for the URL.
	// +optional
	Spec RegistryHookSpec `json:"spec,omitempty"`
	// Status is the hook of the namespace.
	// +optional
	Status RegistryHookStatus `json:"status,omitempty"`
}

// RegistryHookSpec asks for the hook URL of a namespace.
type RegistryHookSpec struct {
	// Rotate replaces the namespace's token with a new one: URLs given out
	// before stop working.
	// +optional
	Rotate bool `json:"rotate,omitempty"`
}

// RegistryHookStatus is the hook of a namespace.
type RegistryHookStatus struct {
	// URL is what registries call:
	// <base>/webhooks/tagger.dev/registry/<namespace>/<token>.
	// +optional
	URL string `json:"url,omitempty"`
	// Token authenticates calls: it is part of URL, and registries that
	// can sign or send a header use it too (GitHub's webhook secret,
	// Harbor's auth header and the distribution registry's Authorization
	// header as "Bearer <token>").
	// +optional
	Token string `json:"token,omitempty"`
}

// +k8s:conversion-gen:explicit-from=net/url.Values
// +k8s:deepcopy-gen:interfaces=k8s.io/apimachinery/pkg/runtime.Object

// ImagePushOptions are the query parameters of the images/push subresource,
// which relays OCI distribution API requests into the Image's mirror
// repository. Clients POST every request and name the registry method in
// "method"; the rest of the URL after ".../push" is the registry path below
// the repository ("blobs/uploads/", "blobs/<digest>", "manifests/<tag>").
type ImagePushOptions struct {
	metav1.TypeMeta `json:",inline"`

	// Path is the registry API path below the repository, taken from the URL.
	// +optional
	Path string `json:"path,omitempty"`
	// Method is the registry method the request stands for: HEAD, GET,
	// POST, PATCH, PUT or DELETE (upload sessions only). Empty means POST.
	// +optional
	Method string `json:"method,omitempty"`
}

// +k8s:conversion-gen:explicit-from=net/url.Values
// +k8s:deepcopy-gen:interfaces=k8s.io/apimachinery/pkg/runtime.Object

// ImagePullOptions are the query parameters of the images/pull
// subresource, which relays read-only OCI distribution API requests
// (blobs and manifests) from the Image's mirror repository.
type ImagePullOptions struct {
	metav1.TypeMeta `json:",inline"`

	// Path is the registry API path below the repository, taken from the URL.
	// +optional
	Path string `json:"path,omitempty"`
	// Method is the registry method the GET stands for: GET or HEAD. Empty
	// means GET.
	// +optional
	Method string `json:"method,omitempty"`
}
