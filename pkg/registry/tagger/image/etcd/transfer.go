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

package etcd

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"strings"

	"github.com/opencontainers/go-digest"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	genericapirequest "k8s.io/apiserver/pkg/endpoints/request"
	"k8s.io/apiserver/pkg/registry/rest"
	"k8s.io/klog/v2"
	"k8s.io/utils/clock"
	"k8s.io/utils/ptr"

	"tagger.dev/tagger/pkg/apis/tagger"
	"tagger.dev/tagger/pkg/importer"
	"tagger.dev/tagger/pkg/redact"
	"tagger.dev/tagger/pkg/registryproxy"
)

const (
	// HeadContentLengthHeader carries the Content-Length of a relayed HEAD:
	// the relayed request is a POST or GET, whose own answer has no body.
	HeadContentLengthHeader = "Tagger-Content-Length"
	// ImageReferenceHeader, on the answer to a manifest PUT by tag, is the
	// generation the push recorded.
	ImageReferenceHeader = "Tagger-Image-Reference"
	// PushedByAnnotation on a push record names the user who pushed.
	PushedByAnnotation = "tagger.dev/pushed-by"

	// MaxManifestBytes bounds a manifest, as registries do (4 MiB).
	MaxManifestBytes = 4 << 20
	// DefaultMaxPushBytes bounds a blob or manifest pushed when
	// TransferDeps.MaxPushBytes is 0.
	DefaultMaxPushBytes = 10 << 30
)

// MirrorSource says where an Image is mirrored.
type MirrorSource interface {
	Mirror(ctx context.Context, namespace, name string) (*importer.Mirror, error)
}

// PushRecorder stores the record of a push: an ImageImport whose status
// says what was pushed, and an event on it.
type PushRecorder interface {
	RecordPush(ctx context.Context, ii *tagger.ImageImport) (*tagger.ImageImport, error)
}

// TransferDeps are what images/push and images/pull need.
type TransferDeps struct {
	Images  *Registry
	Mirrors MirrorSource
	Records PushRecorder
	Proxy   *registryproxy.Proxy
	// MaxPushBytes bounds each blob and manifest pushed; 0 means
	// DefaultMaxPushBytes.
	MaxPushBytes int64
	Clock        clock.Clock
}

func (d *TransferDeps) complete() error {
	if d.Images == nil || d.Mirrors == nil || d.Records == nil {
		return fmt.Errorf("images/push and images/pull need images, mirrors and records")
	}
	if d.Proxy == nil {
		d.Proxy = registryproxy.New()
	}
	if d.MaxPushBytes <= 0 {
		d.MaxPushBytes = DefaultMaxPushBytes
	}
	if d.Clock == nil {
		d.Clock = clock.RealClock{}
	}
	return nil
}

// PushREST implements the images/push subresource: a relay of OCI
// distribution API requests into the Image's mirror repository. Every
// request is a POST (RBAC: create images/push) whose "method" parameter
// names the registry method; a manifest PUT by tag records a generation.
type PushREST struct {
	deps TransferDeps
}

// PullREST implements the images/pull subresource: a read-only relay of
// blobs and manifests from the Image's mirror repository. Every request is
// a GET (RBAC: get images/pull); "method" may say HEAD.
type PullREST struct {
	deps TransferDeps
}

var (
	_ rest.Connecter       = &PushREST{}
	_ rest.StorageMetadata = &PushREST{}
	_ rest.Connecter       = &PullREST{}
	_ rest.StorageMetadata = &PullREST{}
)

// NewTransferREST returns the storage of images/push and images/pull.
func NewTransferREST(deps TransferDeps) (*PushREST, *PullREST, error) {
	if err := deps.complete(); err != nil {
		return nil, nil, err
	}
	return &PushREST{deps: deps}, &PullREST{deps: deps}, nil
}

// New implements rest.Storage.
func (r *PushREST) New() runtime.Object { return &tagger.Image{} }

// Destroy implements rest.Storage.
func (r *PushREST) Destroy() {}

// NewConnectOptions implements rest.Connecter: the URL below .../push is
// the registry path.
func (r *PushREST) NewConnectOptions() (runtime.Object, bool, string) {
	return &tagger.ImagePushOptions{}, true, "path"
}

// ConnectMethods implements rest.Connecter.
func (r *PushREST) ConnectMethods() []string { return []string{http.MethodPost} }

// ProducesMIMETypes implements rest.StorageMetadata.
func (r *PushREST) ProducesMIMETypes(verb string) []string {
	return []string{"application/json", "application/octet-stream"}
}

// ProducesObject implements rest.StorageMetadata: registry answers, not objects.
func (r *PushREST) ProducesObject(verb string) interface{} { return "" }

// New implements rest.Storage.
func (r *PullREST) New() runtime.Object { return &tagger.Image{} }

// Destroy implements rest.Storage.
func (r *PullREST) Destroy() {}

// NewConnectOptions implements rest.Connecter.
func (r *PullREST) NewConnectOptions() (runtime.Object, bool, string) {
	return &tagger.ImagePullOptions{}, true, "path"
}

// ConnectMethods implements rest.Connecter.
func (r *PullREST) ConnectMethods() []string { return []string{http.MethodGet} }

// ProducesMIMETypes implements rest.StorageMetadata.
func (r *PullREST) ProducesMIMETypes(verb string) []string {
	return []string{"application/octet-stream", "application/vnd.oci.image.manifest.v1+json", "application/vnd.oci.image.index.v1+json"}
}

// ProducesObject implements rest.StorageMetadata.
func (r *PullREST) ProducesObject(verb string) interface{} { return "" }

// pushMethods are the registry methods each kind of path takes on push.
var pushMethods = map[registryproxy.PathKind][]string{
	registryproxy.UploadStart: {http.MethodPost},
	registryproxy.Upload:      {http.MethodGet, http.MethodPatch, http.MethodPut, http.MethodDelete},
	registryproxy.Blob:        {http.MethodHead, http.MethodGet},
	registryproxy.Manifest:    {http.MethodHead, http.MethodGet, http.MethodPut},
}

var pullMethods = map[registryproxy.PathKind][]string{
	registryproxy.Blob:     {http.MethodHead, http.MethodGet},
	registryproxy.Manifest: {http.MethodHead, http.MethodGet},
}

// parseRequest checks the registry method and path of a relayed request.
func parseRequest(method, path, defaultMethod, sub string, allowed map[registryproxy.PathKind][]string) (string, registryproxy.Path, error) {
	method = strings.ToUpper(method)
	if method == "" {
		method = defaultMethod
	}
	p, err := registryproxy.ParsePath(path)
	if err != nil {
		return "", p, apierrors.NewBadRequest(err.Error())
	}
	for _, m := range allowed[p.Kind] {
		if m == method {
			return method, p, nil
		}
	}
	return "", p, apierrors.NewBadRequest(fmt.Sprintf("images/%s does not relay %s %s", sub, method, p))
}

// basePath is the URL of the subresource, which Locations are rewritten to.
func basePath(namespace, name, sub string) string {
	return fmt.Sprintf("/apis/%s/v1beta1/namespaces/%s/images/%s/%s", tagger.GroupName, namespace, name, sub)
}

// Connect implements rest.Connecter.
func (r *PushREST) Connect(ctx context.Context, name string, obj runtime.Object, responder rest.Responder) (http.Handler, error) {
	opts, ok := obj.(*tagger.ImagePushOptions)
	if !ok {
		return nil, apierrors.NewBadRequest(fmt.Sprintf("unexpected options %T", obj))
	}
	method, p, err := parseRequest(opts.Method, opts.Path, http.MethodPost, "push", pushMethods)
	if err != nil {
		return nil, err
	}
	if p.Kind == registryproxy.Manifest && method == http.MethodPut && !p.IsDigest() && strings.HasPrefix(p.Ref, "tagger-") {
		return nil, apierrors.NewBadRequest(fmt.Sprintf("tag %q is reserved: Tagger's own tags (tagger-sha256-...) keep generations from registry garbage collection; push under another tag", p.Ref))
	}
	namespace := genericapirequest.NamespaceValue(ctx)
	if errs := validationErrs(name); errs != nil {
		return nil, errs
	}
	mirror, err := r.deps.Mirrors.Mirror(ctx, namespace, name)
	if err != nil {
		return nil, apierrors.NewBadRequest(fmt.Sprintf("pushing needs a mirror registry: %v", err))
	}
	repo, err := r.deps.Proxy.Repository(ctx, mirror, true)
	if err != nil {
		return nil, apierrors.NewServiceUnavailable(redact.Error(err, mirror.Credential.Secrets()...))
	}
	t := &transfer{deps: &r.deps, namespace: namespace, name: name, method: method, path: p, mirror: mirror, repo: repo, base: basePath(namespace, name, "push"), responder: responder}
	return http.HandlerFunc(t.push), nil
}

// Connect implements rest.Connecter.
func (r *PullREST) Connect(ctx context.Context, name string, obj runtime.Object, responder rest.Responder) (http.Handler, error) {
	opts, ok := obj.(*tagger.ImagePullOptions)
	if !ok {
		return nil, apierrors.NewBadRequest(fmt.Sprintf("unexpected options %T", obj))
	}
	method, p, err := parseRequest(opts.Method, opts.Path, http.MethodGet, "pull", pullMethods)
	if err != nil {
		return nil, err
	}
	namespace := genericapirequest.NamespaceValue(ctx)
	img, err := r.deps.Images.Get(ctx, name)
	if err != nil {
		return nil, err
	}
	mirror, err := r.deps.Mirrors.Mirror(ctx, namespace, name)
	if err != nil {
		return nil, apierrors.NewBadRequest(fmt.Sprintf("pulling needs a mirror registry: %v", err))
	}
	repo, err := r.deps.Proxy.Repository(ctx, mirror, false)
	if err != nil {
		return nil, apierrors.NewServiceUnavailable(redact.Error(err, mirror.Credential.Secrets()...))
	}
	t := &transfer{deps: &r.deps, namespace: namespace, name: name, method: method, path: p, mirror: mirror, repo: repo, base: basePath(namespace, name, "pull"), responder: responder, image: img}
	return http.HandlerFunc(t.pull), nil
}

func validationErrs(name string) error {
	if name == "" {
		return apierrors.NewBadRequest("an Image name is required")
	}
	return nil
}

// transfer is one relayed registry request.
type transfer struct {
	deps      *TransferDeps
	namespace string
	name      string
	method    string
	path      registryproxy.Path
	mirror    *importer.Mirror
	repo      *registryproxy.Repository
	base      string
	responder rest.Responder
	image     *tagger.Image // pull only
}

// query is the registry's part of the request's query: the relay's own
// parameters are dropped, and so are cross-repository mounts, which would
// let a pusher read blobs of repositories it has no access to.
func (t *transfer) query(req *http.Request) url.Values {
	q := req.URL.Query()
	q.Del("method")
	q.Del("path")
	if t.path.Kind == registryproxy.UploadStart {
		q.Del("mount")
		q.Del("from")
	}
	return q
}

func (t *transfer) push(w http.ResponseWriter, req *http.Request) {
	defer req.Body.Close()
	if t.path.Kind == registryproxy.Manifest && t.method == http.MethodPut {
		t.putManifest(w, req)
		return
	}
	var body io.Reader
	size := int64(-1)
	switch t.method {
	case http.MethodPatch, http.MethodPut, http.MethodPost:
		if req.ContentLength > t.deps.MaxPushBytes {
			t.responder.Error(tooLarge(t.deps.MaxPushBytes))
			return
		}
		body, size = http.MaxBytesReader(w, req.Body, t.deps.MaxPushBytes), req.ContentLength
	}
	resp, err := t.repo.Do(req.Context(), t.method, t.path, t.query(req), req.Header, body, size)
	if err != nil {
		t.fail(err)
		return
	}
	defer resp.Body.Close()
	// A chunked upload is bounded as a whole: the registry's Range says how
	// much it holds.
	if t.method == http.MethodPatch && resp.StatusCode == http.StatusAccepted {
		if end := rangeEnd(resp.Header.Get("Range")); end >= t.deps.MaxPushBytes {
			t.cancelUpload(req.Context(), resp.Header.Get("Location"))
			t.responder.Error(tooLarge(t.deps.MaxPushBytes))
			return
		}
	}
	t.write(w, resp, nil)
}

func (t *transfer) pull(w http.ResponseWriter, req *http.Request) {
	defer req.Body.Close()
	resp, err := t.repo.Do(req.Context(), t.method, t.path, t.query(req), req.Header, nil, 0)
	if err != nil {
		t.fail(err)
		return
	}
	defer resp.Body.Close()
	if resp.StatusCode == http.StatusNotFound && t.path.Kind == registryproxy.Manifest && t.path.IsDigest() {
		for _, g := range t.image.Status.HashReferences {
			repo, d, _ := strings.Cut(g.ImageReference, "@")
			if d == t.path.Ref && repo != t.repo.Reference {
				t.responder.Error(apierrors.NewNotFound(tagger.Resource("images/pull"), fmt.Sprintf(
					"%s: generation %s was imported without mirroring and is not in the mirror; import it with mirroring first (kubectl image import %s --from %s --mirror) or pull %s directly",
					t.name, g.ImageReference, t.name, g.ImageReference, g.ImageReference)))
				return
			}
		}
	}
	t.write(w, resp, nil)
}

// putManifest relays a manifest PUT. A PUT by tag is a top-level push:
// it is also tagged for garbage collection and recorded as a generation.
// Manifests pushed by digest (the children of an index) are not.
func (t *transfer) putManifest(w http.ResponseWriter, req *http.Request) {
	// The handler runs with the request's context, which lacks the
	// namespace the storage needs.
	ctx := genericapirequest.WithNamespace(req.Context(), t.namespace)
	limit := min(int64(MaxManifestBytes), t.deps.MaxPushBytes)
	body, err := io.ReadAll(io.LimitReader(req.Body, limit+1))
	if err != nil {
		t.responder.Error(apierrors.NewBadRequest(fmt.Sprintf("reading manifest: %v", err)))
		return
	}
	if int64(len(body)) > limit {
		t.responder.Error(tooLarge(limit))
		return
	}
	dgst := digest.FromBytes(body)
	resp, err := t.repo.Do(ctx, http.MethodPut, t.path, t.query(req), req.Header, bytes.NewReader(body), int64(len(body)))
	if err != nil {
		t.fail(err)
		return
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusCreated || t.path.IsDigest() {
		t.write(w, resp, nil)
		return
	}
	if got := resp.Header.Get("Docker-Content-Digest"); got != "" && got != dgst.String() {
		t.responder.Error(apierrors.NewInternalError(fmt.Errorf("the mirror stored the manifest as %s, not %s", got, dgst)))
		return
	}
	gcTag := registryproxy.Path{Kind: registryproxy.Manifest, Ref: importer.MirrorTag(dgst.String())}
	header := http.Header{"Content-Type": req.Header.Values("Content-Type")}
	tagResp, err := t.repo.Do(ctx, http.MethodPut, gcTag, nil, header, bytes.NewReader(body), int64(len(body)))
	if err != nil {
		t.fail(err)
		return
	}
	_, _ = io.Copy(io.Discard, io.LimitReader(tagResp.Body, 1<<16))
	_ = tagResp.Body.Close()
	if tagResp.StatusCode != http.StatusCreated {
		t.responder.Error(apierrors.NewInternalError(fmt.Errorf("tagging %s in the mirror: %s", gcTag.Ref, tagResp.Status)))
		return
	}
	now := metav1.NewTime(t.deps.Clock.Now())
	ref := tagger.HashReference{
		From:           t.repo.Reference + ":" + t.path.Ref,
		ResolvedAt:     metav1.NewMicroTime(now.Time),
		ImportedAt:     now,
		ImageReference: t.repo.Reference + "@" + dgst.String(),
	}
	if err := t.record(ctx, ref); err != nil {
		klog.FromContext(ctx).Error(err, "Pushed image not recorded", "image", klog.KRef(t.namespace, t.name), "reference", ref.ImageReference)
		t.responder.Error(err)
		return
	}
	t.write(w, resp, http.Header{ImageReferenceHeader: {ref.ImageReference}})
}

// record adds the generation to the Image, creating the Image when this
// push is its first, and stores the record of the push.
func (t *transfer) record(ctx context.Context, ref tagger.HashReference) error {
	spec := tagger.ImageSpec{From: ref.From, Mirror: true, Insecure: t.mirror.Insecure}
	if _, err := t.deps.Images.AddGeneration(ctx, t.name, spec, ref); err != nil {
		return err
	}
	ii := &tagger.ImageImport{
		ObjectMeta: metav1.ObjectMeta{GenerateName: t.name + "-push-", Namespace: t.namespace},
		Spec: tagger.ImageImportSpec{
			TargetImage: t.name,
			From:        ref.From,
			Mirror:      ptr.To(true),
			Insecure:    ptr.To(t.mirror.Insecure),
		},
		Status: tagger.ImageImportStatus{
			HashReference:  &ref,
			ImportAttempts: []tagger.ImportAttempt{{When: ref.ImportedAt, Succeed: true}},
			Conditions: []metav1.Condition{{
				Type: tagger.ConditionImported, Status: metav1.ConditionTrue, Reason: tagger.ReasonImagePushed,
				Message: "pushed " + ref.ImageReference, LastTransitionTime: ref.ImportedAt,
			}},
		},
	}
	if u, ok := genericapirequest.UserFrom(ctx); ok && u.GetName() != "" {
		ii.Annotations = map[string]string{PushedByAnnotation: u.GetName()}
	}
	_, err := t.deps.Records.RecordPush(ctx, ii)
	return err
}

// write relays the registry's answer.
func (t *transfer) write(w http.ResponseWriter, resp *http.Response, extra http.Header) {
	h := w.Header()
	registryproxy.CopyHeaders(h, resp.Header, func(loc string) string { return t.repo.RewriteLocation(loc, t.base) })
	for k, v := range extra {
		h[k] = v
	}
	if t.method == http.MethodHead {
		if cl := resp.Header.Get("Content-Length"); cl != "" {
			h.Set(HeadContentLengthHeader, cl)
		}
		h.Del("Content-Length")
		w.WriteHeader(resp.StatusCode)
		return
	}
	w.WriteHeader(resp.StatusCode)
	_, _ = io.Copy(w, resp.Body)
}

// fail reports a relay that did not get an answer from the mirror.
func (t *transfer) fail(err error) {
	var tooBig *http.MaxBytesError
	switch {
	case errors.As(err, &tooBig):
		t.responder.Error(tooLarge(tooBig.Limit))
	case errors.Is(err, context.Canceled):
		t.responder.Error(apierrors.NewBadRequest("request cancelled"))
	default:
		t.responder.Error(apierrors.NewServiceUnavailable(redact.Message("mirror registry: "+err.Error(), t.mirror.Credential.Secrets()...)))
	}
}

// cancelUpload deletes an upload session, best effort.
func (t *transfer) cancelUpload(ctx context.Context, location string) {
	loc := t.repo.RewriteLocation(location, "")
	session, ok := strings.CutPrefix(strings.SplitN(loc, "?", 2)[0], "/blobs/uploads/")
	if !ok {
		return
	}
	q, _ := url.ParseQuery(strings.SplitN(loc+"?", "?", 2)[1])
	resp, err := t.repo.Do(ctx, http.MethodDelete, registryproxy.Path{Kind: registryproxy.Upload, Ref: session}, q, http.Header{}, nil, 0)
	if err == nil {
		_ = resp.Body.Close()
	}
}

func tooLarge(limit int64) error {
	return apierrors.NewRequestEntityTooLargeError(fmt.Sprintf("a pushed blob or manifest may not exceed %d bytes (tagger-apiserver --max-push-bytes)", limit))
}

// rangeEnd returns the last byte offset of a registry Range header "0-N",
// or -1.
func rangeEnd(r string) int64 {
	_, end, ok := strings.Cut(r, "-")
	if !ok {
		return -1
	}
	n, err := strconv.ParseInt(strings.TrimSpace(end), 10, 64)
	if err != nil {
		return -1
	}
	return n
}
