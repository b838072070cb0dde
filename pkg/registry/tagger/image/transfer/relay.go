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

package transfer

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"time"

	"github.com/opencontainers/go-digest"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	genericapirequest "k8s.io/apiserver/pkg/endpoints/request"
	"k8s.io/apiserver/pkg/registry/rest"
	"k8s.io/klog/v2"
	"k8s.io/utils/ptr"

	"tagger.dev/tagger/pkg/apis/tagger"
	"tagger.dev/tagger/pkg/importer"
	"tagger.dev/tagger/pkg/metrics"
	"tagger.dev/tagger/pkg/redact"
	"tagger.dev/tagger/pkg/registryproxy"
)

// transfer is one relayed registry request.
type transfer struct {
	deps      *Deps
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
		// Every byte of an upload counts: what earlier requests of the
		// session stored and this body together.
		remaining, ok := t.remaining(req)
		if !ok {
			return
		}
		if req.ContentLength > remaining {
			t.refuseUpload(req)
			return
		}
		body, size = http.MaxBytesReader(w, req.Body, remaining), req.ContentLength
	}
	counted := &countingReader{r: body}
	if body == nil {
		counted = nil
	}
	resp, err := t.repo.Do(req.Context(), t.method, t.path, t.query(req), req.Header, counted.reader(), size)
	if counted != nil && err == nil && resp.StatusCode/100 == 2 {
		metrics.PushedBytes.WithLabelValues(metrics.Host(t.repo.Reference)).Add(float64(counted.n))
	}
	if err != nil {
		if errors.As(err, new(*http.MaxBytesError)) {
			t.refuseUpload(req)
			return
		}
		t.fail(err)
		return
	}
	defer resp.Body.Close()
	// Registries that do not report an upload's size are bounded after
	// the fact: their Range says how much the session holds.
	if t.method == http.MethodPatch && resp.StatusCode == http.StatusAccepted {
		if end, ok := registryproxy.RangeEnd(resp.Header.Get("Range")); ok && end >= t.deps.MaxPushBytes {
			t.repo.CancelUpload(req.Context(), resp.Header.Get("Location"))
			t.responder.Error(tooLarge(t.deps.MaxPushBytes))
			return
		}
	}
	t.write(w, resp, nil)
}

// countingReader counts what a push relays, for tagger_pushed_bytes_total.
type countingReader struct {
	r io.Reader
	n int64
}

func (c *countingReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.n += int64(n)
	return n, err
}

// reader is c as an io.Reader, nil when c is (no body).
func (c *countingReader) reader() io.Reader {
	if c == nil {
		return nil
	}
	return c
}

// remaining returns how many more bytes the upload of this request may
// take. A request without a body takes none; the first request of a
// session (POST) may take the whole limit.
func (t *transfer) remaining(req *http.Request) (int64, bool) {
	if req.ContentLength == 0 || t.path.Kind != registryproxy.Upload {
		return t.deps.MaxPushBytes, true
	}
	stored, known, err := t.repo.UploadSize(req.Context(), t.path, t.query(req))
	if err != nil {
		t.fail(err)
		return 0, false
	}
	if !known {
		return t.deps.MaxPushBytes, true
	}
	return max(t.deps.MaxPushBytes-stored, 0), true
}

// refuseUpload answers 413 and drops the upload session, so that the
// mirror does not keep what it was sent.
func (t *transfer) refuseUpload(req *http.Request) {
	if t.path.Kind == registryproxy.Upload {
		q := t.query(req)
		loc := "/v2/" + t.repo.Name + "/" + t.path.String()
		if len(q) > 0 {
			loc += "?" + q.Encode()
		}
		t.repo.CancelUpload(context.WithoutCancel(req.Context()), loc)
	}
	t.responder.Error(tooLarge(t.deps.MaxPushBytes))
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
	if t.method == http.MethodGet && t.path.Kind == registryproxy.Blob && resp.StatusCode/100 == 2 && wantsBlobStream(req.Header) &&
		t.writeUpgraded(w, req, resp) {
		return
	}
	t.write(w, resp, nil)
}

// wantsBlobStream tells whether a pull asked for its blob on a connection
// of its own (Connection: Upgrade, Upgrade: tagger-blob-stream).
func wantsBlobStream(h http.Header) bool {
	upgrade := false
	for _, v := range h.Values("Connection") {
		for _, tok := range strings.Split(v, ",") {
			upgrade = upgrade || strings.EqualFold(strings.TrimSpace(tok), "upgrade")
		}
	}
	if !upgrade {
		return false
	}
	for _, v := range h.Values("Upgrade") {
		for _, tok := range strings.Split(v, ",") {
			if strings.EqualFold(strings.TrimSpace(tok), registryproxy.BlobStreamProtocol) {
				return true
			}
		}
	}
	return false
}

// writeUpgraded answers with 101 Switching Protocols and then relays the
// mirror's answer as an HTTP/1.1 response on the bare connection. Through
// kube-apiserver's aggregator this is the cheap path for a blob: an
// upgraded connection is copied byte for byte, where an ordinary answer
// is proxied over the aggregator's one HTTP/2 connection to Tagger in
// DATA frames (at 1 GiB, 0.6 CPU-s more in Tagger and 0.5 in
// kube-apiserver). It returns false, having written nothing, when the
// connection cannot be taken over (HTTP/2): the answer is then an
// ordinary one.
func (t *transfer) writeUpgraded(w http.ResponseWriter, req *http.Request, resp *http.Response) bool {
	hj, ok := w.(http.Hijacker)
	if !ok || req.ProtoMajor != 1 {
		return false
	}
	conn, rw, err := hj.Hijack()
	if err != nil {
		return false
	}
	defer conn.Close()
	// The request's deadline (Tagger's request timeout, a cancelled
	// request) ends the stream: the server no longer watches the
	// connection.
	_ = conn.SetDeadline(time.Time{})
	stop := context.AfterFunc(req.Context(), func() { _ = conn.SetDeadline(time.Now()) })
	defer stop()
	h := http.Header{}
	registryproxy.CopyHeaders(h, resp.Header, func(loc string) string { return t.repo.RewriteLocation(loc, t.base) })
	fmt.Fprintf(rw, "HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: %s\r\n\r\n", registryproxy.BlobStreamProtocol)
	fmt.Fprintf(rw, "HTTP/1.1 %03d %s\r\n", resp.StatusCode, http.StatusText(resp.StatusCode))
	if err := h.Write(rw); err != nil {
		return true
	}
	if _, err := rw.WriteString("\r\n"); err != nil {
		return true
	}
	if err := rw.Flush(); err != nil {
		return true
	}
	n, _ := relayBody(conn, resp.Body)
	metrics.PulledBytes.WithLabelValues(metrics.Host(t.repo.Reference)).Add(float64(n))
	return true
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
		t.responder.Error(apierrors.NewBadRequest(redact.Message(fmt.Sprintf("reading manifest: %v", err))))
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
		t.responder.Error(apierrors.NewInternalError(fmt.Errorf("the mirror stored the manifest as %s, not %s", redact.Message(got), dgst)))
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
		t.responder.Error(apierrors.NewInternalError(fmt.Errorf("tagging %s in the mirror: %s", gcTag.Ref, redact.Message(tagResp.Status))))
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
	t.write(w, resp, http.Header{registryproxy.ImageReferenceHeader: {ref.ImageReference}})
}

// record adds the generation to the Image through the create-or-append
// rule imports use, and stores the record of the push.
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
			h.Set(registryproxy.HeadContentLengthHeader, cl)
		}
		h.Del("Content-Length")
		w.WriteHeader(resp.StatusCode)
		return
	}
	w.WriteHeader(resp.StatusCode)
	n, _ := relayBody(w, resp.Body)
	if t.image != nil && resp.StatusCode/100 == 2 {
		metrics.PulledBytes.WithLabelValues(metrics.Host(t.repo.Reference)).Add(float64(n))
	}
}

// relayPiece is the size of the pieces an answer body is relayed in.
// Through the aggregator the answer leaves on an HTTP/2 stream, where each
// Write is handed to the connection's writer and becomes one DATA frame
// (up to the frame size kube-apiserver accepts, 1 MiB with Go's client):
// io.Copy's 32 KiB pieces made three TLS records and write calls of every
// 32 KiB; 256 KiB pieces make 17 of every 256 KiB, and 8 times fewer
// hand-overs and frames for kube-apiserver to read. A pull of 6 blobs at
// once holds 1.5 MiB.
const relayPiece = 256 << 10

var relayPieces = sync.Pool{New: func() any { b := make([]byte, relayPiece); return &b }}

// relayBody copies body to w in pieces of relayPiece bytes (the last one
// shorter), reading until a piece is full before writing it. It returns
// what it wrote, and the first error reading or writing, io.EOF excepted.
func relayBody(w io.Writer, body io.Reader) (int64, error) {
	bp := relayPieces.Get().(*[]byte)
	defer relayPieces.Put(bp)
	buf := *bp
	var written int64
	for {
		n := 0
		var rerr error
		for n < len(buf) && rerr == nil {
			var m int
			m, rerr = body.Read(buf[n:])
			n += m
		}
		if n > 0 {
			m, werr := w.Write(buf[:n])
			written += int64(m)
			if werr != nil {
				return written, werr
			}
		}
		if rerr == io.EOF {
			return written, nil
		}
		if rerr != nil {
			return written, rerr
		}
	}
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

func tooLarge(limit int64) error {
	return apierrors.NewRequestEntityTooLargeError(fmt.Sprintf("a pushed blob or manifest may not exceed %d bytes (tagger-apiserver --max-push-bytes)", limit))
}
