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

// Package imagecopy moves images between local references (oci-archive:,
// docker-archive:, oci:, dir:) and an Image of a Tagger
// server, through the images/push and images/pull subresources and with
// nothing but a kubeconfig. It is the library behind "kubectl image push"
// and "kubectl image pull".
//
// containers/image does the copy. For a push its registry client talks to
// a Relay, a registry API endpoint on 127.0.0.1 that forwards each request
// (one blob, one upload chunk, one manifest) to the subresource,
// authenticated as the kubeconfig says. A pull reads images/pull itself, as
// a containers/image ImageSource (source.go). Big images thus move in many
// requests, each well below kube-apiserver's request timeout, and blobs the
// mirror has are skipped.
package imagecopy

import (
	"bufio"
	"crypto/rand"
	"crypto/subtle"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"time"

	"k8s.io/client-go/rest"

	"tagger.dev/tagger/pkg/registryproxy"
)

// Target is the Image that is pushed to or pulled from.
type Target struct {
	// Config is how to reach the API server, as a kubeconfig says.
	Config *rest.Config
	// Namespace and Name name the Image.
	Namespace string
	Name      string
}

// Relay is a registry API endpoint on 127.0.0.1 for one Image; it forwards
// to images/push (or images/pull) of the API server.
type Relay struct {
	target  Target
	sub     string // "push" or "pull"
	base    *url.URL
	rt      http.RoundTripper
	ln      net.Listener
	srv     *http.Server
	apiPath string // "/apis/tagger.dev/v1beta1/namespaces/<ns>/images/<name>/<sub>"
	repo    string // "<ns>/<name>"
	// ChunkSize, when positive, splits each blob upload into PATCH requests
	// of at most this many bytes, so that no request outlives the API
	// server's request timeout whatever the blob's size.
	ChunkSize int64

	// password guards the relay: other local processes, or a web page
	// reaching 127.0.0.1 by DNS rebinding, must not use the user's kubeconfig.
	password string

	mu     sync.Mutex
	apiErr error
}

// relayUser is the user name containers/image presents to the relay.
const relayUser = "tagger"

// DefaultChunkSize is the upload chunk of push: 64 MiB takes about 1 s on
// a LAN, well under the 60 s kube-apiserver allows a request.
const DefaultChunkSize = 64 << 20

// StartRelay listens on 127.0.0.1 and serves until Close. push selects
// images/push, else images/pull.
func StartRelay(t Target, push bool) (*Relay, error) {
	if t.Config == nil || t.Namespace == "" || t.Name == "" {
		return nil, fmt.Errorf("a kubeconfig, a namespace and an Image name are needed")
	}
	base, _, err := rest.DefaultServerUrlFor(t.Config)
	if err != nil {
		return nil, err
	}
	rt, err := rest.TransportFor(t.Config)
	if err != nil {
		return nil, err
	}
	sub := "pull"
	if push {
		sub = "push"
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	secret := make([]byte, 24)
	if _, err := rand.Read(secret); err != nil {
		ln.Close()
		return nil, err
	}
	r := &Relay{
		target: t, sub: sub, base: base, rt: rt, ln: ln, password: hex.EncodeToString(secret),
		apiPath: fmt.Sprintf("/apis/tagger.dev/v1beta1/namespaces/%s/images/%s/%s", t.Namespace, t.Name, sub),
		repo:    t.Namespace + "/" + t.Name,
	}
	if push {
		r.ChunkSize = DefaultChunkSize
	}
	r.srv = &http.Server{Handler: r, ReadHeaderTimeout: time.Minute}
	go func() { _ = r.srv.Serve(ln) }()
	return r, nil
}

// Reference returns the repository containers/image should use,
// "127.0.0.1:<port>/<namespace>/<name>".
func (r *Relay) Reference() string { return r.ln.Addr().String() + "/" + r.repo }

// Close stops the relay.
func (r *Relay) Close() error { return r.srv.Close() }

// Err returns the first refusal of the API server itself (authorization,
// validation, size limits), whose message says more than the registry
// error containers/image reports.
func (r *Relay) Err() error {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.apiErr
}

// ServeHTTP implements http.Handler.
func (r *Relay) ServeHTTP(w http.ResponseWriter, req *http.Request) {
	defer req.Body.Close()
	if req.Host != r.ln.Addr().String() {
		registryError(w, http.StatusForbidden, "DENIED", "this relay answers only "+r.ln.Addr().String())
		return
	}
	if user, pass, ok := req.BasicAuth(); !ok || user != relayUser ||
		subtle.ConstantTimeCompare([]byte(pass), []byte(r.password)) != 1 {
		w.Header().Set("WWW-Authenticate", `Basic realm="tagger-relay"`)
		registryError(w, http.StatusUnauthorized, "UNAUTHORIZED", "authentication required")
		return
	}
	if req.URL.Path == "/v2" || req.URL.Path == "/v2/" {
		w.Header().Set("Docker-Distribution-API-Version", "registry/2.0")
		w.WriteHeader(http.StatusOK)
		return
	}
	rest, ok := strings.CutPrefix(req.URL.Path, "/v2/"+r.repo+"/")
	if !ok {
		registryError(w, http.StatusNotFound, "NAME_UNKNOWN", fmt.Sprintf("this relay serves only %s", r.repo))
		return
	}
	if r.ChunkSize > 0 && req.Method == http.MethodPatch && strings.HasPrefix(rest, "blobs/uploads/") {
		r.chunkedPatch(w, req, rest)
		return
	}
	resp, err := r.forward(req, req.Method, rest, req.URL.Query(), req.Header, req.Body, req.ContentLength)
	if err != nil {
		registryError(w, http.StatusBadGateway, "UNKNOWN", err.Error())
		return
	}
	defer resp.Body.Close()
	r.relay(w, req.Method, resp)
}

// forward sends one registry request to the subresource.
func (r *Relay) forward(req *http.Request, method, rest string, query url.Values, header http.Header, body io.Reader, size int64) (*http.Response, error) {
	u := *r.base
	u.Path = strings.TrimSuffix(u.Path, "/") + r.apiPath + "/" + rest
	q := url.Values{}
	for k, v := range query {
		q[k] = v
	}
	q.Set("method", method)
	u.RawQuery = q.Encode()
	wire := http.MethodGet
	if r.sub == "push" {
		wire = http.MethodPost
	}
	if method == http.MethodHead || method == http.MethodGet || method == http.MethodDelete || (method == http.MethodPost && size <= 0) {
		body, size = nil, 0
	}
	out, err := http.NewRequestWithContext(req.Context(), wire, u.String(), body)
	if err != nil {
		return nil, err
	}
	if body != nil {
		out.ContentLength = size
	}
	for _, k := range registryproxy.ForwardedRequestHeaders {
		if v := header.Values(k); len(v) > 0 {
			out.Header[k] = v
		}
	}
	return r.rt.RoundTrip(out)
}

// relay writes the subresource's answer as a registry would.
func (r *Relay) relay(w http.ResponseWriter, method string, resp *http.Response) {
	h := w.Header()
	for k, v := range resp.Header {
		switch http.CanonicalHeaderKey(k) {
		case "Connection", "Transfer-Encoding", "Content-Length", "Audit-Id", "X-Kubernetes-Pf-Flowschema-Uid", "X-Kubernetes-Pf-Prioritylevel-Uid":
			continue
		case "Location":
			h.Set("Location", r.rewriteLocation(v[0]))
			continue
		}
		h[k] = v
	}
	if resp.StatusCode >= 400 && r.apiStatus(w, resp) {
		return
	}
	if method == http.MethodHead {
		if cl := resp.Header.Get(registryproxy.HeadContentLengthHeader); cl != "" {
			h.Set("Content-Length", cl)
			h.Del(registryproxy.HeadContentLengthHeader)
		}
		w.WriteHeader(resp.StatusCode)
		return
	}
	if resp.ContentLength >= 0 {
		h.Set("Content-Length", strconv.FormatInt(resp.ContentLength, 10))
	}
	w.WriteHeader(resp.StatusCode)
	_, _ = io.Copy(w, resp.Body)
}

// rewriteLocation maps the subresource's URLs back to this relay's.
func (r *Relay) rewriteLocation(loc string) string {
	u, err := url.Parse(loc)
	if err != nil {
		return loc
	}
	path := strings.TrimPrefix(u.Path, strings.TrimSuffix(r.base.Path, "/"))
	rest, ok := strings.CutPrefix(path, r.apiPath+"/")
	if !ok {
		return loc
	}
	out := "/v2/" + r.repo + "/" + rest
	if u.RawQuery != "" {
		out += "?" + u.RawQuery
	}
	return out
}

// apiStatus turns a refusal of the API server (a metav1.Status) into a
// registry error, and remembers it. It returns false for registry errors,
// which pass as they are.
func (r *Relay) apiStatus(w http.ResponseWriter, resp *http.Response) bool {
	if !strings.HasPrefix(resp.Header.Get("Content-Type"), "application/json") {
		return false
	}
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	var st struct {
		Kind    string `json:"kind"`
		Message string `json:"message"`
		Reason  string `json:"reason"`
		Code    int    `json:"code"`
	}
	if json.Unmarshal(body, &st) != nil || st.Kind != "Status" {
		w.Header().Del("Content-Length")
		w.WriteHeader(resp.StatusCode)
		_, _ = w.Write(body)
		return true
	}
	err := &APIError{Code: resp.StatusCode, Reason: st.Reason, Message: st.Message}
	r.mu.Lock()
	if r.apiErr == nil {
		r.apiErr = err
	}
	r.mu.Unlock()
	code := "UNKNOWN"
	switch resp.StatusCode {
	case http.StatusUnauthorized:
		code = "UNAUTHORIZED"
	case http.StatusForbidden:
		code = "DENIED"
	case http.StatusNotFound:
		code = "MANIFEST_UNKNOWN"
	case http.StatusRequestEntityTooLarge:
		code = "SIZE_INVALID"
	}
	registryError(w, resp.StatusCode, code, st.Message)
	return true
}

// APIError is a refusal of the Tagger API server.
type APIError struct {
	Code    int
	Reason  string
	Message string
}

func (e *APIError) Error() string {
	switch e.Code {
	case http.StatusUnauthorized:
		return "the API server did not accept your credentials (check your kubeconfig): " + e.Message
	case http.StatusForbidden:
		return e.Message + " (ask for create on images/push to push, get on images/pull to pull)"
	case http.StatusGatewayTimeout:
		// kube-apiserver ends every request at its --request-timeout (60 s
		// by default), uploads included: smaller chunks each fit in it.
		return e.Message + " (a request outlasted the API server's request timeout: push with a smaller --chunk-size, e.g. --chunk-size=16777216)"
	}
	return e.Message
}

func registryError(w http.ResponseWriter, status int, code, msg string) {
	b, _ := json.Marshal(map[string]any{"errors": []map[string]string{{"code": code, "message": msg}}})
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Content-Length", strconv.Itoa(len(b)))
	w.WriteHeader(status)
	_, _ = w.Write(b)
}

// chunkedPatch sends one streamed PATCH of containers/image as PATCH
// requests of at most ChunkSize bytes each, following the upload session
// from one to the next. Chunks are streamed, not buffered: when the blob's
// length is known each chunk carries its Content-Length and Content-Range,
// otherwise it is sent with chunked encoding.
func (r *Relay) chunkedPatch(w http.ResponseWriter, req *http.Request, rest string) {
	query := req.URL.Query()
	body := bufio.NewReader(req.Body)
	remaining := req.ContentLength // -1 when unknown
	var offset int64
	var last *http.Response
	for {
		if last != nil {
			if remaining == 0 {
				break
			}
			if remaining < 0 {
				if _, err := body.Peek(1); err != nil {
					break // the end of the blob
				}
			}
		}
		header := http.Header{"Content-Type": {"application/octet-stream"}}
		size := int64(-1)
		if remaining >= 0 {
			size = min(remaining, r.ChunkSize)
			if size > 0 {
				header.Set("Content-Range", fmt.Sprintf("%d-%d", offset, offset+size-1))
			}
		}
		counter := &countingReader{r: io.LimitReader(body, r.ChunkSize)}
		var chunk io.Reader = counter
		if size == 0 {
			chunk = http.NoBody
		}
		resp, err := r.forward(req, http.MethodPatch, rest, query, header, chunk, size)
		if err != nil {
			registryError(w, http.StatusBadGateway, "UNKNOWN", err.Error())
			return
		}
		if resp.StatusCode != http.StatusAccepted {
			defer resp.Body.Close()
			r.relay(w, http.MethodPatch, resp)
			return
		}
		_, _ = io.Copy(io.Discard, resp.Body)
		_ = resp.Body.Close()
		last = resp
		offset += counter.n
		if remaining > 0 {
			remaining -= counter.n
		}
		// The next chunk goes to where the registry says the session is.
		loc := r.rewriteLocation(resp.Header.Get("Location"))
		u, err := url.Parse(loc)
		if err != nil {
			registryError(w, http.StatusBadGateway, "UNKNOWN", "upload session lost: "+loc)
			return
		}
		next, ok := strings.CutPrefix(u.Path, "/v2/"+r.repo+"/")
		if !ok {
			registryError(w, http.StatusBadGateway, "UNKNOWN", "upload session lost: "+loc)
			return
		}
		rest, query = next, u.Query()
		if counter.n < r.ChunkSize {
			break
		}
	}
	h := w.Header()
	for k, v := range last.Header {
		switch http.CanonicalHeaderKey(k) {
		case "Location":
			h.Set("Location", r.rewriteLocation(v[0]))
		case "Range", "Docker-Upload-Uuid", "Docker-Distribution-Api-Version":
			h[k] = v
		}
	}
	h.Set("Content-Length", "0")
	w.WriteHeader(http.StatusAccepted)
}

type countingReader struct {
	r io.Reader
	n int64
}

func (c *countingReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.n += int64(n)
	return n, err
}
