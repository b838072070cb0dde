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
	"bytes"
	"crypto/tls"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	admissionv1 "k8s.io/api/admission/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
)

// Who may call the pod webhook. kube-apiserver gets the admission
// configuration of artifacts/kube-apiserver/ (paths and the service port
// changed for loopback): it presents a client certificate, issued by the
// cluster CA, to the webhook of tagger-apiserver.tagger.svc.
var webhookAuth struct {
	port int // the webhook replica's port, known before kube-apiserver starts
	// kube-apiserver's webhook client certificate, and one of an ordinary
	// cluster user (alice), both from the cluster CA.
	clientCert, clientKey string
	aliceCert, aliceKey   string
}

// webhookAdmissionConfig writes kube-apiserver's admission configuration
// from artifacts/kube-apiserver/ and returns its path, for
// --admission-control-config-file.
func webhookAdmissionConfig(pki string, clusterCA *ca) (string, error) {
	var err error
	if webhookAuth.port, err = freePort(); err != nil {
		return "", err
	}
	if webhookAuth.clientCert, webhookAuth.clientKey, err = clusterCA.issue(pki, "webhook-client", "kube-apiserver-webhook-client", nil); err != nil {
		return "", err
	}
	if webhookAuth.aliceCert, webhookAuth.aliceKey, err = clusterCA.issue(pki, "alice-client", "alice", []string{"e2e"}); err != nil {
		return "", err
	}
	replace := strings.NewReplacer(
		"/etc/kubernetes/tagger/webhook-client.crt", webhookAuth.clientCert,
		"/etc/kubernetes/tagger/webhook-client.key", webhookAuth.clientKey,
		"/etc/kubernetes/tagger/admission-kubeconfig.yaml", filepath.Join(pki, "admission-kubeconfig.yaml"),
		// The Service's port is the webhook replica's, not 443.
		"name: tagger-apiserver.tagger.svc\n", fmt.Sprintf("name: tagger-apiserver.tagger.svc:%d\n", webhookAuth.port),
	)
	for _, f := range []string{"admission-config.yaml", "admission-kubeconfig.yaml"} {
		b, err := os.ReadFile(filepath.Join("../../artifacts/kube-apiserver", f))
		if err != nil {
			return "", err
		}
		if err := os.WriteFile(filepath.Join(pki, f), []byte(replace.Replace(string(b))), 0o600); err != nil {
			return "", err
		}
	}
	return filepath.Join(pki, "admission-config.yaml"), nil
}

// forgedReview is a review of a pod that names the Image app in ns.
func forgedReview(t *testing.T, ns string) []byte {
	t.Helper()
	pod, _ := json.Marshal(&corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: "forged", Namespace: ns},
		Spec: corev1.PodSpec{Containers: []corev1.Container{{Name: "c", Image: "app"}}}})
	b, _ := json.Marshal(&admissionv1.AdmissionReview{
		TypeMeta: metav1.TypeMeta{APIVersion: "admission.k8s.io/v1", Kind: "AdmissionReview"},
		Request: &admissionv1.AdmissionRequest{UID: "forged", Namespace: ns, Operation: admissionv1.Create,
			Resource: metav1.GroupVersionResource{Version: "v1", Resource: "pods"}, Object: runtime.RawExtension{Raw: pod}},
	})
	return b
}

// callWebhook POSTs body straight to the webhook replica, presenting the
// client certificate certFile (none when empty) and the bearer token (none
// when empty).
func callWebhook(t *testing.T, certFile, keyFile, token string, body io.Reader) (int, string) {
	t.Helper()
	cfg := &tls.Config{InsecureSkipVerify: true} //nolint:gosec // the caller's certificate is under test, not the server's
	if certFile != "" {
		cert, err := tls.LoadX509KeyPair(certFile, keyFile)
		if err != nil {
			t.Fatal(err)
		}
		cfg.Certificates = []tls.Certificate{cert}
	}
	client := &http.Client{Timeout: 30 * time.Second, Transport: &http.Transport{TLSClientConfig: cfg}}
	req, err := http.NewRequest(http.MethodPost, fmt.Sprintf("https://127.0.0.1:%d/webhooks/tagger.dev/pods", webhookAuth.port), body)
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Content-Type", "application/json")
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	resp, err := client.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<16))
	return resp.StatusCode, string(b)
}

// The pod webhook answers kube-apiserver and nobody else: a forged review
// sent straight to the service, with no certificate, a cluster user's
// certificate or an administrator's token, is refused and writes no
// Secret; kube-apiserver's calls resolve pods; an oversized review is
// refused.
func TestWebhookAnswersOnlyKubeAPIServer(t *testing.T) {
	c := needCluster(t)
	c.needWorkloads(t)
	src := startRegistry(t, registryOptions{})
	mirror := startRegistry(t, registryOptions{users: map[string]string{"mirrorer": "m1rr0r"}})
	src.push(t, "org/app:v1")
	ns := c.namespace(t, "webhook-auth")
	c.mustKubectl(t, "admin", "", "label", "namespace", ns, "tagger.dev/resolve=enabled")
	c.mustKubectl(t, "admin", mirrorSecret(ns, mirror.Addr(), map[string]string{"insecure": "true", "username": "mirrorer", "password": "m1rr0r"}), "apply", "-f", "-")
	time.Sleep(informerDelay)
	ref := mustImport(t, c.importImage(t, "admin", ns, "app", src.Addr()+"/org/app:v1", true, true))
	noSecret := func(when string) {
		t.Helper()
		if _, err := c.kubectlAs("admin", "", "get", "secret", "-n", ns, "tagger-mirror-pull"); err == nil {
			t.Fatalf("%s: the pull Secret was written", when)
		}
	}

	review := forgedReview(t, ns)
	for name, tc := range map[string]struct {
		cert, key, token string
		want             int
	}{
		"no credentials":                   {want: http.StatusUnauthorized},
		"a cluster user's certificate":     {cert: webhookAuth.aliceCert, key: webhookAuth.aliceKey, want: http.StatusForbidden},
		"an administrator's token":         {token: "admin-token", want: http.StatusUnauthorized},
		"a user's token and a certificate": {cert: webhookAuth.aliceCert, key: webhookAuth.aliceKey, token: "bob-token", want: http.StatusForbidden},
	} {
		code, body := callWebhook(t, tc.cert, tc.key, tc.token, bytes.NewReader(review))
		if code != tc.want || strings.Contains(body, "patch") {
			t.Errorf("%s: %d %s, want %d", name, code, body, tc.want)
		}
	}
	noSecret("after forged reviews")

	// kube-apiserver's own certificate gets answers, up to a pod review's
	// size.
	code, body := callWebhook(t, webhookAuth.clientCert, webhookAuth.clientKey, "", io.MultiReader(
		strings.NewReader(`{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","request":{"uid":"x","object":{"pad":"`),
		strings.NewReader(strings.Repeat("x", 7<<20)), strings.NewReader(`"}}}`)))
	if code != http.StatusRequestEntityTooLarge {
		t.Errorf("a 7 MiB review: %d %s", code, body)
	}
	noSecret("after an oversized review")

	// Pods created through kube-apiserver are resolved: it presents its
	// certificate, as artifacts/kube-apiserver/ configures it to.
	c.mustKubectl(t, "admin", podYAML(ns, "p", "", "app"), "create", "-f", "-")
	if pod := c.getPod(t, ns, "p"); pod.Spec.Containers[0].Image != ref {
		t.Fatalf("image %s, want %s", pod.Spec.Containers[0].Image, ref)
	}
	c.mustKubectl(t, "admin", "", "get", "secret", "-n", ns, "tagger-mirror-pull")
}

// The server's identity writes no Secret but its own two (the pull Secret,
// the registry hook token): the ValidatingAdmissionPolicy of
// artifacts/secrets-policy.yaml refuses any other name or type
// (ServiceAccount tokens above all), and pull Secrets in namespaces that did
// not opt in, although RBAC lets it create Secrets anywhere.
func TestServerIdentityWritesOnlyThePullSecret(t *testing.T) {
	c := needCluster(t)
	asServer := func(manifest string) (string, error) {
		cmd := c.command(t.Context(), "admin", "create", "-f", "-")
		// The server's own kubeconfig (its ServiceAccount token), not
		// KUBECONFIG's users; --user=admin from command() is overridden.
		cmd.Args = append(cmd.Args[:len(cmd.Args)-1], "--kubeconfig="+filepath.Join(c.dir, "tagger-apiserver.kubeconfig"))
		cmd.Stdin = strings.NewReader(manifest)
		out, err := cmd.CombinedOutput()
		return string(out), err
	}
	secret := func(ns, name, typ string, labels, annotations map[string]string) string {
		s := &corev1.Secret{TypeMeta: metav1.TypeMeta{APIVersion: "v1", Kind: "Secret"},
			ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name, Labels: labels, Annotations: annotations},
			Type:       corev1.SecretType(typ), Data: map[string][]byte{}}
		switch corev1.SecretType(typ) {
		case corev1.SecretTypeDockerConfigJson:
			s.Data[corev1.DockerConfigJsonKey] = []byte(`{"auths":{}}`)
		case corev1.SecretTypeOpaque:
			s.Data["k"] = []byte("v")
		}
		b, _ := json.Marshal(s)
		return string(b)
	}
	optedIn := c.namespace(t, "secrets-policy")
	c.mustKubectl(t, "admin", "", "label", "namespace", optedIn, "tagger.dev/resolve=enabled")
	other := c.namespace(t, "secrets-policy-other")
	managed := map[string]string{"app.kubernetes.io/managed-by": "tagger"}
	saToken := map[string]string{corev1.ServiceAccountNameKey: "default"}

	// RBAC alone would let all of these through.
	for name, manifest := range map[string]string{
		"another name":                     secret(optedIn, "other", "kubernetes.io/dockerconfigjson", managed, nil),
		"an Opaque Secret":                 secret(optedIn, "tagger-mirror-pull", "Opaque", managed, nil),
		"a ServiceAccount token":           secret(optedIn, "tagger-mirror-pull", string(corev1.SecretTypeServiceAccountToken), managed, saToken),
		"a ServiceAccount token elsewhere": secret("kube-system", "token", string(corev1.SecretTypeServiceAccountToken), nil, saToken),
		"a token named as the hook token":  secret(other, "tagger-registry-hook", string(corev1.SecretTypeServiceAccountToken), managed, saToken),
		"without the label":                secret(optedIn, "tagger-mirror-pull", "kubernetes.io/dockerconfigjson", nil, nil),
		"a namespace that did not opt in":  secret(other, "tagger-mirror-pull", "kubernetes.io/dockerconfigjson", managed, nil),
	} {
		out, err := asServer(manifest)
		if err == nil {
			t.Errorf("%s: created as tagger-apiserver: %s", name, out)
			continue
		}
		if !strings.Contains(out, "tagger-apiserver-secrets") {
			t.Errorf("%s: refused, but not by the policy: %s", name, out)
		}
	}
	// The pull Secret itself, as the webhook writes it, passes.
	if out, err := asServer(secret(optedIn, "tagger-mirror-pull", "kubernetes.io/dockerconfigjson", managed, nil)); err != nil {
		t.Fatalf("the pull Secret: %v\n%s", err, out)
	}
	// Others are not bound by it.
	c.mustKubectl(t, "admin", secret(optedIn, "other", "Opaque", nil, nil), "create", "-f", "-")
}
