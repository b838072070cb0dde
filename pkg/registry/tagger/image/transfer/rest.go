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

// Package transfer implements the images/push and images/pull
// subresources: relays of OCI distribution API requests, one blob, upload
// chunk or manifest each, into and out of the Image's mirror repository
// (pkg/registryproxy does the relaying). A manifest pushed by tag becomes a
// generation through the same create-or-append rule as an import.
package transfer

import (
	"context"
	"fmt"
	"net/http"
	"strings"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/util/validation/field"
	genericapirequest "k8s.io/apiserver/pkg/endpoints/request"
	"k8s.io/apiserver/pkg/registry/rest"
	"k8s.io/utils/clock"

	"tagger.dev/tagger/pkg/apis/tagger"
	"tagger.dev/tagger/pkg/apis/tagger/validation"
	"tagger.dev/tagger/pkg/importer"
	"tagger.dev/tagger/pkg/redact"
	"tagger.dev/tagger/pkg/registryproxy"
)

const (
	// PushedByAnnotation on a push record names the user who pushed.
	PushedByAnnotation = "tagger.dev/pushed-by"
	// MaxManifestBytes bounds a manifest, as registries do (4 MiB).
	MaxManifestBytes = 4 << 20
	// DefaultMaxPushBytes bounds a blob or manifest pushed when
	// Deps.MaxPushBytes is 0.
	DefaultMaxPushBytes = 10 << 30
)

// Images is the Images storage as pushes and pulls use it.
type Images interface {
	// Get returns the Image name of the namespace in ctx.
	Get(ctx context.Context, name string) (*tagger.Image, error)
	// AddGeneration records ref in the Image name, creating it with spec
	// when missing: the rule imports follow too.
	AddGeneration(ctx context.Context, name string, spec tagger.ImageSpec, ref tagger.HashReference) (*tagger.Image, error)
}

// MirrorSource says where an Image is mirrored.
type MirrorSource interface {
	Mirror(ctx context.Context, namespace, name string) (*importer.Mirror, error)
}

// PushRecorder stores the record of a push: an ImageImport whose status
// says what was pushed, and an event on it.
type PushRecorder interface {
	RecordPush(ctx context.Context, ii *tagger.ImageImport) (*tagger.ImageImport, error)
}

// Deps are what images/push and images/pull need.
type Deps struct {
	Images  Images
	Mirrors MirrorSource
	Records PushRecorder
	Proxy   *registryproxy.Proxy
	// MaxPushBytes bounds each blob (all of its upload requests together)
	// and each manifest pushed; 0 means DefaultMaxPushBytes.
	MaxPushBytes int64
	Clock        clock.Clock
}

func (d *Deps) complete() error {
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
	deps Deps
}

// PullREST implements the images/pull subresource: a read-only relay of
// blobs and manifests from the Image's mirror repository. Every request is
// a GET (RBAC: get images/pull); "method" may say HEAD.
type PullREST struct {
	deps Deps
}

var (
	_ rest.Connecter       = &PushREST{}
	_ rest.StorageMetadata = &PushREST{}
	_ rest.Connecter       = &PullREST{}
	_ rest.StorageMetadata = &PullREST{}
)

// NewREST returns the storage of images/push and images/pull.
func NewREST(deps Deps) (*PushREST, *PullREST, error) {
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

// validateName refuses names no Image can have, before anything else:
// they would become mirror repositories (or fail as such) otherwise.
func validateName(name string) error {
	if name == "" {
		return apierrors.NewBadRequest("an Image name is required")
	}
	var errs field.ErrorList
	for _, msg := range validation.ValidateImageName(name, false) {
		errs = append(errs, field.Invalid(field.NewPath("metadata", "name"), name, msg))
	}
	if len(errs) > 0 {
		return apierrors.NewInvalid(tagger.Kind("Image"), name, errs)
	}
	return nil
}

// basePath is the URL of the subresource, which Locations are rewritten to.
func basePath(namespace, name, sub string) string {
	return fmt.Sprintf("/apis/%s/v1beta1/namespaces/%s/images/%s/%s", tagger.GroupName, namespace, name, sub)
}

// endpoint is how registryproxy reaches a mirror.
func endpoint(m *importer.Mirror) registryproxy.Endpoint {
	e := registryproxy.Endpoint{Repository: m.Repository, Insecure: m.Insecure}
	if c := m.Credential; c != nil {
		e.Username, e.Password, e.Token = c.Username, c.Password, c.Token
	}
	return e
}

// connect checks a relayed request and connects to the Image's mirror
// repository: everything that can be refused is refused here, before the
// mirror sees a byte.
func connect(ctx context.Context, deps *Deps, name, method, path, defaultMethod, sub string, allowed map[registryproxy.PathKind][]string) (*transfer, error) {
	if err := validateName(name); err != nil {
		return nil, err
	}
	method, p, err := parseRequest(method, path, defaultMethod, sub, allowed)
	if err != nil {
		return nil, err
	}
	namespace := genericapirequest.NamespaceValue(ctx)
	mirror, err := deps.Mirrors.Mirror(ctx, namespace, name)
	if err != nil {
		return nil, apierrors.NewBadRequest(redact.Message(fmt.Sprintf("%sing needs a mirror registry: %v", sub, err)))
	}
	repo, err := deps.Proxy.Repository(ctx, endpoint(mirror), sub == "push")
	if err != nil {
		return nil, apierrors.NewServiceUnavailable(redact.Error(err, mirror.Credential.Secrets()...))
	}
	return &transfer{deps: deps, namespace: namespace, name: name, method: method, path: p, mirror: mirror, repo: repo, base: basePath(namespace, name, sub)}, nil
}

// Connect implements rest.Connecter.
func (r *PushREST) Connect(ctx context.Context, name string, obj runtime.Object, responder rest.Responder) (http.Handler, error) {
	opts, ok := obj.(*tagger.ImagePushOptions)
	if !ok {
		return nil, apierrors.NewBadRequest(fmt.Sprintf("unexpected options %T", obj))
	}
	// The reserved tags are refused before anything else too.
	if p, err := registryproxy.ParsePath(opts.Path); err == nil && p.Kind == registryproxy.Manifest && !p.IsDigest() && strings.HasPrefix(p.Ref, "tagger-") {
		return nil, apierrors.NewBadRequest(fmt.Sprintf("tag %q is reserved: Tagger's own tags (tagger-sha256-...) keep generations from registry garbage collection; push under another tag", p.Ref))
	}
	t, err := connect(ctx, &r.deps, name, opts.Method, opts.Path, http.MethodPost, "push", pushMethods)
	if err != nil {
		return nil, err
	}
	t.responder = responder
	return http.HandlerFunc(t.push), nil
}

// Connect implements rest.Connecter.
func (r *PullREST) Connect(ctx context.Context, name string, obj runtime.Object, responder rest.Responder) (http.Handler, error) {
	opts, ok := obj.(*tagger.ImagePullOptions)
	if !ok {
		return nil, apierrors.NewBadRequest(fmt.Sprintf("unexpected options %T", obj))
	}
	if err := validateName(name); err != nil {
		return nil, err
	}
	img, err := r.deps.Images.Get(ctx, name)
	if err != nil {
		return nil, err
	}
	t, err := connect(ctx, &r.deps, name, opts.Method, opts.Path, http.MethodGet, "pull", pullMethods)
	if err != nil {
		return nil, err
	}
	t.responder, t.image = responder, img
	return http.HandlerFunc(t.pull), nil
}
