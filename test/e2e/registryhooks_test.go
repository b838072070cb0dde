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

package e2e

import (
	"crypto/tls"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"path/filepath"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"tagger.dev/tagger/pkg/apis/tagger/v1beta1"
)

// The registry webhook token of a namespace is a Secret in a cluster:
// "kubectl image hook-url" (right: create registryhooks, in "edit") creates
// it through Tagger, which may write it under the Secrets policy; a call with
// it re-imports the matching Image; wrong tokens and the token of another
// namespace check nothing; --rotate replaces it.
func TestRegistryHookSecretToken(t *testing.T) {
	c := needCluster(t)
	c.needPlugin(t, "kubectl-image")
	src := startRegistry(t, registryOptions{})
	first := src.push(t, "org/app:v1")
	from := src.Addr() + "/org/app:v1"
	ns := c.namespace(t, "hooks")
	other := c.namespace(t, "hooks-other")
	c.mustKubectl(t, "admin", "", "create", "rolebinding", "bob-edit", "-n", ns, "--clusterrole=edit", "--user=bob")
	c.mustKubectl(t, "admin", "", "create", "rolebinding", "alice-view", "-n", ns, "--clusterrole=view", "--user=alice")

	// Only who may edit the namespace gets its hook.
	if _, _, err := c.pluginRun(t.Context(), "alice", "hook-url", "-n", ns); err == nil || !strings.Contains(err.Error(), "forbidden") {
		t.Fatalf("alice (view) got the hook URL: %v", err)
	}
	url := c.mustPlugin(t, "bob", "hook-url", "-n", ns)
	prefix := "https://tagger-apiserver." + taggerNamespace + ".svc/webhooks/tagger.dev/registry/" + ns + "/"
	token, ok := strings.CutPrefix(url, prefix)
	if !ok || len(token) != 43 {
		t.Fatalf("hook URL %q, want %s<token>", url, prefix)
	}
	if again := c.mustPlugin(t, "bob", "hook-url", "-n", ns); again != url {
		t.Errorf("second hook-url printed %q, want the same %q", again, url)
	}
	var secret struct {
		Type     string            `json:"type"`
		Data     map[string]string `json:"data"`
		Metadata struct {
			Labels map[string]string `json:"labels"`
		} `json:"metadata"`
	}
	out := c.mustKubectl(t, "admin", "", "get", "secret", "-n", ns, "tagger-registry-hook", "-o", "json")
	if err := json.Unmarshal([]byte(out), &secret); err != nil {
		t.Fatal(err)
	}
	stored, _ := base64.StdEncoding.DecodeString(secret.Data["token"])
	if string(stored) != token || secret.Type != "Opaque" || secret.Metadata.Labels["app.kubernetes.io/managed-by"] != "tagger" {
		t.Fatalf("Secret tagger-registry-hook: type %s, labels %v, token matches %v", secret.Type, secret.Metadata.Labels, string(stored) == token)
	}
	otherToken, _ := strings.CutPrefix(c.mustPlugin(t, "admin", "hook-url", "-n", other), strings.Replace(prefix, ns, other, 1))

	c.mustKubectl(t, "admin", fmt.Sprintf(`apiVersion: tagger.dev/v1beta1
kind: Image
metadata:
  name: app
  namespace: %s
spec:
  from: %s
  insecure: true
`, ns, from), "apply", "-f", "-")

	// Registries call the Service; here it is tagger-apiserver's port.
	hookURL := func(namespace, tok string) string {
		return c.tagger + "/webhooks/tagger.dev/registry/" + namespace + "/" + tok
	}
	client := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{
		TLSClientConfig: &tls.Config{InsecureSkipVerify: true}, //nolint:gosec // loopback; the certificate is for the Service name
	}}
	call := func(u string) (int, string) {
		t.Helper()
		resp, err := client.Post(u, "application/json", strings.NewReader(fmt.Sprintf(`{"repository": %q, "tag": "v1"}`, src.Addr()+"/org/app")))
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	// The informer sees the Secret within milliseconds.
	eventually(t, 10*time.Second, func() error {
		if code, body := call(hookURL(ns, token)); code != http.StatusAccepted || !strings.Contains(body, `"images":["app"]`) {
			return fmt.Errorf("hook answered %d %s", code, body)
		}
		return nil
	})
	eventually(t, 20*time.Second, func() error {
		img := c.getImage(t, ns, "app")
		if len(img.Status.HashReferences) == 0 || !strings.HasSuffix(img.Status.HashReferences[0].ImageReference, first.String()) {
			return fmt.Errorf("generations %+v", img.Status.HashReferences)
		}
		return nil
	})
	records := c.mustKubectl(t, "admin", "", "get", "imageimports", "-n", ns, "-l", v1beta1.LabelImportTrigger+"="+v1beta1.TriggerWebhook, "-o", "name")
	if n := len(strings.Fields(records)); n != 1 {
		t.Errorf("%d webhook import records, want 1: %q", n, records)
	}

	checkedAt := func() string {
		return c.mustKubectl(t, "admin", "", "get", "image.tagger.dev", "app", "-n", ns, "-o", "jsonpath={.status.lastCheckedAt}")
	}
	before := checkedAt()
	for name, u := range map[string]string{
		"wrong token":               hookURL(ns, strings.Repeat("A", len(token))),
		"another namespace's token": hookURL(ns, otherToken),
		"unknown namespace":         hookURL("no-such-namespace", token),
		"no token":                  c.tagger + "/webhooks/tagger.dev/registry/" + ns,
	} {
		if code, body := call(u); code != http.StatusNotFound {
			t.Errorf("%s: %d %s, want 404", name, code, body)
		}
	}

	// Rotation: the old URL stops working, the new one works.
	rotated := c.mustPlugin(t, "bob", "hook-url", "-n", ns, "--rotate")
	newToken, _ := strings.CutPrefix(rotated, prefix)
	if newToken == token || len(newToken) != 43 {
		t.Fatalf("rotated URL %q", rotated)
	}
	eventually(t, 10*time.Second, func() error {
		if code, _ := call(hookURL(ns, token)); code != http.StatusNotFound {
			return fmt.Errorf("the old token still answers %d", code)
		}
		return nil
	})
	if got := checkedAt(); got != before {
		t.Errorf("lastCheckedAt moved from %q to %q without a valid call", before, got)
	}
	if code, body := call(hookURL(ns, newToken)); code != http.StatusAccepted {
		t.Errorf("new token: %d %s", code, body)
	}
	t.Logf("registry hook URL %s (token redacted), answers in a cluster", prefix+"<token>")
}

// The Secrets policy lets the server's identity write the hook token
// Secret as Tagger writes it (Opaque, labelled, any namespace), and nothing
// else under that name.
func TestServerIdentityWritesTheHookSecretOnly(t *testing.T) {
	c := needCluster(t)
	asServer := func(s *corev1.Secret) (string, error) {
		cmd := c.command(t.Context(), "admin", "create", "-f", "-")
		cmd.Args = append(cmd.Args[:len(cmd.Args)-1], "--kubeconfig="+filepath.Join(c.dir, "tagger-apiserver.kubeconfig"))
		b, _ := json.Marshal(s)
		cmd.Stdin = strings.NewReader(string(b))
		out, err := cmd.CombinedOutput()
		return string(out), err
	}
	ns := c.namespace(t, "hook-secret-policy")
	secret := func(name string, typ corev1.SecretType, labels map[string]string) *corev1.Secret {
		return &corev1.Secret{TypeMeta: metav1.TypeMeta{APIVersion: "v1", Kind: "Secret"},
			ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name, Labels: labels}, Type: typ,
			Data: map[string][]byte{"token": []byte("x"), corev1.DockerConfigJsonKey: []byte(`{"auths":{}}`)}}
	}
	managed := map[string]string{"app.kubernetes.io/managed-by": "tagger"}
	for name, s := range map[string]*corev1.Secret{
		"without the label":     secret("tagger-registry-hook", corev1.SecretTypeOpaque, nil),
		"another type":          secret("tagger-registry-hook", corev1.SecretTypeDockerConfigJson, managed),
		"another Opaque Secret": secret("tagger-registry-hooks", corev1.SecretTypeOpaque, managed),
	} {
		if out, err := asServer(s); err == nil || !strings.Contains(out, "tagger-apiserver-secrets") {
			t.Errorf("%s: %v %s, want the policy's refusal", name, err, out)
		}
	}
	if out, err := asServer(secret("tagger-registry-hook", corev1.SecretTypeOpaque, managed)); err != nil {
		t.Fatalf("the hook Secret as Tagger writes it: %v\n%s", err, out)
	}
}
