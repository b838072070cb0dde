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

package integration

import (
	"bytes"
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/distribution/distribution/v3/configuration"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/client-go/rest"

	"tagger.dev/tagger/pkg/apis/tagger/v1beta1"
	"tagger.dev/tagger/pkg/apiserver"
	"tagger.dev/tagger/pkg/importer"
	"tagger.dev/tagger/pkg/localregistry"
	"tagger.dev/tagger/pkg/webhook/registryhooks"
)

// hookClient posts to the server's hooks: its TLS, none of the
// kubeconfig's credentials (registries have none).
func (s *testServer) hookClient(t *testing.T) *http.Client {
	t.Helper()
	tlsConfig, err := rest.TLSConfigFor(s.config)
	if err != nil {
		t.Fatal(err)
	}
	return &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{TLSClientConfig: tlsConfig}}
}

// hook creates (or reads) the registry hook of namespace.
func (s *testServer) hook(t *testing.T, namespace string) *v1beta1.RegistryHook {
	t.Helper()
	h, err := s.client.TaggerV1beta1().RegistryHooks(namespace).Create(context.Background(), &v1beta1.RegistryHook{}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	return h
}

func post(t *testing.T, c *http.Client, url, body string, header http.Header) (int, string) {
	t.Helper()
	req, err := http.NewRequest(http.MethodPost, url, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Content-Type", "application/json")
	for k, v := range header {
		req.Header[k] = v
	}
	resp, err := c.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

func hmacSHA256(secret, body string) string {
	mac := hmac.New(sha256.New, []byte(secret))
	mac.Write([]byte(body))
	return "sha256=" + hex.EncodeToString(mac.Sum(nil))
}

// fakeDNS answers every name with a documentation address: checks of
// public registries are refused by the policy before any connection.
func fakeDNS(context.Context, string) ([]netip.Addr, error) {
	return []netip.Addr{netip.MustParseAddr("192.0.2.1")}, nil
}

// TestRegistryHooksTriggerOnlyMatchingImages: every payload format, sent
// with the namespace's token, checks exactly the Images of that namespace
// whose from names the pushed repository and tag; the distribution
// registry's own notifications do too. Wrong tokens, signatures and
// headers check nothing.
func TestRegistryHooksTriggerOnlyMatchingImages(t *testing.T) {
	// Public registries are denied (and never resolved): their Images
	// show the check as a policy refusal, which is enough to see it ran.
	policy := importer.Policy{Deny: []string{"docker.io", "ghcr.io"}, LookupIP: fakeDNS}
	s := startServer(t, serverOptions{configure: func(c *apiserver.Config) {
		c.ExtraConfig.Importer = importer.New(importer.Options{Policy: policy})
		c.ExtraConfig.Policy = policy
	}})
	ctx := context.Background()
	h := s.hook(t, ns)
	if !strings.HasPrefix(h.Status.URL, "https://127.0.0.1:") || !strings.HasSuffix(h.Status.URL, registryhooks.PathPrefix+ns+"/"+h.Status.Token) {
		t.Fatalf("hook URL %q", h.Status.URL)
	}
	if again := s.hook(t, ns); again.Status.Token != h.Status.Token {
		t.Fatalf("a second create changed the token")
	}
	tokenless := strings.TrimSuffix(h.Status.URL, "/"+h.Status.Token)

	// The distribution registry calls the hook itself (through a relay
	// that adds TLS: its notification client trusts only system roots).
	client := s.hookClient(t)
	relay := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		req, _ := http.NewRequest(http.MethodPost, tokenless, bytes.NewReader(body))
		req.Header = r.Header.Clone()
		resp, err := client.Do(req)
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadGateway)
			return
		}
		defer resp.Body.Close()
		w.WriteHeader(resp.StatusCode)
		_, _ = io.Copy(w, resp.Body)
	}))
	t.Cleanup(relay.Close)
	r, err := localregistry.New(ctx, localregistry.Options{Notifications: []configuration.Endpoint{{
		Name: "tagger", URL: relay.URL, Timeout: 5 * time.Second, Threshold: 3, Backoff: time.Second,
		Headers: http.Header{"Authorization": {"Bearer " + h.Status.Token}},
		Ignore:  configuration.Ignore{Actions: []string{"pull", "mount", "delete"}},
	}}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = r.Close() })
	reg := &testRegistry{r}
	host := reg.Addr()
	reg.push(t, "org/app:v1")
	reg.push(t, "org/app:v2")
	reg.push(t, "org/other:v1")

	images := map[string]string{ // name -> from, in ns
		"app-v1":  host + "/org/app:v1",
		"app-v2":  host + "/org/app:v2",
		"other":   host + "/org/other:v1",
		"hub":     "docker.io/octo/app:latest",
		"hub-old": "docker.io/octo/app:1.0",
		"gh":      "ghcr.io/octo-org/app:v1.4.0",
	}
	for name, from := range images {
		img := &v1beta1.Image{ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: ns}, Spec: v1beta1.ImageSpec{From: from, Insecure: true}}
		if _, err := s.client.TaggerV1beta1().Images(ns).Create(ctx, img, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	// Another namespace with the same Image: another token, never checked.
	if _, err := s.client.TaggerV1beta1().Images("team-b").Create(ctx, &v1beta1.Image{
		ObjectMeta: metav1.ObjectMeta{Name: "app-v1", Namespace: "team-b"}, Spec: v1beta1.ImageSpec{From: host + "/org/app:v1", Insecure: true},
	}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	otherToken := s.hook(t, "team-b").Status.Token

	lastChecked := func(namespace, name string) time.Time {
		img := s.image(t, namespace, name)
		if img.Status.LastCheckedAt == nil {
			return time.Time{}
		}
		return img.Status.LastCheckedAt.Time
	}
	// expectChecked waits until exactly want (and no other Image) got a
	// check after before.
	expectChecked := func(t *testing.T, before map[string]time.Time, want string) {
		t.Helper()
		err := wait.PollUntilContextTimeout(ctx, 50*time.Millisecond, 10*time.Second, true, func(context.Context) (bool, error) {
			return lastChecked(ns, want).After(before[want]), nil
		})
		if err != nil {
			t.Fatalf("Image %s was not checked", want)
		}
		time.Sleep(300 * time.Millisecond) // room for wrong checks to show
		for name := range images {
			if name != want && !lastChecked(ns, name).Equal(before[name]) {
				t.Errorf("Image %s was checked too", name)
			}
		}
		if !lastChecked("team-b", "app-v1").IsZero() {
			t.Errorf("the Image of namespace team-b was checked")
		}
	}
	snapshot := func() map[string]time.Time {
		m := map[string]time.Time{}
		for name := range images {
			m[name] = lastChecked(ns, name)
		}
		return m
	}

	formats := []struct {
		name   string
		url    string
		header http.Header
		body   string
		want   string
	}{{
		name: "distribution notification (the registry's own)",
		want: "app-v2",
	}, {
		name: "generic",
		url:  h.Status.URL,
		body: fmt.Sprintf(`{"repository": %q, "tag": "v1"}`, host+"/org/app"),
		want: "app-v1",
	}, {
		name: "quay",
		url:  h.Status.URL,
		body: fmt.Sprintf(`{"repository": "org/other", "namespace": "org", "name": "other", "docker_url": %q, "homepage": "https://%s/repository/org/other", "updated_tags": ["v1"]}`, host+"/org/other", host),
		want: "other",
	}, {
		name:   "harbor (Authorization header, no token in the URL)",
		url:    tokenless,
		header: http.Header{"Authorization": {"Bearer " + h.Status.Token}},
		body: fmt.Sprintf(`{"type": "PUSH_ARTIFACT", "occur_at": 1680501893, "operator": "admin", "event_data": {"resources": [{"digest": "sha256:954b", "tag": "v2", "resource_url": %q}],
  "repository": {"name": "app", "namespace": "org", "repo_full_name": "org/app", "repo_type": "private"}}}`, host+"/org/app:v2"),
		want: "app-v2",
	}, {
		name: "docker hub",
		url:  h.Status.URL,
		body: `{"callback_url": "https://registry.hub.docker.com/u/octo/app/hook/2141b5bi5i5b02bec211i4eeih0242eg11000a/",
  "push_data": {"pushed_at": 1417566161, "pusher": "octo", "tag": "latest"},
  "repository": {"name": "app", "namespace": "octo", "owner": "octo", "repo_name": "octo/app", "status": "Active"}}`,
		want: "hub",
	}, {
		name:   "github (signed, no token in the URL)",
		url:    tokenless,
		header: http.Header{"X-Github-Event": {"registry_package"}, "X-Github-Delivery": {"5d2b6f00-1"}},
		body: `{"action": "published", "registry_package": {"name": "app", "namespace": "octo-org", "package_type": "CONTAINER",
  "package_version": {"version": "sha256:3da5", "container_metadata": {"tag": {"name": "v1.4.0", "digest": "sha256:3da5"}}, "package_url": "ghcr.io/octo-org/app:v1.4.0"},
  "registry": {"name": "GitHub CR", "type": "docker", "url": "https://ghcr.io/octo-org"}}}`,
		want: "gh",
	}}
	for _, f := range formats {
		t.Run(f.name, func(t *testing.T) {
			before := snapshot()
			start := time.Now()
			if f.url == "" {
				reg.push(t, "org/app:v2") // a new digest under the tag
			} else {
				header := f.header.Clone()
				if header.Get("X-Github-Event") != "" {
					header.Set("X-Hub-Signature-256", hmacSHA256(h.Status.Token, f.body))
				}
				code, body := post(t, client, f.url, f.body, header)
				if code != http.StatusAccepted {
					t.Fatalf("status %d: %s", code, body)
				}
				var resp registryhooks.Response
				if err := json.Unmarshal([]byte(body), &resp); err != nil || len(resp.Images) != 1 || resp.Images[0] != f.want {
					t.Fatalf("answer %s", body)
				}
			}
			expectChecked(t, before, f.want)
			t.Logf("checked %s after the call", lastChecked(ns, f.want).Sub(start).Round(time.Millisecond))
		})
	}

	// The checks imported what the hooks named, and only that.
	for _, name := range []string{"app-v1", "app-v2", "other"} {
		if len(s.image(t, ns, name).Status.HashReferences) == 0 {
			t.Errorf("Image %s has no generation after its hook", name)
		}
	}
	// app-v2 was imported once (the registry's notification); Harbor's
	// call for the same digest found it unchanged and recorded nothing.
	if recs := s.triggered(t, ns, "app-v2"); len(recs) != 1 || recs[0].Labels[v1beta1.LabelImportTrigger] != v1beta1.TriggerWebhook ||
		!strings.HasPrefix(recs[0].Annotations[v1beta1.AnnotationImportTriggerDetail], "distribution webhook: push of "+host+"/org/app:v2") {
		t.Errorf("app-v2 records: %+v", recs)
	}
	for _, name := range []string{"hub", "gh"} {
		c := checked(s.image(t, ns, name))
		if c == nil || c.Reason != v1beta1.ReasonCheckFailed || !strings.Contains(c.Message, "deny-list") {
			t.Errorf("Image %s: Checked %+v, want the policy's refusal", name, c)
		}
	}

	t.Run("wrong credentials check nothing", func(t *testing.T) {
		before := snapshot()
		generic := fmt.Sprintf(`{"repository": %q, "tag": "v1"}`, host+"/org/app")
		gh := formats[len(formats)-1]
		for _, c := range []struct {
			name   string
			url    string
			header http.Header
			body   string
		}{
			{"wrong token", tokenless + "/" + strings.Repeat("x", len(h.Status.Token)), nil, generic},
			{"another namespace's token", tokenless + "/" + otherToken, nil, generic},
			{"unknown namespace", strings.Replace(h.Status.URL, "/"+ns+"/", "/nowhere/", 1), nil, generic},
			{"no token", tokenless, nil, generic},
			{"wrong bearer", tokenless, http.Header{"Authorization": {"Bearer " + otherToken}}, generic},
			{"github signature with another secret", tokenless,
				http.Header{"X-Github-Event": {"registry_package"}, "X-Hub-Signature-256": {hmacSHA256(otherToken, gh.body)}}, gh.body},
			{"github signature of another body", tokenless,
				http.Header{"X-Github-Event": {"registry_package"}, "X-Hub-Signature-256": {hmacSHA256(h.Status.Token, generic)}}, gh.body},
		} {
			if code, body := post(t, client, c.url, c.body, c.header); code != http.StatusNotFound {
				t.Errorf("%s: status %d (%s), want 404", c.name, code, body)
			}
		}
		time.Sleep(time.Second)
		for name, at := range before {
			if !lastChecked(ns, name).Equal(at) {
				t.Errorf("Image %s was checked", name)
			}
		}
	})

	t.Run("hooks never create Images", func(t *testing.T) {
		body := fmt.Sprintf(`{"repository": %q, "tag": "v1"}`, host+"/org/unknown")
		code, resp := post(t, client, h.Status.URL, body, nil)
		if code != http.StatusAccepted || !strings.Contains(resp, `"images":[]`) {
			t.Errorf("status %d: %s", code, resp)
		}
		list, err := s.client.TaggerV1beta1().Images(ns).List(ctx, metav1.ListOptions{})
		if err != nil || len(list.Items) != len(images) {
			t.Errorf("%d Images (%v), want %d", len(list.Items), err, len(images))
		}
	})

	t.Run("the hook is outside the API", func(t *testing.T) {
		// No Kubernetes credentials, and its own Authorization header, go
		// to the hook, not to the API's authentication.
		code, _ := post(t, client, tokenless, fmt.Sprintf(`{"repository": %q, "tag": "v1"}`, host+"/org/app"), http.Header{"Authorization": {"Bearer " + h.Status.Token}})
		if code != http.StatusAccepted {
			t.Errorf("status %d", code)
		}
		u := strings.Replace(h.Status.URL, registryhooks.PathPrefix+ns+"/"+h.Status.Token, "/apis/tagger.dev/v1beta1/namespaces/"+ns+"/images", 1)
		req, _ := http.NewRequest(http.MethodGet, u, nil)
		req.Header.Set("Authorization", "Bearer "+h.Status.Token)
		resp, err := client.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusUnauthorized && resp.StatusCode != http.StatusForbidden {
			t.Errorf("the hook token on the API: %d, want 401 or 403", resp.StatusCode)
		}
	})
	// Every call shows in /metrics, by result class only.
	series := scrape(t, s)
	if accepted, notFound := sum(series, "tagger_webhook_calls_total", `webhook="registry"`, `result="accepted"`),
		sum(series, "tagger_webhook_calls_total", `webhook="registry"`, `result="not_found"`); accepted < 1 || notFound < 1 {
		t.Errorf("tagger_webhook_calls_total: accepted %v, not_found %v", accepted, notFound)
	}
}
