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

package importer_test

import (
	"context"
	"encoding/json"
	"errors"
	"net"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"
	"time"
	"unicode/utf8"

	"tagger.dev/tagger/pkg/apis/tagger"
	"tagger.dev/tagger/pkg/importer"
)

// answerManifests answers manifest requests with status and body.
func answerManifests(status int, contentType, body string) func(http.Handler) http.Handler {
	return func(h http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if !strings.Contains(r.URL.Path, "/manifests/") {
				h.ServeHTTP(w, r)
				return
			}
			w.Header().Set("Content-Type", contentType)
			w.WriteHeader(status)
			if r.Method != http.MethodHead {
				_, _ = w.Write([]byte(body))
			}
		})
	}
}

func registryError(code, message string) string {
	b, _ := json.Marshal(map[string]any{"errors": []map[string]string{{"code": code, "message": message}}})
	return string(b)
}

// checkReason checks the bounds every reason must keep.
func checkReason(t *testing.T, err error, want string, leaks ...string) string {
	t.Helper()
	reason := importer.Reason(err)
	t.Logf("Reason: %s", reason)
	if len(reason) > tagger.MaxReasonLength || !utf8.ValidString(reason) {
		t.Errorf("Reason is %d bytes (valid UTF-8: %v)", len(reason), utf8.ValidString(reason))
	}
	if want != "" && !strings.Contains(reason, want) {
		t.Errorf("Reason %q does not contain %q", reason, want)
	}
	for _, text := range []string{reason, err.Error()} {
		for _, l := range leaks {
			if strings.Contains(text, l) {
				t.Errorf("%q contains %q", text, l)
			}
		}
	}
	return reason
}

func TestPermanentErrorsFromRegistries(t *testing.T) {
	imp := importer.New(importer.Options{})
	t.Cleanup(func() { _ = imp.Close() })

	t.Run("manifest unknown", func(t *testing.T) {
		reg := newRegistry(t, regOpts{})
		reg.pushImage(t, "app:v1", randomImage(t, 1024, 1))
		err := importErr(t, imp, importer.Request{From: reg.Addr() + "/app:v2", Insecure: true})
		if !importer.Permanent(err) {
			t.Errorf("%q is not permanent", err)
		}
		checkReason(t, err, "manifest unknown")
	})
	t.Run("unauthorized after every credential", func(t *testing.T) {
		reg := newRegistry(t, regOpts{users: map[string]string{"alice": "right-pass"}})
		reg.pushImage(t, "app:v1", randomImage(t, 1024, 1))
		reg.counter.reset()
		err := importErr(t, imp, importer.Request{From: reg.Addr() + "/app:v1", Insecure: true,
			Credentials: []importer.Credential{{Username: "alice", Password: "wrong-pass-1"}, {Username: "alice", Password: "wrong-pass-2"}}})
		if !importer.Permanent(err) {
			t.Errorf("%q is not permanent", err)
		}
		checkReason(t, err, "authentication required", "wrong-pass-1", "wrong-pass-2", "alice")
		// One manifest request per credential and one anonymous: the
		// importer does not retry by itself.
		if n := reg.counter.get("HEAD manifests"); n != 3 {
			t.Errorf("%d manifest HEADs, want 3", n)
		}
	})
	t.Run("denied", func(t *testing.T) {
		reg := newRegistry(t, regOpts{wrap: answerManifests(http.StatusForbidden, "application/json", registryError("DENIED", "requested access to the resource is denied"))})
		err := importErr(t, imp, importer.Request{From: reg.Addr() + "/app:v1", Insecure: true})
		if !importer.Permanent(err) {
			t.Errorf("%q is not permanent", err)
		}
		// A HEAD answer has no body: the GET that follows brings the
		// registry's explanation.
		checkReason(t, err, "denied: requested access to the resource is denied")
	})
	t.Run("name invalid", func(t *testing.T) {
		reg := newRegistry(t, regOpts{wrap: answerManifests(http.StatusBadRequest, "application/json", registryError("NAME_INVALID", "invalid repository name"))})
		err := importErr(t, imp, importer.Request{From: reg.Addr() + "/app:v1", Insecure: true})
		if !importer.Permanent(err) {
			t.Errorf("%q is not permanent", err)
		}
		checkReason(t, err, "name invalid: invalid repository name")
	})
	t.Run("invalid reference", func(t *testing.T) {
		err := importErr(t, imp, importer.Request{From: "UPPER::bad"})
		if !importer.Permanent(err) {
			t.Errorf("%q is not permanent", err)
		}
	})
	t.Run("mirror repository too long", func(t *testing.T) {
		src := newRegistry(t, regOpts{})
		dst := newRegistry(t, regOpts{})
		src.pushImage(t, "app:v1", randomImage(t, 1024, 1))
		src.counter.reset()
		repo := dst.Addr() + "/" + strings.Repeat("n", importer.MaxRepositoryLength)
		err := importErr(t, imp, importer.Request{From: src.Addr() + "/app:v1", Insecure: true,
			Mirror: &importer.Mirror{Repository: repo, Insecure: true}})
		if !importer.Permanent(err) {
			t.Errorf("%q is not permanent", err)
		}
		checkReason(t, err, "at most 255")
		if n := src.counter.get("HEAD manifests") + dst.counter.get("GET other"); n != 0 {
			t.Errorf("%d requests for an import that cannot succeed", n)
		}
	})
	t.Run("digest mismatch", func(t *testing.T) {
		var armed atomic.Bool
		reg := newRegistry(t, regOpts{wrap: func(h http.Handler) http.Handler {
			return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				if armed.Load() && r.Method == http.MethodHead && strings.Contains(r.URL.Path, "/manifests/") {
					w.Header().Set("Docker-Content-Digest", "sha256:"+strings.Repeat("1", 64))
					w.WriteHeader(http.StatusOK)
					return
				}
				h.ServeHTTP(w, r)
			})
		}})
		d := reg.pushImage(t, "app:v1", randomImage(t, 1024, 1))
		armed.Store(true)
		err := importErr(t, imp, importer.Request{From: reg.Addr() + "/app@" + d.String(), Insecure: true})
		if !importer.Permanent(err) {
			t.Errorf("%q is not permanent", err)
		}
		checkReason(t, err, "registry answered digest sha256:1111")
	})
}

func TestTransientErrorsFromRegistries(t *testing.T) {
	imp := importer.New(importer.Options{})
	t.Cleanup(func() { _ = imp.Close() })

	t.Run("server error", func(t *testing.T) {
		reg := newRegistry(t, regOpts{wrap: answerManifests(http.StatusInternalServerError, "text/plain", "backend on fire, db password hunter2")})
		err := importErr(t, imp, importer.Request{From: reg.Addr() + "/app:v1", Insecure: true})
		if importer.Permanent(err) {
			t.Errorf("%q is permanent", err)
		}
		checkReason(t, err, "registry answered HTTP 500 (Internal Server Error)", "hunter2", "backend on fire")
	})
	t.Run("too many requests", func(t *testing.T) {
		var n atomic.Int32
		reg := newRegistry(t, regOpts{wrap: func(h http.Handler) http.Handler {
			return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				if strings.Contains(r.URL.Path, "/manifests/") {
					n.Add(1)
					// containers/image waits Retry-After itself between
					// its own tries; 0 keeps the test fast.
					w.Header().Set("Retry-After", "0")
					w.Header().Set("Content-Type", "application/json")
					w.WriteHeader(http.StatusTooManyRequests)
					if r.Method != http.MethodHead {
						_, _ = w.Write([]byte(registryError("TOOMANYREQUESTS", "slow down")))
					}
					return
				}
				h.ServeHTTP(w, r)
			})
		}})
		err := importErr(t, imp, importer.Request{From: reg.Addr() + "/app:v1", Insecure: true})
		if importer.Permanent(err) {
			t.Errorf("%q is permanent", err)
		}
		if d := importer.RetryAfter(err); d != 0 {
			t.Errorf("RetryAfter = %s; containers/image has already waited", d)
		}
		checkReason(t, err, "")
		t.Logf("%d manifest requests", n.Load())
	})
	t.Run("connection refused", func(t *testing.T) {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		addr := l.Addr().String()
		_ = l.Close()
		err = importErr(t, imp, importer.Request{From: addr + "/app:v1", Insecure: true})
		if importer.Permanent(err) {
			t.Errorf("%q is permanent", err)
		}
		checkReason(t, err, "connection refused", "socks")
	})
	t.Run("attempt deadline", func(t *testing.T) {
		reg := newRegistry(t, regOpts{wrap: func(h http.Handler) http.Handler {
			return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				if strings.Contains(r.URL.Path, "/manifests/") {
					select {
					case <-r.Context().Done():
					case <-time.After(10 * time.Second):
					}
					return
				}
				h.ServeHTTP(w, r)
			})
		}})
		ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
		defer cancel()
		_, err := imp.Import(ctx, importer.Request{From: reg.Addr() + "/app:v1", Insecure: true})
		if err == nil {
			t.Fatal("import succeeded")
		}
		if importer.Permanent(err) || !errors.Is(err, context.DeadlineExceeded) {
			t.Errorf("%q is permanent, or lost its context error", err)
		}
	})
}

func TestReasonOfLongAndSecretBodies(t *testing.T) {
	imp := importer.New(importer.Options{})
	t.Cleanup(func() { _ = imp.Close() })

	t.Run("40 KB registry message", func(t *testing.T) {
		long := strings.Repeat("the manifest is not here; ", 40*1024/26)
		reg := newRegistry(t, regOpts{wrap: answerManifests(http.StatusNotFound, "application/json", registryError("MANIFEST_UNKNOWN", long))})
		err := importErr(t, imp, importer.Request{From: reg.Addr() + "/app:v1", Insecure: true})
		if !importer.Permanent(err) {
			t.Errorf("%q is not permanent", err)
		}
		reason := checkReason(t, err, "manifest unknown: the manifest is not here")
		if !strings.HasPrefix(reason, "resolving "+reg.Addr()+"/app:v1: ") {
			t.Errorf("Reason %q lost its context", reason)
		}
		if len(err.Error()) > tagger.MaxReasonLength {
			t.Errorf("Error() is %d bytes", len(err.Error()))
		}
	})
	t.Run("body with a secret", func(t *testing.T) {
		const secret = "INTERNAL-SECRET-0123456789"
		reg := newRegistry(t, regOpts{wrap: answerManifests(http.StatusBadRequest, "text/plain", secret+" from the admin console")})
		err := importErr(t, imp, importer.Request{From: reg.Addr() + "/app:v1", Insecure: true})
		if !importer.Permanent(err) {
			t.Errorf("%q is not permanent", err)
		}
		checkReason(t, err, "registry answered HTTP 400 (Bad Request)", secret[:10])
	})
	t.Run("token server body with a secret", func(t *testing.T) {
		const secret = "TOKEN-SERVER-SECRET-98765"
		var tokenAddr string
		reg := newRegistry(t, regOpts{wrap: func(h http.Handler) http.Handler {
			return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				if r.URL.Path == "/token" {
					_, _ = w.Write([]byte(secret + " is not JSON"))
					return
				}
				bearerRealm("http://"+tokenAddr+"/token")(h).ServeHTTP(w, r)
			})
		}})
		tokenAddr = reg.Addr()
		err := importErr(t, imp, importer.Request{From: reg.Addr() + "/app:v1", Insecure: true})
		checkReason(t, err, "decoding bearer token", secret[:10])
	})
	t.Run("credentials in the mirror address and signed upload URLs", func(t *testing.T) {
		src := newRegistry(t, regOpts{})
		src.pushImage(t, "app:v1", randomImage(t, 1024, 1))
		// The mirror refuses the upload it just started: the error names
		// the upload URL, with its _state.
		dst := newRegistry(t, regOpts{wrap: func(h http.Handler) http.Handler {
			return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				if r.Method == http.MethodPatch {
					// The connection breaks mid-upload: the error
					// quotes the upload URL, _state and all.
					if c, _, err := http.NewResponseController(w).Hijack(); err == nil {
						_ = c.Close()
					}
					return
				}
				h.ServeHTTP(w, r)
			})
		}})
		err := importErr(t, imp, importer.Request{From: src.Addr() + "/app:v1", Insecure: true,
			Mirror: &importer.Mirror{Repository: dst.Addr() + "/mirror/app", Insecure: true, Credential: &importer.Credential{Username: "pusher-user", Password: "pusher-password"}}})
		if importer.Permanent(err) {
			t.Errorf("%q is permanent", err)
		}
		reason := checkReason(t, err, "/blobs/uploads/", "_state=", "pusher-password", "pusher-user")
		if !strings.Contains(err.Error(), "?<redacted>") || !strings.Contains(reason, "?<redacted>") {
			t.Errorf("the upload URL's query was not replaced: %q", reason)
		}
	})
}
