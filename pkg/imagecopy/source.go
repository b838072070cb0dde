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

package imagecopy

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"sync/atomic"

	"github.com/opencontainers/go-digest"
	"go.podman.io/image/v5/docker/reference"
	"go.podman.io/image/v5/image"
	"go.podman.io/image/v5/manifest"
	"go.podman.io/image/v5/types"
	"k8s.io/client-go/rest"

	"tagger.dev/tagger/pkg/registryproxy"
)

// A pull reads images/pull itself, as a containers/image ImageSource: no
// relay on 127.0.0.1 between the API server and the copy, so every byte
// crosses one connection less. containers/image still checks each blob
// against its digest (and the destination hashes it again as it writes).

// maxManifestBytes bounds a manifest, as registries do.
const maxManifestBytes = 4 << 20

// maxResumes bounds how often one blob's stream is resumed after a cut.
const maxResumes = 5

// puller sends GET requests to the images/pull subresource of one Image.
type puller struct {
	rt   http.RoundTripper
	base *url.URL
	// path is "/apis/tagger.dev/v1beta1/namespaces/<ns>/images/<name>/pull".
	path string
	repo string // "<ns>/<name>", for messages

	// plain is set once the API server answered an ordinary blob request
	// after refusing an upgraded one (see getBlob).
	plain atomic.Bool

	mu     sync.Mutex
	apiErr error
}

// newPuller connects to the API server t.Config names. Blobs stream over
// HTTP/1.1, a connection each (and an upgrade needs HTTP/1.1): HTTP/2
// multiplexes every blob of a pull onto one connection in frames, which
// cost kube-apiserver 0.4 CPU-s more per GiB, and the client as much.
func newPuller(t Target) (*puller, error) {
	if t.Config == nil || t.Namespace == "" || t.Name == "" {
		return nil, fmt.Errorf("a kubeconfig, a namespace and an Image name are needed")
	}
	cfg := rest.CopyConfig(t.Config)
	cfg.NextProtos = []string{"http/1.1"}
	base, _, err := rest.DefaultServerUrlFor(cfg)
	if err != nil {
		return nil, err
	}
	rt, err := rest.TransportFor(cfg)
	if err != nil {
		return nil, err
	}
	return &puller{
		rt: rt, base: base, repo: t.Namespace + "/" + t.Name,
		path: fmt.Sprintf("/apis/tagger.dev/v1beta1/namespaces/%s/images/%s/pull", t.Namespace, t.Name),
	}, nil
}

// get GETs the registry path below the Image's repository; an answer other
// than 2xx is an error. what names the object in errors.
func (p *puller) get(ctx context.Context, regPath, what string, header http.Header) (*http.Response, error) {
	return p.request(ctx, regPath, what, header, true)
}

// request is get; remember says whether a refusal of the API server is
// kept for Err.
func (p *puller) request(ctx context.Context, regPath, what string, header http.Header, remember bool) (*http.Response, error) {
	u := *p.base
	u.Path = strings.TrimSuffix(u.Path, "/") + p.path + "/" + regPath
	u.RawQuery = url.Values{"method": {http.MethodGet}}.Encode()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u.String(), nil)
	if err != nil {
		return nil, err
	}
	for k, v := range header {
		req.Header[k] = v
	}
	// No hop may compress a blob (layers are mostly compressed already, and
	// the digest is of the bytes as stored).
	req.Header.Set("Accept-Encoding", "identity")
	resp, err := p.rt.RoundTrip(req)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", what, err)
	}
	if resp.StatusCode == http.StatusSwitchingProtocols {
		if resp, err = readUpgraded(ctx, resp, req); err != nil {
			return nil, fmt.Errorf("%s: %w", what, err)
		}
	}
	if resp.StatusCode/100 != 2 {
		defer resp.Body.Close()
		return nil, p.responseError(resp, what, remember)
	}
	if ce := resp.Header.Get("Content-Encoding"); ce != "" && ce != "identity" {
		_ = resp.Body.Close()
		return nil, fmt.Errorf("%s: the API server answered with Content-Encoding %q", what, ce)
	}
	return resp, nil
}

// getBlob GETs a blob. It asks for it on a connection of its own
// (registryproxy.BlobStreamProtocol), which kube-apiserver's aggregator
// copies byte for byte. A Tagger server that does not upgrade answers as
// usual, which serves as well when it reaches the client; but
// kube-apiserver answers that with 503 ("invalid upgrade response"): a
// failed upgraded request is then asked again as an ordinary one, and
// once that works the rest of the pull asks for no upgrade.
func (p *puller) getBlob(ctx context.Context, regPath, what string, header http.Header) (*http.Response, error) {
	if !p.plain.Load() {
		up := header.Clone()
		if up == nil {
			up = http.Header{}
		}
		up.Set("Connection", "Upgrade")
		up.Set("Upgrade", registryproxy.BlobStreamProtocol)
		resp, err := p.request(ctx, regPath, what, up, false)
		if err == nil || ctx.Err() != nil {
			return resp, err
		}
	}
	resp, err := p.get(ctx, regPath, what, header)
	if err == nil {
		p.plain.Store(true)
	}
	return resp, err
}

// readUpgraded reads what images/pull sends after 101 Switching Protocols:
// the mirror's answer as an HTTP/1.1 response; closing its body closes the
// connection, and so does the end of ctx.
func readUpgraded(ctx context.Context, up *http.Response, req *http.Request) (*http.Response, error) {
	conn, ok := up.Body.(io.ReadWriteCloser)
	if !ok || !strings.EqualFold(up.Header.Get("Upgrade"), registryproxy.BlobStreamProtocol) {
		_ = up.Body.Close()
		return nil, fmt.Errorf("the API server switched to protocol %q, not %s", up.Header.Get("Upgrade"), registryproxy.BlobStreamProtocol)
	}
	stop := context.AfterFunc(ctx, func() { _ = conn.Close() })
	resp, err := http.ReadResponse(bufio.NewReaderSize(conn, 64<<10), req)
	if err != nil {
		stop()
		_ = conn.Close()
		return nil, err
	}
	resp.Body = &upgradedBody{ReadCloser: resp.Body, conn: conn, stop: stop}
	return resp, nil
}

// upgradedBody is the body of an answer on an upgraded connection.
type upgradedBody struct {
	io.ReadCloser
	conn io.Closer
	stop func() bool
}

func (b *upgradedBody) Close() error {
	b.stop()
	_ = b.ReadCloser.Close()
	return b.conn.Close()
}

// responseError makes an error of a refusal: the API server's own (a
// metav1.Status) becomes an APIError, remembered for Err; the mirror's
// (a registry error) says its code and message.
func (p *puller) responseError(resp *http.Response, what string, remember bool) error {
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if strings.HasPrefix(resp.Header.Get("Content-Type"), "application/json") {
		var st struct {
			Kind    string `json:"kind"`
			Message string `json:"message"`
			Reason  string `json:"reason"`
		}
		if json.Unmarshal(body, &st) == nil && st.Kind == "Status" {
			err := &APIError{Code: resp.StatusCode, Reason: st.Reason, Message: st.Message}
			p.mu.Lock()
			if p.apiErr == nil && remember {
				p.apiErr = err
			}
			p.mu.Unlock()
			return err
		}
		var reg struct {
			Errors []struct {
				Code    string `json:"code"`
				Message string `json:"message"`
			} `json:"errors"`
		}
		if json.Unmarshal(body, &reg) == nil && len(reg.Errors) > 0 {
			msgs := make([]string, 0, len(reg.Errors))
			for _, e := range reg.Errors {
				if e.Message == "" {
					e.Message = strings.ToLower(strings.ReplaceAll(e.Code, "_", " "))
				}
				msgs = append(msgs, e.Message)
			}
			return fmt.Errorf("%s: %s", what, strings.Join(msgs, "; "))
		}
	}
	return fmt.Errorf("%s: %s", what, resp.Status)
}

// Err returns the first refusal of the API server itself.
func (p *puller) Err() error {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.apiErr
}

// pullTransport is the containers/image transport of pullReferences. Its
// references are made by Pull, never parsed.
type pullTransport struct{}

func (pullTransport) Name() string { return "tagger-images-pull" }

func (pullTransport) ParseReference(string) (types.ImageReference, error) {
	return nil, errors.New("images/pull references are not parsed")
}

func (pullTransport) ValidatePolicyConfigurationScope(string) error {
	return errors.New("images/pull references have no policy scopes")
}

// pullReference is a generation (a manifest digest) of the Image.
type pullReference struct {
	p      *puller
	digest digest.Digest
}

var _ types.ImageReference = pullReference{}

func (r pullReference) Transport() types.ImageTransport { return pullTransport{} }

func (r pullReference) StringWithinTransport() string { return r.p.repo + "@" + r.digest.String() }

func (r pullReference) DockerReference() reference.Named { return nil }

func (r pullReference) PolicyConfigurationIdentity() string { return "" }

func (r pullReference) PolicyConfigurationNamespaces() []string { return nil }

func (r pullReference) NewImage(ctx context.Context, sys *types.SystemContext) (types.ImageCloser, error) {
	src, err := r.NewImageSource(ctx, sys)
	if err != nil {
		return nil, err
	}
	return image.FromSource(ctx, sys, src)
}

func (r pullReference) NewImageSource(context.Context, *types.SystemContext) (types.ImageSource, error) {
	return &pullSource{ref: r}, nil
}

func (r pullReference) NewImageDestination(context.Context, *types.SystemContext) (types.ImageDestination, error) {
	return nil, errors.New("images/pull is read-only")
}

func (r pullReference) DeleteImage(context.Context, *types.SystemContext) error {
	return errors.New("images/pull is read-only")
}

// pullSource reads manifests and blobs of one generation.
type pullSource struct {
	ref pullReference
}

var _ types.ImageSource = &pullSource{}

func (s *pullSource) Reference() types.ImageReference { return s.ref }

func (s *pullSource) Close() error { return nil }

// GetManifest returns the generation's manifest (or index), or the
// instance of it instanceDigest names, after checking it against its
// digest.
func (s *pullSource) GetManifest(ctx context.Context, instanceDigest *digest.Digest) ([]byte, string, error) {
	d := s.ref.digest
	if instanceDigest != nil {
		d = *instanceDigest
	}
	if err := d.Validate(); err != nil {
		return nil, "", fmt.Errorf("invalid manifest digest %q: %w", d, err)
	}
	what := "reading manifest " + d.String()
	resp, err := s.ref.p.get(ctx, "manifests/"+d.String(), what,
		http.Header{"Accept": {strings.Join(manifest.DefaultRequestedManifestMIMETypes, ", ")}})
	if err != nil {
		return nil, "", err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, maxManifestBytes+1))
	if err != nil {
		return nil, "", fmt.Errorf("%s: %w", what, err)
	}
	if len(body) > maxManifestBytes {
		return nil, "", fmt.Errorf("%s: larger than %d bytes", what, maxManifestBytes)
	}
	if got := d.Algorithm().FromBytes(body); got != d {
		return nil, "", fmt.Errorf("%s: the API server sent a manifest of digest %s", what, got)
	}
	mime := manifest.NormalizedMIMEType(mediaType(resp.Header.Get("Content-Type")))
	if mime == "" || mime == "application/octet-stream" {
		mime = manifest.GuessMIMEType(body)
	}
	return body, mime, nil
}

// mediaType drops the parameters of a Content-Type.
func mediaType(ct string) string {
	mt, _, _ := strings.Cut(ct, ";")
	return strings.TrimSpace(mt)
}

func (s *pullSource) HasThreadSafeGetBlob() bool { return true }

// GetBlob streams a blob; a stream cut midway is resumed with a Range
// request from where it stopped.
func (s *pullSource) GetBlob(ctx context.Context, info types.BlobInfo, _ types.BlobInfoCache) (io.ReadCloser, int64, error) {
	if err := info.Digest.Validate(); err != nil {
		return nil, 0, fmt.Errorf("invalid blob digest %q: %w", info.Digest, err)
	}
	b := &resumingBody{ctx: ctx, p: s.ref.p, path: "blobs/" + info.Digest.String(), what: "reading blob " + info.Digest.String()}
	resp, err := b.p.getBlob(ctx, b.path, b.what, nil)
	if err != nil {
		return nil, 0, err
	}
	b.body, b.size = resp.Body, resp.ContentLength
	return b, b.size, nil
}

func (s *pullSource) GetSignatures(context.Context, *digest.Digest) ([][]byte, error) {
	return nil, nil
}

func (s *pullSource) LayerInfosForCopy(context.Context, *digest.Digest) ([]types.BlobInfo, error) {
	return nil, nil
}

// resumingBody is a blob's stream that survives cuts: when the connection
// breaks before the end, the rest is asked for with "Range: bytes=N-",
// which images/pull relays to the mirror.
type resumingBody struct {
	ctx     context.Context
	p       *puller
	path    string
	what    string
	body    io.ReadCloser
	size    int64 // -1 when unknown
	offset  int64
	resumes int
}

func (b *resumingBody) Read(buf []byte) (int, error) {
	for {
		n, err := b.body.Read(buf)
		b.offset += int64(n)
		switch {
		case err == nil:
			return n, nil
		case errors.Is(err, io.EOF) && (b.size < 0 || b.offset >= b.size):
			return n, io.EOF
		case b.ctx.Err() != nil:
			return n, err
		}
		if errors.Is(err, io.EOF) {
			err = io.ErrUnexpectedEOF
		}
		if rerr := b.resume(err); rerr != nil {
			return n, rerr
		}
		if n > 0 {
			return n, nil
		}
	}
}

// resume replaces the cut stream by one from b.offset.
func (b *resumingBody) resume(cause error) error {
	_ = b.body.Close()
	b.body = http.NoBody
	if b.resumes >= maxResumes {
		return fmt.Errorf("%s: cut %d times, the last at byte %d: %w", b.what, b.resumes+1, b.offset, cause)
	}
	b.resumes++
	resp, err := b.p.getBlob(b.ctx, b.path, b.what, http.Header{"Range": {fmt.Sprintf("bytes=%d-", b.offset)}})
	if err != nil {
		return fmt.Errorf("resuming after %v: %w", cause, err)
	}
	if resp.StatusCode != http.StatusPartialContent || !strings.HasPrefix(resp.Header.Get("Content-Range"), fmt.Sprintf("bytes %d-", b.offset)) {
		_ = resp.Body.Close()
		return fmt.Errorf("%s: cut at byte %d (%v), and the mirror did not resume there (%s, Content-Range %q)",
			b.what, b.offset, cause, resp.Status, resp.Header.Get("Content-Range"))
	}
	b.body = resp.Body
	return nil
}

func (b *resumingBody) Close() error { return b.body.Close() }
