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

package helm

import (
	"bytes"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"regexp"
	"sort"
	"strings"
	"testing"

	"k8s.io/apimachinery/pkg/api/resource"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
)

const chart = "../../artifacts"

func run(t *testing.T, name string, args ...string) string {
	t.Helper()
	cmd := exec.Command(name, args...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		t.Fatalf("%s %s: %v\n%s%s", name, strings.Join(args, " "), err, stdout.String(), stderr.String())
	}
	return stdout.String()
}

// objects decodes a multi-document YAML stream, keyed by kind/namespace/name.
func objects(t *testing.T, y string) map[string]*unstructured.Unstructured {
	t.Helper()
	out := map[string]*unstructured.Unstructured{}
	dec := utilyaml.NewYAMLOrJSONDecoder(strings.NewReader(y), 4096)
	for {
		var m map[string]any
		if err := dec.Decode(&m); errors.Is(err, io.EOF) {
			break
		} else if err != nil {
			t.Fatal(err)
		}
		if m == nil {
			continue
		}
		u := &unstructured.Unstructured{Object: m}
		key := u.GetKind() + "/" + u.GetNamespace() + "/" + u.GetName()
		if _, dup := out[key]; dup {
			t.Fatalf("%s twice", key)
		}
		out[key] = u
	}
	return out
}

// certs runs hack/gen-certs.sh into a copy of artifacts/ and returns it.
func certs(t *testing.T) string {
	t.Helper()
	dir := filepath.Join(t.TempDir(), "artifacts")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	entries, err := os.ReadDir(chart)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range entries {
		if e.IsDir() || !strings.HasSuffix(e.Name(), ".yaml") {
			continue
		}
		b, err := os.ReadFile(filepath.Join(chart, e.Name()))
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, e.Name()), b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	run(t, "../../hack/gen-certs.sh", "-o", filepath.Join(dir, "certs"))
	return dir
}

func TestChartLints(t *testing.T) {
	helm := Helm(t)
	run(t, helm, "lint", "--strict", chart)
	run(t, helm, "lint", "--strict", chart, "--set", "podWebhook.enabled=false,etcd.enabled=false,etcd.servers=https://etcd:2379,etcd.tls.secretName=etcd-client")
}

var hashSuffix = regexp.MustCompile(`^(tagger-apiserver-serving-cert)-[a-z0-9]{10}$`)

// With the certificate of hack/gen-certs.sh, helm template renders exactly
// what kubectl kustomize renders (the Secret keeps its name without
// kustomize's hash suffix, and also holds ca.crt).
func TestChartRendersTheKustomizeBase(t *testing.T) {
	helm := Helm(t)
	base := certs(t)
	kust := objects(t, run(t, "kubectl", "kustomize", base))
	c := filepath.Join(base, "certs")
	rendered := objects(t, run(t, helm, "template", "tagger", chart, "-n", "tagger",
		"--set", "namespace.create=true,certificate.mode=provided",
		"--set-file", "certificate.cert="+filepath.Join(c, "tls.crt"),
		"--set-file", "certificate.key="+filepath.Join(c, "tls.key"),
		"--set-file", "certificate.ca="+filepath.Join(c, "ca.crt")))

	// kustomize's Secret name carries a hash of its content.
	for key, u := range kust {
		if m := hashSuffix.FindStringSubmatch(u.GetName()); m != nil {
			delete(kust, key)
			u.SetName(m[1])
			kust[u.GetKind()+"/"+u.GetNamespace()+"/"+m[1]] = u
		}
		if u.GetKind() == "Deployment" {
			vols, _, _ := unstructured.NestedSlice(u.Object, "spec", "template", "spec", "volumes")
			for _, v := range vols {
				if s, ok := v.(map[string]any)["secret"].(map[string]any); ok {
					if m := hashSuffix.FindStringSubmatch(fmt.Sprint(s["secretName"])); m != nil {
						s["secretName"] = m[1]
					}
				}
			}
			_ = unstructured.SetNestedSlice(u.Object, vols, "spec", "template", "spec", "volumes")
		}
	}
	secret := "Secret/tagger/tagger-apiserver-serving-cert"
	if s := rendered[secret]; s != nil {
		unstructured.RemoveNestedField(s.Object, "data", "ca.crt")
	}
	// kustomize wraps base64 lines.
	for _, objs := range []map[string]*unstructured.Unstructured{kust, rendered} {
		for _, u := range objs {
			if data, ok := u.Object["data"].(map[string]any); ok && u.GetKind() == "Secret" {
				for k, v := range data {
					data[k] = strings.Join(strings.Fields(fmt.Sprint(v)), "")
				}
			}
		}
	}

	var keys []string
	for k := range kust {
		keys = append(keys, k)
	}
	for k := range rendered {
		if _, ok := kust[k]; !ok {
			keys = append(keys, k)
		}
	}
	sort.Strings(keys)
	for _, k := range keys {
		a, b := kust[k], rendered[k]
		switch {
		case a == nil:
			t.Errorf("%s: rendered by the chart, not by kustomize", k)
		case b == nil:
			t.Errorf("%s: rendered by kustomize, not by the chart", k)
		case !reflect.DeepEqual(a.Object, b.Object):
			ja, _ := json.MarshalIndent(a.Object, "", " ")
			jb, _ := json.MarshalIndent(b.Object, "", " ")
			t.Errorf("%s differs:\nkustomize: %s\nchart:     %s", k, ja, jb)
		}
	}
	if len(kust) < 20 {
		t.Errorf("only %d objects: %v", len(kust), keys)
	}
}

// A generated certificate is valid for the Service of the release's
// namespace and signed by the caBundle of the APIService and the webhook;
// every namespaced object, and every reference to the namespace, follows
// the release.
func TestChartGeneratesCertificateInAnyNamespace(t *testing.T) {
	helm := Helm(t)
	out := run(t, helm, "template", "t", chart, "-n", "images",
		"--set", "image.tag=1.2.3,replicas=3,podWebhook.enabled=true,rollout.enabled=false,extraArgs[0]=-v=2,mirror.address=mirror.example:5000")
	objs := objects(t, out)
	if strings.Contains(out, "tagger.svc") || strings.Contains(out, "namespace: tagger\n") || strings.Contains(out, "serviceaccount:tagger:") {
		t.Errorf("the namespace tagger is left somewhere:\n%s", out)
	}
	s := objs["Secret/images/tagger-apiserver-serving-cert"]
	if s == nil {
		t.Fatalf("no serving Secret in %v", keysOf(objs))
	}
	data := func(k string) []byte {
		v, _, _ := unstructured.NestedString(s.Object, "data", k)
		b, err := base64.StdEncoding.DecodeString(v)
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	ca, _, _ := unstructured.NestedString(objs["APIService//v1beta1.tagger.dev"].Object, "spec", "caBundle")
	if ca != base64.StdEncoding.EncodeToString(data("ca.crt")) {
		t.Errorf("APIService caBundle is not the Secret's ca.crt")
	}
	hooks, _, _ := unstructured.NestedSlice(objs["MutatingWebhookConfiguration//tagger.dev-pods"].Object, "webhooks")
	if len(hooks) != 1 || hooks[0].(map[string]any)["clientConfig"].(map[string]any)["caBundle"] != ca {
		t.Errorf("webhook caBundle is not the APIService's")
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(data("ca.crt")) {
		t.Fatal("ca.crt holds no certificate")
	}
	block, _ := pem.Decode(data("tls.crt"))
	if block == nil {
		t.Fatal("tls.crt holds no certificate")
	}
	cert, err := x509.ParseCertificate(block.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := cert.Verify(x509.VerifyOptions{DNSName: "tagger-apiserver.images.svc", Roots: pool}); err != nil {
		t.Errorf("serving certificate: %v", err)
	}

	d := objs["Deployment/images/tagger-apiserver"]
	if d == nil {
		t.Fatalf("no Deployment in %v", keysOf(objs))
	}
	replicas, _, _ := unstructured.NestedFieldNoCopy(d.Object, "spec", "replicas")
	containers, _, _ := unstructured.NestedSlice(d.Object, "spec", "template", "spec", "containers")
	c := containers[0].(map[string]any)
	args := fmt.Sprint(c["args"])
	if fmt.Sprint(replicas) != "3" || c["image"] != "quay.io/tagger/tagger-apiserver:1.2.3" ||
		!strings.Contains(args, "--enable-pod-webhook") || strings.Contains(args, "--enable-rollout") ||
		!strings.HasSuffix(args, "-v=2]") || !strings.Contains(args, "--etcd-servers=http://tagger-etcd.images.svc:2379") {
		t.Errorf("replicas %v, image %v, args %s", replicas, c["image"], args)
	}
	if m := objs["Secret/images/mirror-registry-config"]; m == nil {
		t.Errorf("no mirror-registry-config Secret")
	}
	if objs["Namespace//images"] != nil {
		t.Errorf("Namespace rendered without namespace.create")
	}
}

// Without the pod webhook and the bundled etcd: no webhook configuration,
// no etcd objects, the flags of an external TLS etcd.
func TestChartWithoutWebhookAndEtcd(t *testing.T) {
	helm := Helm(t)
	objs := objects(t, run(t, helm, "template", "t", chart, "-n", "tagger",
		"--set", "podWebhook.enabled=false,etcd.enabled=false,etcd.servers=https://etcd.example:2379,etcd.tls.secretName=etcd-client"))
	for k := range objs {
		if strings.HasPrefix(k, "MutatingWebhookConfiguration/") || strings.Contains(k, "tagger-etcd") {
			t.Errorf("%s rendered", k)
		}
	}
	d := objs["Deployment/tagger/tagger-apiserver"]
	containers, _, _ := unstructured.NestedSlice(d.Object, "spec", "template", "spec", "containers")
	args := fmt.Sprint(containers[0].(map[string]any)["args"])
	for _, want := range []string{"--etcd-servers=https://etcd.example:2379", "--etcd-cafile=/var/run/tagger/etcd/ca.crt", "--etcd-certfile=", "--etcd-keyfile="} {
		if !strings.Contains(args, want) {
			t.Errorf("args %s lack %s", args, want)
		}
	}
	if strings.Contains(args, "--enable-pod-webhook") {
		t.Errorf("args %s enable the pod webhook", args)
	}
}

func keysOf(m map[string]*unstructured.Unstructured) []string {
	var out []string
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}

// The largest push the Deployment accepts (--max-push-bytes) fits the /tmp
// volume: nothing a push or an import writes there can get the pod evicted.
func TestMaxPushBytesFitsTmp(t *testing.T) {
	b, err := os.ReadFile(filepath.Join(chart, "deployment.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	d := objects(t, string(b))["Deployment/tagger/tagger-apiserver"]
	if d == nil {
		t.Fatal("no Deployment in deployment.yaml")
	}
	containers, _, _ := unstructured.NestedSlice(d.Object, "spec", "template", "spec", "containers")
	var maxPush string
	for _, a := range containers[0].(map[string]any)["args"].([]any) {
		if v, ok := strings.CutPrefix(fmt.Sprint(a), "--max-push-bytes="); ok {
			maxPush = v
		}
	}
	vols, _, _ := unstructured.NestedSlice(d.Object, "spec", "template", "spec", "volumes")
	var tmp string
	for _, v := range vols {
		if m := v.(map[string]any); m["name"] == "tmp" {
			tmp, _, _ = unstructured.NestedString(m, "emptyDir", "sizeLimit")
		}
	}
	if maxPush == "" || tmp == "" {
		t.Fatalf("--max-push-bytes %q, /tmp sizeLimit %q: both must be set", maxPush, tmp)
	}
	limit, size := resource.MustParse(maxPush), resource.MustParse(tmp)
	if limit.Cmp(size) > 0 {
		t.Errorf("--max-push-bytes=%s is larger than the /tmp volume (%s)", maxPush, tmp)
	}
}
