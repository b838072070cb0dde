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

// Package registryhooks serves the webhooks registries call when a tag is
// pushed: Docker Hub, Quay, Harbor, the distribution registry's
// notifications, GitHub's registry_package events and a generic JSON form.
// A call re-checks, at once, the Images of its namespace whose source is
// the pushed repository and tag (or whose tag policy admits the tag); it
// never creates Images, and a check imports only when the Image's own
// source moved.
//
// Registries are not Kubernetes clients: the hooks are served on Tagger's
// secure port under PathPrefix, outside the API's authentication and
// authorization (Bypass), with their own:
//
//   - a per-namespace token (Tokens: a Secret in a cluster, a file in
//     local mode), either in the URL
//     (PathPrefix<namespace>/<token>, for registries that can neither sign
//     nor send a header: Docker Hub, Quay) or, on PathPrefix<namespace>,
//     as GitHub's X-Hub-Signature-256 (HMAC-SHA256 of the body with the
//     token) or an Authorization header "Bearer <token>" (Harbor, the
//     distribution registry). A signature or Authorization header that is
//     sent is always checked, also with a token in the URL;
//   - 404, the same answer as for any unknown path, for an unknown
//     namespace, a missing or wrong token or signature;
//   - bodies of at most MaxBodyBytes, read within ReadTimeout;
//   - rate limits: per namespace, and per client address for failed
//     authentications; a delivery whose ID (GitHub's delivery, the
//     distribution events' ids) was seen recently is acknowledged and
//     ignored.
package registryhooks

import (
	"crypto/hmac"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"slices"
	"strings"
	"sync"
	"time"

	"golang.org/x/time/rate"
	utilruntime "k8s.io/apimachinery/pkg/util/runtime"
	"k8s.io/klog/v2"
	"k8s.io/utils/clock"

	"tagger.dev/tagger/pkg/metrics"
)

// PathPrefix is where the hooks are served.
const PathPrefix = "/webhooks/tagger.dev/registry/"

// Defaults of a Handler.
const (
	// DefaultMaxBodyBytes bounds a payload; registries send a few KiB.
	DefaultMaxBodyBytes = 1 << 20
	// DefaultReadTimeout bounds reading a payload.
	DefaultReadTimeout = 10 * time.Second
	// DefaultNamespaceRate and DefaultNamespaceBurst limit the calls of
	// one namespace (authenticated or not).
	DefaultNamespaceRate  = 5
	DefaultNamespaceBurst = 20
	// DefaultFailureRate and DefaultFailureBurst limit the failed
	// authentications of one client address.
	DefaultFailureRate  = 1
	DefaultFailureBurst = 10
	// replayWindow is how long delivery IDs are remembered.
	replayWindow = 10 * time.Minute
	// maxTracked bounds the limiters and IDs kept in memory.
	maxTracked = 10000
)

// Checks is what the hooks ask of the check controller.
type Checks interface {
	// Matches returns the Images of namespace a push of repository:tag
	// concerns.
	Matches(namespace, repository, tag string) ([]string, error)
	// Trigger checks the Image namespace/name at once.
	Trigger(namespace, name, detail string)
}

// Handler serves the registry hooks.
type Handler struct {
	Tokens Tokens
	Checks Checks
	Clock  clock.Clock
	// MaxBodyBytes, ReadTimeout and the rates: 0 means the defaults.
	MaxBodyBytes                     int64
	ReadTimeout                      time.Duration
	NamespaceRate, FailureRate       rate.Limit
	NamespaceBurst, FailureBurst     int
	limitersOnce                     sync.Once
	namespaces, failures, deliveries *tracker
}

// Response is the body of an accepted call.
type Response struct {
	// Format is the payload format recognized.
	Format Format `json:"format"`
	// Images are the Images whose check was triggered.
	Images []string `json:"images"`
	// Duplicate is set when the delivery was seen before and ignored.
	Duplicate bool `json:"duplicate,omitempty"`
}

func (h *Handler) init() {
	h.limitersOnce.Do(func() {
		if h.Clock == nil {
			h.Clock = clock.RealClock{}
		}
		if h.MaxBodyBytes <= 0 {
			h.MaxBodyBytes = DefaultMaxBodyBytes
		}
		if h.ReadTimeout <= 0 {
			h.ReadTimeout = DefaultReadTimeout
		}
		if h.NamespaceRate <= 0 {
			h.NamespaceRate, h.NamespaceBurst = DefaultNamespaceRate, DefaultNamespaceBurst
		}
		if h.FailureRate <= 0 {
			h.FailureRate, h.FailureBurst = DefaultFailureRate, DefaultFailureBurst
		}
		h.namespaces = newTracker(h.Clock)
		h.failures = newTracker(h.Clock)
		h.deliveries = newTracker(h.Clock)
	})
}

// notFound is the answer to anything that does not authenticate: the same
// as for an unknown path.
func notFound(w http.ResponseWriter) { http.NotFound(w, nil) }

// ServeHTTP implements http.Handler.
func (h *Handler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	rec := &statusRecorder{ResponseWriter: w, code: http.StatusOK}
	h.serve(rec, r)
	metrics.WebhookCalls.WithLabelValues("registry", callResult(rec.code)).Inc()
}

// statusRecorder keeps the status a hook answered, for the metrics.
type statusRecorder struct {
	http.ResponseWriter
	code int
}

func (s *statusRecorder) WriteHeader(code int) {
	s.code = code
	s.ResponseWriter.WriteHeader(code)
}

// callResult names an answer's class without saying more than the answer
// did (a 404 is "not_found" whether the namespace exists or not).
func callResult(code int) string {
	switch {
	case code < 300:
		return "accepted"
	case code == http.StatusNotFound:
		return "not_found"
	case code == http.StatusTooManyRequests:
		return "rate_limited"
	case code < 500:
		return "refused"
	default:
		return metrics.ResultError
	}
}

func (h *Handler) serve(w http.ResponseWriter, r *http.Request) {
	h.init()
	defer func() {
		if p := recover(); p != nil {
			if p == http.ErrAbortHandler {
				panic(p)
			}
			utilruntime.HandleError(fmt.Errorf("registry hook panicked: %v", p))
			http.Error(w, "internal error", http.StatusInternalServerError)
		}
	}()
	rest, ok := strings.CutPrefix(r.URL.Path, PathPrefix)
	if !ok {
		notFound(w)
		return
	}
	parts := strings.Split(rest, "/")
	if len(parts) > 2 || parts[0] == "" || (len(parts) == 2 && parts[1] == "") {
		notFound(w)
		return
	}
	if r.Method != http.MethodPost {
		w.Header().Set("Allow", http.MethodPost)
		http.Error(w, "registry hooks take POST", http.StatusMethodNotAllowed)
		return
	}
	client := clientAddr(r)
	now := h.Clock.Now()
	if !h.failures.peek(client, h.FailureRate, h.FailureBurst, now) {
		tooMany(w, "too many failed calls from this address")
		return
	}
	namespace := parts[0]
	fail := func() {
		h.failures.allow(client, h.FailureRate, h.FailureBurst, now)
		notFound(w)
	}
	token, err := h.Tokens.Token(namespace)
	if err != nil {
		utilruntime.HandleError(fmt.Errorf("reading the registry hook token of %s: %w", namespace, err))
		http.Error(w, "internal error", http.StatusInternalServerError)
		return
	}
	known := token != ""
	if !known {
		// Compare anyway: an unknown namespace answers as a known one
		// with a wrong token does.
		token = "\x00"
	}
	urlToken := ""
	if len(parts) == 2 {
		urlToken = parts[1]
	}
	if urlToken != "" && !equal(urlToken, token) {
		fail()
		return
	}

	rc := http.NewResponseController(w)
	_ = rc.SetReadDeadline(now.Add(h.ReadTimeout))
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, h.MaxBodyBytes))
	var tooLarge *http.MaxBytesError
	switch {
	case errors.As(err, &tooLarge):
		http.Error(w, fmt.Sprintf("payload larger than %d bytes", h.MaxBodyBytes), http.StatusRequestEntityTooLarge)
		return
	case err != nil:
		http.Error(w, "reading the payload failed", http.StatusBadRequest)
		return
	}

	// A signature or Authorization header that is sent must be right; on
	// the URL without token, one of them is required.
	headerAuth := false
	if sig := r.Header.Get("X-Hub-Signature-256"); sig != "" {
		if !validSignature(sig, token, body) {
			fail()
			return
		}
		headerAuth = true
	}
	if auth := r.Header.Get("Authorization"); auth != "" {
		if !validAuthorization(auth, token) {
			fail()
			return
		}
		headerAuth = true
	}
	if !known || (urlToken == "" && !headerAuth) {
		fail()
		return
	}
	// Authenticated: only now does the call count against its namespace,
	// so strangers cannot use up its share.
	if !h.namespaces.allow(namespace, h.NamespaceRate, h.NamespaceBurst, now) {
		tooMany(w, "too many calls for this namespace")
		return
	}

	d, err := Parse(r.Header, body)
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	logger := klog.FromContext(r.Context()).WithValues("namespace", namespace, "format", d.Format, "client", client)
	resp := Response{Format: d.Format, Images: []string{}}
	if len(d.IDs) > 0 && h.deliveries.seen(namespace, d.IDs, now) {
		resp.Duplicate = true
		logger.V(2).Info("Registry hook delivery seen before; ignored")
		writeJSON(w, http.StatusOK, resp)
		return
	}
	for _, p := range d.Pushes {
		names, err := h.Checks.Matches(namespace, p.Repository, p.Tag)
		if err != nil {
			utilruntime.HandleError(fmt.Errorf("matching images of %s: %w", namespace, err))
			http.Error(w, "internal error", http.StatusInternalServerError)
			return
		}
		for _, n := range names {
			if slices.Contains(resp.Images, n) {
				continue
			}
			resp.Images = append(resp.Images, n)
			h.Checks.Trigger(namespace, n, fmt.Sprintf("%s webhook: push of %s:%s", d.Format, p.Repository, p.Tag))
		}
	}
	logger.Info("Registry hook called", "pushes", len(d.Pushes), "images", resp.Images)
	writeJSON(w, http.StatusAccepted, resp)
}

func writeJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	_ = json.NewEncoder(w).Encode(v)
}

func tooMany(w http.ResponseWriter, msg string) {
	w.Header().Set("Retry-After", "1")
	http.Error(w, msg, http.StatusTooManyRequests)
}

// equal compares secrets in constant time, whatever their lengths.
func equal(a, b string) bool {
	ha, hb := sha256.Sum256([]byte(a)), sha256.Sum256([]byte(b))
	return subtle.ConstantTimeCompare(ha[:], hb[:]) == 1
}

// validSignature checks GitHub's "sha256=<hex HMAC-SHA256 of body>".
func validSignature(sig, token string, body []byte) bool {
	got, ok := strings.CutPrefix(sig, "sha256=")
	if !ok {
		return false
	}
	gotMAC, err := hex.DecodeString(got)
	if err != nil {
		return false
	}
	mac := hmac.New(sha256.New, []byte(token))
	mac.Write(body)
	return hmac.Equal(gotMAC, mac.Sum(nil))
}

// validAuthorization accepts "Bearer <token>" (or the bare token, as some
// registries send what was typed).
func validAuthorization(auth, token string) bool {
	if scheme, cred, ok := strings.Cut(auth, " "); ok && strings.EqualFold(scheme, "bearer") {
		auth = strings.TrimSpace(cred)
	}
	return equal(auth, token)
}

// clientAddr is the caller's IP address.
func clientAddr(r *http.Request) string {
	host, _, err := net.SplitHostPort(r.RemoteAddr)
	if err != nil {
		return r.RemoteAddr
	}
	return host
}

// tracker keeps rate limiters, or seen IDs, by key, forgetting the oldest
// past maxTracked.
type tracker struct {
	clock clock.Clock
	mu    sync.Mutex
	lim   map[string]*entry
}

type entry struct {
	limiter *rate.Limiter
	seen    time.Time
}

func newTracker(c clock.Clock) *tracker { return &tracker{clock: c, lim: map[string]*entry{}} }

func (t *tracker) get(k string, r rate.Limit, b int, now time.Time) *entry {
	e := t.lim[k]
	if e == nil {
		if len(t.lim) >= maxTracked {
			t.prune(now)
		}
		e = &entry{limiter: rate.NewLimiter(r, b)}
		t.lim[k] = e
	}
	e.seen = now
	return e
}

// prune forgets entries not used for a replay window, or the oldest half.
func (t *tracker) prune(now time.Time) {
	for k, e := range t.lim {
		if now.Sub(e.seen) > replayWindow {
			delete(t.lim, k)
		}
	}
	if len(t.lim) < maxTracked {
		return
	}
	type kv struct {
		k string
		t time.Time
	}
	all := make([]kv, 0, len(t.lim))
	for k, e := range t.lim {
		all = append(all, kv{k, e.seen})
	}
	slices.SortFunc(all, func(a, b kv) int { return a.t.Compare(b.t) })
	for _, x := range all[:len(all)/2] {
		delete(t.lim, x.k)
	}
}

// allow takes a token of k's limiter.
func (t *tracker) allow(k string, r rate.Limit, b int, now time.Time) bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.get(k, r, b, now).limiter.AllowN(now, 1)
}

// peek tells whether k's limiter has a token, without taking it.
func (t *tracker) peek(k string, r rate.Limit, b int, now time.Time) bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	e := t.lim[k]
	return e == nil || e.limiter.TokensAt(now) >= 1
}

// seen records ids of namespace and tells whether all were seen within the
// replay window already.
func (t *tracker) seen(namespace string, ids []string, now time.Time) bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	all := true
	for _, id := range ids {
		k := namespace + "/" + id
		e := t.lim[k]
		if e == nil || now.Sub(e.seen) > replayWindow {
			all = false
		}
		t.get(k, 0, 0, now)
	}
	return all
}

// Bypass serves requests under PathPrefix with hooks, before the API's
// handler chain (authentication, authorization, priority and fairness),
// and everything else with chain. Registries are not Kubernetes clients:
// an Authorization header meant for the hook must not reach the API's
// authenticators, and anonymous access to the API may be off.
func Bypass(chain, hooks http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if strings.HasPrefix(r.URL.Path, PathPrefix) {
			hooks.ServeHTTP(w, r)
			return
		}
		chain.ServeHTTP(w, r)
	})
}
