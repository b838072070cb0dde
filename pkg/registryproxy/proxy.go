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

// Package registryproxy relays OCI distribution API requests, one blob or
// manifest at a time, to one repository of a mirror registry. The server
// authenticates to the mirror itself, so clients of images/push and
// images/pull never see mirror credentials; bodies are streamed, never held.
package registryproxy

import (
	"context"
	"crypto/sha256"
	"crypto/tls"
	"encoding/hex"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/v1/remote/transport"
	"github.com/opencontainers/go-digest"
)

// Headers of the relay protocol between images/push and images/pull and
// their clients (pkg/imagecopy): both ends use these definitions.
const (
	// HeadContentLengthHeader carries the Content-Length of a relayed HEAD:
	// the relayed request is a POST or GET, whose own answer has no body.
	HeadContentLengthHeader = "Tagger-Content-Length"
	// ImageReferenceHeader, on the answer to a manifest PUT by tag, is the
	// generation the push recorded.
	ImageReferenceHeader = "Tagger-Image-Reference"
	// BlobStreamProtocol is the Upgrade token with which a client of
	// images/pull asks for a blob on a connection of its own: the answer is
	// 101 Switching Protocols, then the mirror's answer as an HTTP/1.1
	// response on the bare connection. kube-apiserver's aggregator copies
	// an upgraded connection byte for byte, as for exec and port-forward,
	// instead of proxying the answer over its HTTP/2 connection to Tagger.
	BlobStreamProtocol = "tagger-blob-stream"
)

// ForwardedRequestHeaders are the request headers of the registry API that
// are relayed, by the client to the subresource and by the subresource to
// the mirror; no other header (credentials above all) passes.
var ForwardedRequestHeaders = []string{"Accept", "Content-Type", "Content-Range", "Range", "If-None-Match", "Docker-Content-Digest"}

// PathKind says what a registry path below a repository addresses.
type PathKind int

const (
	// UploadStart is "blobs/uploads/": POST starts an upload session.
	UploadStart PathKind = iota + 1
	// Upload is "blobs/uploads/<session>": PATCH, PUT, GET, DELETE.
	Upload
	// Blob is "blobs/<digest>": HEAD, GET.
	Blob
	// Manifest is "manifests/<tag or digest>": HEAD, GET, PUT.
	Manifest
)

// Path is a parsed registry path below a repository.
type Path struct {
	Kind PathKind
	// Ref is the upload session, the blob digest, or the manifest tag or
	// digest.
	Ref string
}

// String returns the path as the registry API spells it.
func (p Path) String() string {
	switch p.Kind {
	case UploadStart:
		return "blobs/uploads/"
	case Upload:
		return "blobs/uploads/" + p.Ref
	case Blob:
		return "blobs/" + p.Ref
	default:
		return "manifests/" + p.Ref
	}
}

// IsDigest tells whether a manifest path names a digest, not a tag.
func (p Path) IsDigest() bool {
	_, err := digest.Parse(p.Ref)
	return err == nil
}

var (
	tagRE     = regexp.MustCompile(`^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$`)
	sessionRE = regexp.MustCompile(`^[A-Za-z0-9_=-][A-Za-z0-9_.=-]{0,255}$`)
)

// ParsePath parses a path below a repository: "blobs/uploads/",
// "blobs/uploads/<session>", "blobs/<digest>" or "manifests/<reference>".
// Anything else, the catalog, tag lists and other repositories included,
// is refused.
func ParsePath(p string) (Path, error) {
	p = strings.TrimPrefix(p, "/")
	bad := fmt.Errorf("%q is not a registry blob or manifest path below the repository (blobs/uploads/, blobs/uploads/<session>, blobs/<digest>, manifests/<tag or digest>)", p)
	kind, rest, ok := strings.Cut(p, "/")
	if !ok || rest == "" {
		return Path{}, bad
	}
	switch kind {
	case "blobs":
		if rest == "uploads" || rest == "uploads/" {
			return Path{Kind: UploadStart}, nil
		}
		if session, ok := strings.CutPrefix(rest, "uploads/"); ok {
			if !sessionRE.MatchString(session) {
				return Path{}, bad
			}
			return Path{Kind: Upload, Ref: session}, nil
		}
		if _, err := digest.Parse(rest); err != nil {
			return Path{}, bad
		}
		return Path{Kind: Blob, Ref: rest}, nil
	case "manifests":
		if _, err := digest.Parse(rest); err != nil && !tagRE.MatchString(rest) {
			return Path{}, bad
		}
		return Path{Kind: Manifest, Ref: rest}, nil
	}
	return Path{}, bad
}

// Proxy hands out authenticated connections to mirror repositories. It
// caches them, so the registry's token handshake is not repeated for
// every blob.
type Proxy struct {
	// TTL bounds how long an authenticated transport is reused.
	TTL time.Duration
	// Transport is the base transport; nil means a clone of
	// http.DefaultTransport.
	Transport *http.Transport

	mu    sync.Mutex
	cache map[string]cached
}

type cached struct {
	repo    *Repository
	created time.Time
}

// New returns a Proxy.
func New() *Proxy { return &Proxy{TTL: 5 * time.Minute} }

// Repository is an authenticated connection to one mirror repository.
type Repository struct {
	// Name is the repository path in the registry, e.g. "default/app".
	Name string
	// Reference is the repository as an image reference, e.g.
	// "127.0.0.1:5000/default/app".
	Reference string
	host      string
	client    *http.Client
}

// maxCached bounds the cache; past it, the cache starts over.
const maxCached = 256

// Endpoint is a mirror repository and how to reach it.
type Endpoint struct {
	// Repository is the repository without tag or digest, e.g.
	// "registry.example.com/ns/app".
	Repository string
	// Insecure skips TLS verification and allows plain http.
	Insecure bool
	// Username and Password, or Token, authenticate; all empty means
	// anonymous.
	Username, Password, Token string
}

// Repository returns a connection to m.Repository with push (or only pull)
// rights.
func (p *Proxy) Repository(ctx context.Context, m Endpoint, push bool) (*Repository, error) {
	key := cacheKey(m, push)
	p.mu.Lock()
	if c, ok := p.cache[key]; ok && time.Since(c.created) < p.TTL {
		p.mu.Unlock()
		return c.repo, nil
	}
	p.mu.Unlock()

	var opts []name.Option
	if m.Insecure {
		opts = append(opts, name.Insecure)
	}
	repo, err := name.NewRepository(m.Repository, opts...)
	if err != nil {
		return nil, fmt.Errorf("invalid mirror repository %q: %w", m.Repository, err)
	}
	base := p.Transport
	if base == nil {
		base = http.DefaultTransport.(*http.Transport)
	}
	inner := base.Clone()
	if m.Insecure {
		inner.TLSClientConfig = &tls.Config{InsecureSkipVerify: true} //nolint:gosec // the mirror is configured insecure
	}
	var auth authn.Authenticator = authn.Anonymous
	switch {
	case m.Token != "":
		auth = authn.FromConfig(authn.AuthConfig{RegistryToken: m.Token})
	case m.Username != "" || m.Password != "":
		auth = &authn.Basic{Username: m.Username, Password: m.Password}
	}
	scope := repo.Scope(transport.PullScope)
	if push {
		scope = repo.Scope(transport.PushScope)
	}
	rt, err := transport.NewWithContext(ctx, repo.Registry, auth, inner, []string{scope})
	if err != nil {
		return nil, fmt.Errorf("connecting to mirror %s: %w", repo.RegistryStr(), err)
	}
	r := &Repository{
		Name:      repo.RepositoryStr(),
		Reference: repo.Name(),
		host:      repo.RegistryStr(),
		client: &http.Client{
			Transport: rt,
			// Storage backends redirect blob reads (S3, GCS); follow them
			// here so the client needs no access of its own. Writes are
			// never redirected by registries that matter.
			CheckRedirect: func(req *http.Request, via []*http.Request) error {
				if req.Method != http.MethodGet && req.Method != http.MethodHead {
					return http.ErrUseLastResponse
				}
				if len(via) >= 5 {
					return fmt.Errorf("stopped after 5 redirects")
				}
				return nil
			},
		},
	}
	p.mu.Lock()
	if p.cache == nil || len(p.cache) >= maxCached {
		p.cache = map[string]cached{}
	}
	p.cache[key] = cached{repo: r, created: time.Now()}
	p.mu.Unlock()
	return r, nil
}

func cacheKey(m Endpoint, push bool) string {
	h := sha256.New()
	fmt.Fprintf(h, "%s\x00%t\x00%t\x00%s\x00%s\x00%s", m.Repository, m.Insecure, push, m.Username, m.Password, m.Token)
	return hex.EncodeToString(h.Sum(nil))
}

// hopHeaders are not forwarded in either direction; credentials of the
// API server's client never reach the mirror.
var hopHeaders = map[string]bool{
	"Connection": true, "Keep-Alive": true, "Proxy-Authenticate": true, "Proxy-Authorization": true,
	"Te": true, "Trailer": true, "Transfer-Encoding": true, "Upgrade": true,
	"Authorization": true, "Cookie": true, "Set-Cookie": true, "Www-Authenticate": true,
}

// Do sends one registry request for path below the repository. body may be
// nil; size is its length, or -1 when unknown.
func (r *Repository) Do(ctx context.Context, method string, p Path, query url.Values, header http.Header, body io.Reader, size int64) (*http.Response, error) {
	u := url.URL{Scheme: "https", Host: r.host, Path: "/v2/" + r.Name + "/" + p.String()}
	if len(query) > 0 {
		u.RawQuery = query.Encode()
	}
	req, err := http.NewRequestWithContext(ctx, method, u.String(), body)
	if err != nil {
		return nil, err
	}
	if body != nil {
		req.ContentLength = size
	}
	for _, k := range ForwardedRequestHeaders {
		if v := header.Values(k); len(v) > 0 {
			req.Header[k] = v
		}
	}
	return r.client.Do(req)
}

// CopyHeaders copies a registry response's headers to w, without hop-by-hop
// and authentication headers; Location is passed to rewrite, and dropped
// when it returns "".
func CopyHeaders(dst, src http.Header, rewrite func(string) string) {
	for k, v := range src {
		if hopHeaders[http.CanonicalHeaderKey(k)] {
			continue
		}
		if http.CanonicalHeaderKey(k) == "Location" {
			if loc := rewrite(v[0]); loc != "" {
				dst.Set("Location", loc)
			}
			continue
		}
		dst[k] = v
	}
}

// RewriteLocation maps a Location the registry answered for this
// repository ("http://mirror/v2/<name>/blobs/uploads/<session>?_state=...")
// to base + "/blobs/uploads/<session>?_state=...". Locations elsewhere
// give "".
func (r *Repository) RewriteLocation(loc, base string) string {
	u, err := url.Parse(loc)
	if err != nil {
		return ""
	}
	if u.Host != "" && u.Host != r.host {
		return ""
	}
	rest, ok := strings.CutPrefix(u.Path, "/v2/"+r.Name+"/")
	if !ok {
		return ""
	}
	out := strings.TrimSuffix(base, "/") + "/" + rest
	if u.RawQuery != "" {
		out += "?" + u.RawQuery
	}
	return out
}

// UploadSize asks the registry how many bytes the upload session p (with
// the query of its Location) holds. ok is false when the registry does not
// say (no upload status support, an unknown session).
func (r *Repository) UploadSize(ctx context.Context, p Path, query url.Values) (size int64, ok bool, err error) {
	resp, err := r.Do(ctx, http.MethodGet, p, query, http.Header{}, nil, 0)
	if err != nil {
		return 0, false, err
	}
	_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 1<<16))
	_ = resp.Body.Close()
	if resp.StatusCode != http.StatusNoContent && resp.StatusCode != http.StatusOK {
		return 0, false, nil
	}
	end, ok := RangeEnd(resp.Header.Get("Range"))
	if !ok {
		return 0, false, nil
	}
	// "0-0" is what registries answer for an empty upload as well as for
	// one byte: counting it as empty errs by one byte at most.
	if end == 0 {
		return 0, true, nil
	}
	return end + 1, true, nil
}

// CancelUpload deletes the upload session a registry Location names, best
// effort.
func (r *Repository) CancelUpload(ctx context.Context, location string) {
	loc := r.RewriteLocation(location, "")
	path, rawQuery, _ := strings.Cut(loc, "?")
	session, ok := strings.CutPrefix(path, "/blobs/uploads/")
	if !ok || session == "" {
		return
	}
	q, _ := url.ParseQuery(rawQuery)
	resp, err := r.Do(ctx, http.MethodDelete, Path{Kind: Upload, Ref: session}, q, http.Header{}, nil, 0)
	if err == nil {
		_ = resp.Body.Close()
	}
}

// RangeEnd returns the last byte offset N of a registry Range header
// "0-N" (or "bytes=0-N").
func RangeEnd(r string) (int64, bool) {
	_, end, ok := strings.Cut(r, "-")
	if !ok {
		return 0, false
	}
	n, err := strconv.ParseInt(strings.TrimSpace(end), 10, 64)
	if err != nil || n < 0 {
		return 0, false
	}
	return n, true
}
