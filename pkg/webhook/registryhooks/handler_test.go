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

package registryhooks

import (
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	clocktesting "k8s.io/utils/clock/testing"
)

// fakeChecks matches Images by "namespace/repository:tag" and records
// the triggers.
type fakeChecks struct {
	images map[string][]string

	mu        sync.Mutex
	triggered []string
}

func (f *fakeChecks) Matches(namespace, repository, tag string) ([]string, error) {
	return f.images[namespace+"/"+repository+":"+tag], nil
}

func (f *fakeChecks) Trigger(namespace, name, detail string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.triggered = append(f.triggered, namespace+"/"+name)
}

func (f *fakeChecks) take() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	t := f.triggered
	f.triggered = nil
	return t
}

type fixture struct {
	h      *Handler
	checks *fakeChecks
	clock  *clocktesting.FakeClock
	token  string
}

func newFixture(t *testing.T) *fixture {
	t.Helper()
	tokens := &FileTokens{Dir: t.TempDir()}
	token, err := tokens.Ensure(context.Background(), "shop", false)
	if err != nil {
		t.Fatal(err)
	}
	checks := &fakeChecks{images: map[string][]string{
		"shop/registry.example.com/org/app:v9":   {"app"},
		"shop/quay.io/mynamespace/repository:v2": {"repo-a", "repo-b"},
		"other/registry.example.com/org/app:v9":  {"not-this"},
	}}
	clock := clocktesting.NewFakeClock(time.Date(2026, 11, 1, 0, 0, 0, 0, time.UTC))
	return &fixture{h: &Handler{Tokens: tokens, Checks: checks, Clock: clock}, checks: checks, clock: clock, token: token}
}

// call posts body to path from addr and returns the status and body.
func (f *fixture) call(path, body string, header http.Header, addr string) (int, string) {
	r := httptest.NewRequest(http.MethodPost, path, strings.NewReader(body))
	r.RemoteAddr = addr + ":40000"
	for k, v := range header {
		r.Header[k] = v
	}
	w := httptest.NewRecorder()
	f.h.ServeHTTP(w, r)
	b, _ := io.ReadAll(w.Result().Body)
	return w.Code, string(b)
}

func sign(token, body string) string {
	mac := hmac.New(sha256.New, []byte(token))
	mac.Write([]byte(body))
	return "sha256=" + hex.EncodeToString(mac.Sum(nil))
}

func TestHookAuthentication(t *testing.T) {
	f := newFixture(t)
	withToken := PathPrefix + "shop/" + f.token
	headerOnly := PathPrefix + "shop"
	notFoundBody := func() string {
		w := httptest.NewRecorder()
		http.NotFound(w, nil)
		return w.Body.String()
	}()
	tests := []struct {
		name   string
		path   string
		header http.Header
		body   string
		code   int
		images []string
	}{
		{name: "token in the URL", path: withToken, body: genericPayload, code: http.StatusAccepted, images: []string{"shop/app"}},
		{name: "several images", path: withToken, body: quayPayload, code: http.StatusAccepted, images: []string{"shop/repo-a", "shop/repo-b"}},
		{name: "wrong token", path: PathPrefix + "shop/" + strings.Repeat("A", 43), body: genericPayload, code: http.StatusNotFound},
		{name: "unknown namespace", path: PathPrefix + "nowhere/" + f.token, body: genericPayload, code: http.StatusNotFound},
		{name: "another namespace's token", path: PathPrefix + "other/" + f.token, body: genericPayload, code: http.StatusNotFound},
		{name: "no token at all", path: headerOnly, body: genericPayload, code: http.StatusNotFound},
		{name: "extra path segment", path: withToken + "/x", body: genericPayload, code: http.StatusNotFound},
		{name: "bearer header", path: headerOnly, header: http.Header{"Authorization": {"Bearer " + f.token}}, body: harborPayload, code: http.StatusAccepted},
		{name: "wrong bearer header", path: headerOnly, header: http.Header{"Authorization": {"Bearer nope"}}, body: genericPayload, code: http.StatusNotFound},
		{name: "wrong header with the right URL token", path: withToken, header: http.Header{"Authorization": {"Bearer nope"}}, body: genericPayload, code: http.StatusNotFound},
		{name: "github signature", path: headerOnly,
			header: http.Header{"X-Github-Event": {"registry_package"}, "X-Hub-Signature-256": {sign(f.token, gitHubPayload)}}, body: gitHubPayload, code: http.StatusAccepted},
		{name: "github signature of another body", path: headerOnly,
			header: http.Header{"X-Github-Event": {"registry_package"}, "X-Hub-Signature-256": {sign(f.token, genericPayload)}}, body: gitHubPayload, code: http.StatusNotFound},
		{name: "github signature with another secret, right URL token", path: withToken,
			header: http.Header{"X-Github-Event": {"registry_package"}, "X-Hub-Signature-256": {sign("other", gitHubPayload)}}, body: gitHubPayload, code: http.StatusNotFound},
		{name: "unrecognized payload, authenticated", path: withToken, body: `{"x": 1}`, code: http.StatusBadRequest},
	}
	for i, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			// A new client address each: the failure limit is tested apart.
			code, body := f.call(tc.path, tc.body, tc.header, "10.0.0."+string(rune('1'+i%9)))
			f.clock.Step(2 * time.Second)
			if code != tc.code {
				t.Fatalf("status %d (%s), want %d", code, body, tc.code)
			}
			if code == http.StatusNotFound && body != notFoundBody {
				t.Errorf("404 body %q differs from an unknown path's %q", body, notFoundBody)
			}
			got := f.checks.take()
			slices.Sort(got)
			if !slices.Equal(got, tc.images) {
				t.Errorf("triggered %v, want %v", got, tc.images)
			}
			if code == http.StatusAccepted {
				var resp Response
				if err := json.Unmarshal([]byte(body), &resp); err != nil {
					t.Fatal(err)
				}
				if len(resp.Images) != len(tc.images) {
					t.Errorf("response %+v", resp)
				}
			}
		})
	}
}

func TestHookMethodAndSize(t *testing.T) {
	f := newFixture(t)
	r := httptest.NewRequest(http.MethodGet, PathPrefix+"shop/"+f.token, nil)
	w := httptest.NewRecorder()
	f.h.ServeHTTP(w, r)
	if w.Code != http.StatusMethodNotAllowed {
		t.Errorf("GET: %d", w.Code)
	}
	big := `{"repository": "registry.example.com/org/app", "tag": "v9", "pad": "` + strings.Repeat("x", DefaultMaxBodyBytes) + `"}`
	if code, _ := f.call(PathPrefix+"shop/"+f.token, big, nil, "10.0.1.1"); code != http.StatusRequestEntityTooLarge {
		t.Errorf("oversized payload: %d", code)
	}
	if got := f.checks.take(); len(got) != 0 {
		t.Errorf("an oversized payload triggered %v", got)
	}
}

func TestHookRateLimits(t *testing.T) {
	f := newFixture(t)
	// Guessing tokens: after the burst of failures, the address gets 429,
	// even with the right token, until time passes.
	for i := range DefaultFailureBurst {
		if code, _ := f.call(PathPrefix+"shop/guess"+string(rune('a'+i)), genericPayload, nil, "192.0.2.7"); code != http.StatusNotFound {
			t.Fatalf("guess %d: %d", i, code)
		}
	}
	if code, _ := f.call(PathPrefix+"shop/"+f.token, genericPayload, nil, "192.0.2.7"); code != http.StatusTooManyRequests {
		t.Errorf("after %d failures: %d, want 429", DefaultFailureBurst, code)
	}
	if code, _ := f.call(PathPrefix+"shop/"+f.token, genericPayload, nil, "192.0.2.8"); code != http.StatusAccepted {
		t.Errorf("another address: %d", code)
	}
	f.clock.Step(2 * time.Second)
	if code, _ := f.call(PathPrefix+"shop/"+f.token, genericPayload, nil, "192.0.2.7"); code != http.StatusAccepted {
		t.Errorf("after a pause: %d", code)
	}
	f.checks.take()

	// Flooding with a valid token: the namespace's share runs out.
	accepted, limited := 0, 0
	for range 3 * DefaultNamespaceBurst {
		switch code, _ := f.call(PathPrefix+"shop/"+f.token, genericPayload, nil, "198.51.100.1"); code {
		case http.StatusAccepted:
			accepted++
		case http.StatusTooManyRequests:
			limited++
		}
	}
	if accepted > DefaultNamespaceBurst || limited == 0 {
		t.Errorf("flood: %d accepted, %d limited (burst %d)", accepted, limited, DefaultNamespaceBurst)
	}
	// Strangers cannot use up a namespace's share.
	f.clock.Step(time.Minute)
	for i := range 3 * DefaultNamespaceBurst {
		f.call(PathPrefix+"shop/wrong", genericPayload, nil, "203.0.113."+string(rune('0'+i%10)))
	}
	if code, _ := f.call(PathPrefix+"shop/"+f.token, genericPayload, nil, "198.51.100.1"); code != http.StatusAccepted {
		t.Errorf("after strangers' calls: %d", code)
	}
}

func TestHookReplayedDeliveryIgnored(t *testing.T) {
	f := newFixture(t)
	f.checks.images["shop/ghcr.io/octo-org/app:v1.4.0"] = []string{"gh"}
	header := http.Header{"X-Github-Event": {"registry_package"}, "X-Github-Delivery": {"d-1"}, "X-Hub-Signature-256": {sign(f.token, gitHubPayload)}}
	if code, _ := f.call(PathPrefix+"shop", gitHubPayload, header, "10.1.0.1"); code != http.StatusAccepted {
		t.Fatalf("first delivery: %d", code)
	}
	code, body := f.call(PathPrefix+"shop", gitHubPayload, header, "10.1.0.1")
	if code != http.StatusOK || !strings.Contains(body, `"duplicate":true`) {
		t.Errorf("replay: %d %s", code, body)
	}
	if got := f.checks.take(); !slices.Equal(got, []string{"shop/gh"}) {
		t.Errorf("triggered %v, want one check", got)
	}
	f.clock.Step(replayWindow + time.Second)
	if code, _ := f.call(PathPrefix+"shop", gitHubPayload, header, "10.1.0.1"); code != http.StatusAccepted {
		t.Errorf("after the replay window: %d", code)
	}
}

func TestFileTokens(t *testing.T) {
	dir := t.TempDir()
	tokens := &FileTokens{Dir: dir}
	if tok, err := tokens.Token("shop"); err != nil || tok != "" {
		t.Fatalf("no token yet: %q %v", tok, err)
	}
	a, err := tokens.Ensure(context.Background(), "shop", false)
	if err != nil || len(a) != 43 {
		t.Fatalf("token %q %v", a, err)
	}
	if b, _ := tokens.Ensure(context.Background(), "shop", false); b != a {
		t.Errorf("second Ensure returned another token")
	}
	fi, err := os.Stat(filepath.Join(dir, "shop"))
	if err != nil || fi.Mode().Perm() != 0o600 {
		t.Errorf("token file %v %v", fi, err)
	}
	c, _ := tokens.Ensure(context.Background(), "shop", true)
	if c == a {
		t.Errorf("rotate kept the token")
	}
	if got, _ := tokens.Token("shop"); got != c {
		t.Errorf("Token after rotate = %q", got)
	}
	if _, err := tokens.Ensure(context.Background(), "../etc", false); err == nil {
		t.Errorf("a namespace that is a path was accepted")
	}
}

func TestBypass(t *testing.T) {
	hooks := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { w.WriteHeader(299) })
	chain := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { w.WriteHeader(298) })
	h := Bypass(chain, hooks)
	for path, want := range map[string]int{PathPrefix + "ns/tok": 299, "/apis/tagger.dev/v1beta1": 298, "/webhooks/tagger.dev/pods": 298} {
		w := httptest.NewRecorder()
		h.ServeHTTP(w, httptest.NewRequest(http.MethodPost, path, nil))
		if w.Code != want {
			t.Errorf("%s: %d, want %d", path, w.Code, want)
		}
	}
}
