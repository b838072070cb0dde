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

// Package podimages is the HTTP mutating admission webhook that makes pods
// run the current generation of the Images they name. It is served by
// tagger-apiserver itself (see Handler) and called by kube-apiserver for
// pods in namespaces labelled tagger.dev/resolve=enabled. It answers only
// kube-apiserver: callers must present a client certificate that the
// server's client CAs verify and whose common name is allowed (Callers), as
// kube-apiserver does when given an admission kubeconfig.
//
// Which images are resolved:
//
//   - "tagger.dev/<name>" always means the Image <name> of the pod's
//     namespace; the pod is refused when that Image does not exist or has no
//     generation yet, or when a tag or digest is added.
//   - A bare name ("app": no registry host, no tag, no digest) is resolved
//     when an Image of that name exists in the pod's namespace (creating the
//     Image is the opt-in), refused when that Image has no generation yet, and
//     left alone when there is no such Image.
//   - Anything else ("nginx:1.27", "quay.io/org/app", "app@sha256:...") is
//     left alone.
package podimages

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"regexp"
	"sort"
	"strings"

	admissionv1 "k8s.io/api/admission/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/serializer"
	"k8s.io/klog/v2"

	"tagger.dev/tagger/pkg/apis/tagger"
	"tagger.dev/tagger/pkg/importer"
	"tagger.dev/tagger/pkg/metrics"
	"tagger.dev/tagger/pkg/redact"
)

const (
	// Path is where tagger-apiserver serves the webhook.
	Path = "/webhooks/tagger.dev/pods"
	// NamespaceLabel opts a namespace in; the MutatingWebhookConfiguration
	// selects on it and the handler checks it again.
	NamespaceLabel = "tagger.dev/resolve"
	// NamespaceLabelValue is the value of NamespaceLabel that opts in.
	NamespaceLabelValue = "enabled"
	// ExplicitPrefix marks an image that must name an Image of the namespace.
	ExplicitPrefix = "tagger.dev/"
	// ResolvedAnnotation records, on the pod, what was resolved from what:
	// a JSON object container name -> {"from": ..., "image": ...}.
	ResolvedAnnotation = "tagger.dev/resolved-images"
	// PullSecretName is the Secret Tagger keeps in a namespace so that pods
	// can pull from a mirror that needs credentials.
	PullSecretName = "tagger-mirror-pull"
	// ManagedByLabel marks the pull Secret as Tagger's.
	ManagedByLabel = "app.kubernetes.io/managed-by"
	managedByValue = "tagger"
)

// Images reads Images.
type Images interface {
	// Get returns the Image namespace/name; a NotFound error when there is none.
	Get(ctx context.Context, namespace, name string) (*tagger.Image, error)
}

// Mirrors tells where the Images of a namespace are mirrored.
type Mirrors interface {
	Mirror(ctx context.Context, namespace, name string) (*importer.Mirror, error)
}

// PullSecrets keeps the Secret that lets pods of a namespace pull from the
// mirror.
type PullSecrets interface {
	// Ensure makes the namespace's pull Secret hold cred for host and returns
	// its name.
	Ensure(ctx context.Context, namespace, host string, cred importer.Credential) (string, error)
}

// Handler is the webhook. Mirrors and PullSecrets may be nil (no pull
// secrets then); OptedIn may be nil (every namespace the configuration sends
// is resolved). Callers must be set: without it every request is refused.
type Handler struct {
	// Callers says who may call the webhook: kube-apiserver, by its client
	// certificate.
	Callers     *Callers
	Images      Images
	Mirrors     Mirrors
	PullSecrets PullSecrets
	// OptedIn tells whether a namespace carries NamespaceLabel: reviews for
	// other namespaces, which the webhook configuration does not send, are
	// answered without change.
	OptedIn func(namespace string) (bool, error)
}

var codecs = serializer.NewCodecFactory(newScheme())

func newScheme() *runtime.Scheme {
	s := runtime.NewScheme()
	_ = admissionv1.AddToScheme(s)
	return s
}

// MaxReviewBytes bounds the body of a review: a pod and, for an update,
// its previous version, each within kube-apiserver's 3 MiB request limit,
// and the review around them.
const MaxReviewBytes = 2*(3<<20) + 256<<10

// ServeHTTP answers an admission.k8s.io/v1 AdmissionReview from an allowed
// caller; others are refused before their body is read.
func (h *Handler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if code, err := h.Callers.Check(r); err != nil {
		metrics.WebhookCalls.WithLabelValues("pods", "refused").Inc()
		klog.V(2).InfoS("Refused a pod webhook call", "remote", r.RemoteAddr, "reason", err.Error())
		http.Error(w, redact.Message(err.Error()), code)
		return
	}
	if r.Method != http.MethodPost {
		http.Error(w, "POST an AdmissionReview", http.StatusMethodNotAllowed)
		return
	}
	if r.ContentLength > MaxReviewBytes {
		http.Error(w, fmt.Sprintf("a pod review is at most %d bytes", MaxReviewBytes), http.StatusRequestEntityTooLarge)
		return
	}
	body, err := io.ReadAll(io.LimitReader(r.Body, MaxReviewBytes+1))
	if err != nil {
		http.Error(w, redact.Error(err), http.StatusBadRequest)
		return
	}
	if len(body) > MaxReviewBytes {
		http.Error(w, fmt.Sprintf("a pod review is at most %d bytes", MaxReviewBytes), http.StatusRequestEntityTooLarge)
		return
	}
	review := &admissionv1.AdmissionReview{}
	if _, _, err := codecs.UniversalDeserializer().Decode(body, nil, review); err != nil {
		http.Error(w, "not an AdmissionReview: "+redact.Error(err), http.StatusBadRequest)
		return
	}
	if review.Request == nil {
		http.Error(w, "AdmissionReview without request", http.StatusBadRequest)
		return
	}
	resp := h.Review(r.Context(), review.Request)
	resp.UID = review.Request.UID
	result := "allowed"
	if !resp.Allowed {
		result = "denied"
	}
	metrics.WebhookCalls.WithLabelValues("pods", result).Inc()
	out := &admissionv1.AdmissionReview{TypeMeta: review.TypeMeta, Response: resp}
	if out.APIVersion == "" {
		out.APIVersion, out.Kind = admissionv1.SchemeGroupVersion.String(), "AdmissionReview"
	}
	w.Header().Set("Content-Type", "application/json")
	if err := json.NewEncoder(w).Encode(out); err != nil {
		klog.ErrorS(err, "Writing admission response")
	}
}

// Resolved is what the pod annotation records for one container.
type Resolved struct {
	From  string `json:"from"`
	Image string `json:"image"`
}

// Review decides on one request: pods CREATE and UPDATE, and
// pods/ephemeralcontainers UPDATE (how ephemeral containers are added).
// Everything else is allowed unchanged.
func (h *Handler) Review(ctx context.Context, req *admissionv1.AdmissionRequest) *admissionv1.AdmissionResponse {
	allow := &admissionv1.AdmissionResponse{Allowed: true}
	if req.Resource.Group != "" || req.Resource.Resource != "pods" {
		return allow
	}
	ephemeral, update := false, false
	switch {
	case req.Operation == admissionv1.Create && req.SubResource == "":
	case req.Operation == admissionv1.Update && req.SubResource == "":
		// "kubectl set image pod/..." changes images of a running pod.
		update = true
	case req.Operation == admissionv1.Update && req.SubResource == "ephemeralcontainers":
		ephemeral = true
	default:
		return allow
	}
	if h.OptedIn != nil {
		ok, err := h.OptedIn(req.Namespace)
		if err != nil {
			return errored(http.StatusInternalServerError, fmt.Errorf("namespace %s: %w", req.Namespace, err))
		}
		if !ok {
			return allow
		}
	}
	pod := &corev1.Pod{}
	if err := json.Unmarshal(req.Object.Raw, pod); err != nil {
		return errored(http.StatusBadRequest, fmt.Errorf("not a Pod: %w", err))
	}
	namespace := req.Namespace
	if namespace == "" {
		namespace = pod.Namespace
	}
	r := &resolver{h: h, ctx: ctx, namespace: namespace, resolved: map[string]Resolved{},
		dryRun: req.DryRun != nil && *req.DryRun}
	old := &corev1.Pod{}
	if (ephemeral || update) && len(req.OldObject.Raw) > 0 {
		if err := json.Unmarshal(req.OldObject.Raw, old); err != nil {
			return errored(http.StatusBadRequest, fmt.Errorf("old object not a Pod: %w", err))
		}
	}
	if update {
		// Only images the update changes; earlier resolutions stay recorded.
		_ = json.Unmarshal([]byte(pod.Annotations[ResolvedAnnotation]), &r.resolved)
		before := map[string]string{}
		for _, c := range append(append([]corev1.Container{}, old.Spec.InitContainers...), old.Spec.Containers...) {
			before[c.Name] = c.Image
		}
		for i, c := range pod.Spec.InitContainers {
			if before[c.Name] != c.Image {
				r.container(fmt.Sprintf("/spec/initContainers/%d/image", i), c.Name, c.Image)
			}
		}
		for i, c := range pod.Spec.Containers {
			if before[c.Name] != c.Image {
				r.container(fmt.Sprintf("/spec/containers/%d/image", i), c.Name, c.Image)
			}
		}
	} else if ephemeral {
		existing := map[string]bool{}
		for _, c := range old.Spec.EphemeralContainers {
			existing[c.Name] = true
		}
		for i, c := range pod.Spec.EphemeralContainers {
			if existing[c.Name] {
				continue // ephemeral containers cannot change once added
			}
			r.container(fmt.Sprintf("/spec/ephemeralContainers/%d/image", i), c.Name, c.Image)
		}
	} else {
		for i, c := range pod.Spec.InitContainers {
			r.container(fmt.Sprintf("/spec/initContainers/%d/image", i), c.Name, c.Image)
		}
		for i, c := range pod.Spec.Containers {
			r.container(fmt.Sprintf("/spec/containers/%d/image", i), c.Name, c.Image)
		}
	}
	if len(r.denied) > 0 {
		return &admissionv1.AdmissionResponse{Result: &metav1.Status{
			Status: metav1.StatusFailure, Code: http.StatusForbidden, Reason: metav1.StatusReasonForbidden,
			Message: strings.Join(r.denied, "; "),
		}}
	}
	if r.err != nil {
		return errored(http.StatusInternalServerError, r.err)
	}
	if len(r.patch) == 0 {
		return allow
	}
	// The ephemeralcontainers subresource keeps only ephemeral container
	// changes: metadata and imagePullSecrets cannot be patched there.
	if !ephemeral {
		r.annotate(pod)
	}
	// A pod's imagePullSecrets cannot change after creation.
	if !ephemeral && !update {
		if err := r.pullSecret(pod); err != nil {
			return errored(http.StatusInternalServerError, err)
		}
	}
	patch, err := json.Marshal(r.patch)
	if err != nil {
		return errored(http.StatusInternalServerError, err)
	}
	pt := admissionv1.PatchTypeJSONPatch
	return &admissionv1.AdmissionResponse{Allowed: true, Patch: patch, PatchType: &pt}
}

func errored(code int32, err error) *admissionv1.AdmissionResponse {
	return &admissionv1.AdmissionResponse{Result: &metav1.Status{
		Status: metav1.StatusFailure, Code: code, Message: redact.Error(err),
	}}
}

// patchOp is one JSON Patch (RFC 6902) operation.
type patchOp struct {
	Op    string `json:"op"`
	Path  string `json:"path"`
	Value any    `json:"value,omitempty"`
}

type resolver struct {
	h         *Handler
	ctx       context.Context
	namespace string
	// dryRun: the pull Secret is named but not written (sideEffects: NoneOnDryRun).
	dryRun bool

	patch    []patchOp
	resolved map[string]Resolved
	// images resolved, name -> Image, for pull secrets
	images map[string]*tagger.Image
	denied []string
	err    error
}

// bareName is an Image name (a DNS subdomain) as an image reference without
// registry, tag or digest.
var bareName = regexp.MustCompile(`^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$`)

// Target returns the Image an image field names, and whether it must exist.
// ok is false when the field is left alone; an error means a malformed
// explicit reference.
func Target(image string) (name string, explicit, ok bool, err error) {
	if rest, found := strings.CutPrefix(image, ExplicitPrefix); found {
		if !bareName.MatchString(rest) || len(rest) > 253 {
			return "", true, false, fmt.Errorf("image %q: %s<name> names an Image of the pod's namespace and takes no tag, digest or path", image, ExplicitPrefix)
		}
		return rest, true, true, nil
	}
	if len(image) <= 253 && bareName.MatchString(image) {
		return image, false, true, nil
	}
	return "", false, false, nil
}

func (r *resolver) container(path, container, image string) {
	name, explicit, ok, err := Target(image)
	if err != nil {
		r.denied = append(r.denied, fmt.Sprintf("container %q: %v", container, err))
		return
	}
	if !ok {
		return
	}
	img, err := r.h.Images.Get(r.ctx, r.namespace, name)
	switch {
	case apierrors.IsNotFound(err):
		if explicit {
			metrics.PodResolutions.WithLabelValues("refused").Inc()
			r.denied = append(r.denied, fmt.Sprintf("container %q: image %q: Image %q not found in namespace %q", container, image, name, r.namespace))
		}
		return
	case err != nil:
		if r.err == nil {
			r.err = fmt.Errorf("container %q: reading Image %s/%s: %w", container, r.namespace, name, err)
		}
		return
	}
	current := img.Status.CurrentReference
	if current == "" {
		metrics.PodResolutions.WithLabelValues("refused").Inc()
		r.denied = append(r.denied, fmt.Sprintf("container %q: image %q: Image %q in namespace %q has no generation yet: import or push one first", container, image, name, r.namespace))
		return
	}
	r.patch = append(r.patch, patchOp{Op: "replace", Path: path, Value: current})
	r.resolved[container] = Resolved{From: image, Image: current}
	metrics.PodResolutions.WithLabelValues("resolved").Inc()
	if r.images == nil {
		r.images = map[string]*tagger.Image{}
	}
	r.images[name] = img
}

// annotate records the resolutions on the pod.
func (r *resolver) annotate(pod *corev1.Pod) {
	b, _ := json.Marshal(r.resolved) // map keys are sorted: stable output
	if pod.Annotations == nil {
		r.patch = append(r.patch, patchOp{Op: "add", Path: "/metadata/annotations", Value: map[string]string{ResolvedAnnotation: string(b)}})
		return
	}
	r.patch = append(r.patch, patchOp{Op: "add", Path: "/metadata/annotations/" + escape(ResolvedAnnotation), Value: string(b)})
}

// pullSecret adds the namespace's mirror pull Secret when a resolved image is
// in a mirror that needs credentials.
func (r *resolver) pullSecret(pod *corev1.Pod) error {
	if r.h.Mirrors == nil || r.h.PullSecrets == nil {
		return nil
	}
	names := make([]string, 0, len(r.images))
	for n := range r.images {
		names = append(names, n)
	}
	sort.Strings(names)
	added := map[string]bool{}
	for _, s := range pod.Spec.ImagePullSecrets {
		added[s.Name] = true
	}
	for _, n := range names {
		img := r.images[n]
		m, err := r.h.Mirrors.Mirror(r.ctx, r.namespace, n)
		if err != nil || m == nil || m.Credential == nil {
			continue // no mirror, or one that needs no credentials
		}
		if !strings.HasPrefix(img.Status.CurrentReference, m.Repository+"@") {
			continue // not a mirrored generation
		}
		host, _, _ := strings.Cut(m.Repository, "/")
		secret := PullSecretName
		if !r.dryRun {
			var err error
			if secret, err = r.h.PullSecrets.Ensure(r.ctx, r.namespace, host, *m.Credential); err != nil {
				return fmt.Errorf("pull secret for mirror %s: %w", host, err)
			}
		}
		if added[secret] {
			continue
		}
		added[secret] = true
		ref := corev1.LocalObjectReference{Name: secret}
		if len(pod.Spec.ImagePullSecrets) == 0 && len(added) == 1 {
			r.patch = append(r.patch, patchOp{Op: "add", Path: "/spec/imagePullSecrets", Value: []corev1.LocalObjectReference{ref}})
		} else {
			r.patch = append(r.patch, patchOp{Op: "add", Path: "/spec/imagePullSecrets/-", Value: ref})
		}
	}
	return nil
}

// escape escapes a JSON Pointer segment (RFC 6901).
func escape(s string) string {
	return strings.ReplaceAll(strings.ReplaceAll(s, "~", "~0"), "/", "~1")
}
