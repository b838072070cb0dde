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
	"encoding/base64"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	"sigs.k8s.io/yaml"
)

// renderArtifacts copies artifacts/, runs hack/gen-certs.sh into the copy
// with args, and returns "kubectl kustomize" of it by kind/namespace/name.
func renderArtifacts(t *testing.T, args ...string) (objects map[string][]byte, certs string) {
	t.Helper()
	kubectl, err := exec.LookPath("kubectl")
	if err != nil {
		t.Skip("kubectl is needed")
	}
	if _, err := exec.LookPath("openssl"); err != nil {
		t.Skip("openssl is needed")
	}
	dir := filepath.Join(t.TempDir(), "artifacts")
	if err := copyArtifacts("../../artifacts", dir); err != nil {
		t.Fatal(err)
	}
	certs = filepath.Join(dir, "certs")
	if out, err := exec.Command("../../hack/gen-certs.sh", append([]string{"-o", certs}, args...)...).CombinedOutput(); err != nil {
		t.Fatalf("hack/gen-certs.sh: %v\n%s", err, out)
	}
	cmd := exec.Command(kubectl, "kustomize", dir)
	cmd.Env = append(os.Environ(), "HOME="+t.TempDir())
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("kubectl kustomize: %v", err)
	}
	objects = map[string][]byte{}
	for _, doc := range strings.Split(string(out), "\n---\n") {
		var meta struct {
			Kind     string `json:"kind"`
			Metadata struct {
				Name, Namespace string
			} `json:"metadata"`
		}
		if err := yaml.Unmarshal([]byte(doc), &meta); err != nil {
			t.Fatalf("%v\n%s", err, doc)
		}
		key := meta.Kind + "/" + meta.Metadata.Namespace + "/" + meta.Metadata.Name
		if meta.Kind == "Secret" { // name has kustomize's hash suffix
			key = "Secret/" + meta.Metadata.Namespace + "/serving-cert"
		}
		objects[key] = []byte(doc)
	}
	return objects, certs
}

func decode[T any](t *testing.T, objects map[string][]byte, key string) *T {
	t.Helper()
	doc, ok := objects[key]
	if !ok {
		keys := make([]string, 0, len(objects))
		for k := range objects {
			keys = append(keys, k)
		}
		slices.Sort(keys)
		t.Fatalf("no %s in kubectl kustomize artifacts/; have %v", key, keys)
	}
	obj := new(T)
	if err := yaml.UnmarshalStrict(doc, obj); err != nil {
		t.Fatalf("%s: %v", key, err)
	}
	return obj
}

// TestArtifacts checks what "make certs && kubectl apply -k artifacts/"
// installs, without a cluster. The suite's cluster installs the same files.
func TestArtifacts(t *testing.T) {
	objects, certs := renderArtifacts(t)
	ca, err := os.ReadFile(filepath.Join(certs, "ca.crt"))
	if err != nil {
		t.Fatal(err)
	}

	t.Run("APIService", func(t *testing.T) {
		var as struct {
			Spec map[string]any `json:"spec"`
		}
		if err := yaml.Unmarshal(objects["APIService//v1beta1.tagger.dev"], &as); err != nil {
			t.Fatal(err)
		}
		if as.Spec["insecureSkipTLSVerify"] != nil {
			t.Error("insecureSkipTLSVerify must not be set")
		}
		if got, _ := as.Spec["caBundle"].(string); got != base64.StdEncoding.EncodeToString(ca) {
			t.Errorf("caBundle is not certs/ca.crt: %q", got)
		}
		for _, k := range []string{"groupPriorityMinimum", "versionPriority"} {
			if as.Spec[k] == nil {
				t.Errorf("%s unset", k)
			}
		}
		svc, _ := as.Spec["service"].(map[string]any)
		if svc["name"] != "tagger-apiserver" || svc["namespace"] != "tagger" {
			t.Errorf("service = %v", svc)
		}
	})

	t.Run("Deployment", func(t *testing.T) {
		d := decode[appsv1.Deployment](t, objects, "Deployment/tagger/tagger-apiserver")
		if d.Spec.Replicas == nil || *d.Spec.Replicas != 2 {
			t.Errorf("replicas = %v, want 2", d.Spec.Replicas)
		}
		pod := d.Spec.Template.Spec
		if pod.ServiceAccountName != "tagger-apiserver" {
			t.Errorf("serviceAccountName = %q", pod.ServiceAccountName)
		}
		if psc := pod.SecurityContext; psc == nil || psc.RunAsNonRoot == nil || !*psc.RunAsNonRoot {
			t.Error("pod must run as non-root")
		}
		ctr := pod.Containers[0]
		if sc := ctr.SecurityContext; sc == nil || sc.ReadOnlyRootFilesystem == nil || !*sc.ReadOnlyRootFilesystem ||
			sc.AllowPrivilegeEscalation == nil || *sc.AllowPrivilegeEscalation {
			t.Error("container must have a read-only root filesystem and no privilege escalation")
		}
		if ctr.LivenessProbe == nil || ctr.LivenessProbe.HTTPGet.Path != "/livez" {
			t.Error("liveness probe must GET /livez")
		}
		if ctr.ReadinessProbe == nil || ctr.ReadinessProbe.HTTPGet.Path != "/readyz" {
			t.Error("readiness probe must GET /readyz")
		}
		if ctr.Resources.Requests.Cpu().IsZero() || ctr.Resources.Requests.Memory().IsZero() {
			t.Error("cpu and memory requests must be set")
		}
		if !slices.Contains(ctr.Args, "--tls-cert-file=/var/run/tagger/serving-cert/tls.crt") {
			t.Errorf("args = %v", ctr.Args)
		}
		secret := decode[corev1.Secret](t, objects, "Secret/tagger/serving-cert")
		if secret.Type != corev1.SecretTypeTLS {
			t.Errorf("serving Secret type = %s", secret.Type)
		}
		var mounted bool
		for _, v := range pod.Volumes {
			mounted = mounted || (v.Secret != nil && v.Secret.SecretName == secret.Name)
		}
		if !mounted {
			t.Errorf("the Deployment does not mount Secret %s", secret.Name)
		}
		if !strings.Contains(ctr.Image, "/") {
			t.Errorf("image %q has no registry", ctr.Image)
		}
	})

	t.Run("delegation", func(t *testing.T) {
		crb := decode[rbacv1.ClusterRoleBinding](t, objects, "ClusterRoleBinding//tagger-apiserver:system:auth-delegator")
		if crb.RoleRef.Name != "system:auth-delegator" || crb.Subjects[0].Name != "tagger-apiserver" {
			t.Errorf("auth-delegator binding = %+v", crb)
		}
		rb := decode[rbacv1.RoleBinding](t, objects, "RoleBinding/kube-system/tagger-apiserver-auth-reader")
		if rb.RoleRef.Name != "extension-apiserver-authentication-reader" || rb.RoleRef.Kind != "Role" {
			t.Errorf("auth-reader binding = %+v", rb)
		}
	})

	t.Run("user roles", func(t *testing.T) {
		view := decode[rbacv1.ClusterRole](t, objects, "ClusterRole//tagger:view")
		edit := decode[rbacv1.ClusterRole](t, objects, "ClusterRole//tagger:edit")
		for _, l := range []string{"view", "edit", "admin"} {
			if view.Labels["rbac.authorization.k8s.io/aggregate-to-"+l] != "true" {
				t.Errorf("tagger:view is not aggregated to %s", l)
			}
		}
		if edit.Labels["rbac.authorization.k8s.io/aggregate-to-view"] == "true" {
			t.Error("tagger:edit must not be aggregated to view")
		}
		allows := func(rules []rbacv1.PolicyRule, verb, resource string) bool {
			for _, r := range rules {
				if slices.Contains(r.APIGroups, "tagger.dev") && slices.Contains(r.Resources, resource) && slices.Contains(r.Verbs, verb) {
					return true
				}
			}
			return false
		}
		for _, res := range []string{"images", "imageimports"} {
			for _, v := range []string{"get", "list", "watch"} {
				if !allows(view.Rules, v, res) {
					t.Errorf("view cannot %s %s", v, res)
				}
			}
			for _, v := range []string{"create", "update", "patch", "delete"} {
				if allows(view.Rules, v, res) || !allows(edit.Rules, v, res) {
					t.Errorf("%s %s: want edit only", v, res)
				}
			}
		}
		if !allows(edit.Rules, "create", "images/push") || !allows(edit.Rules, "get", "images/pull") ||
			allows(view.Rules, "create", "images/push") || allows(view.Rules, "get", "images/pull") {
			t.Error("edit, not view, must create images/push and get images/pull")
		}
	})
}

// TestGenCertsWithOwnCertificate installs a certificate made elsewhere.
func TestGenCertsWithOwnCertificate(t *testing.T) {
	_, generated := renderArtifacts(t)
	own := t.TempDir()
	for _, f := range []string{"tls.crt", "tls.key", "ca.crt"} {
		b, err := os.ReadFile(filepath.Join(generated, f))
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(own, f), b, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	objects, certs := renderArtifacts(t, "--cert", filepath.Join(own, "tls.crt"), "--key", filepath.Join(own, "tls.key"), "--ca", filepath.Join(own, "ca.crt"))
	got, _ := os.ReadFile(filepath.Join(certs, "tls.crt"))
	want, _ := os.ReadFile(filepath.Join(own, "tls.crt"))
	if string(got) != string(want) {
		t.Error("gen-certs.sh --cert did not install the given certificate")
	}
	ca, _ := os.ReadFile(filepath.Join(own, "ca.crt"))
	if !strings.Contains(string(objects["APIService//v1beta1.tagger.dev"]), base64.StdEncoding.EncodeToString(ca)) {
		t.Error("caBundle is not the given CA")
	}
	// A certificate for another name is refused.
	cmd := exec.Command("../../hack/gen-certs.sh", "-o", t.TempDir(), "--namespace", "elsewhere",
		"--cert", filepath.Join(own, "tls.crt"), "--key", filepath.Join(own, "tls.key"), "--ca", filepath.Join(own, "ca.crt"))
	if out, err := cmd.CombinedOutput(); err == nil {
		t.Errorf("a certificate for tagger-apiserver.tagger.svc was accepted for namespace elsewhere:\n%s", out)
	}
}
