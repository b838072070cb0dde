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
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	taggerhelm "tagger.dev/tagger/test/helm"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/v1/remote"

	"tagger.dev/tagger/pkg/apis/tagger/v1beta1"
	"tagger.dev/tagger/pkg/importer"
)

// tags lists the tags of repo in r, sorted.
func (r *registry) tags(t *testing.T, repo string) []string {
	t.Helper()
	rp, err := name.NewRepository(r.Addr()+"/"+repo, name.Insecure)
	if err != nil {
		t.Fatal(err)
	}
	tags, err := remote.List(rp, r.remote...)
	if err != nil && !strings.Contains(err.Error(), "NAME_UNKNOWN") {
		t.Fatal(err)
	}
	sort.Strings(tags)
	return tags
}

// scrapeTagger reads tagger-apiserver's /metrics as admin (authenticated and
// authorized by kube-apiserver, as Prometheus would be).
func (c *cluster) scrapeTagger(t *testing.T) string {
	t.Helper()
	req, err := http.NewRequest(http.MethodGet, c.tagger+"/metrics", nil)
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Authorization", "Bearer admin-token")
	client := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{InsecureSkipVerify: true}}} //nolint:gosec // loopback
	resp, err := client.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("/metrics: %d %s", resp.StatusCode, b)
	}
	return string(b)
}

// In a real cluster, with the mirror from a namespace's Secret: mirrored
// imports leave one tagger-sha256 tag per generation, deleting the Image
// (kubectl delete, which waits for the finalizer) removes them and the
// records, and /metrics shows the imports, labelled by registry host.
func TestCleanupAndMetrics(t *testing.T) {
	c := needCluster(t)
	src := startRegistry(t, registryOptions{})
	mirror := startRegistry(t, registryOptions{})
	ns := c.namespace(t, "cleanup")
	c.mustKubectl(t, "admin", mirrorSecret(ns, mirror.Addr(), map[string]string{"insecure": "true"}), "apply", "-f", "-")
	time.Sleep(informerDelay)

	var digests []string
	for _, tag := range []string{"v1", "v2"} {
		d := src.push(t, "org/app:"+tag)
		digests = append(digests, importer.MirrorTag(d.String()))
		mustImport(t, c.importImage(t, "admin", ns, "app", src.Addr()+"/org/app:"+tag, true, true))
	}
	sort.Strings(digests)
	repo := ns + "/app"
	if got := mirror.tags(t, repo); strings.Join(got, ",") != strings.Join(digests, ",") {
		t.Fatalf("mirror tags %v, want %v", got, digests)
	}
	eventually(t, 30*time.Second, func() error {
		out, err := c.kubectlAs("admin", "", "get", "img", "app", "-n", ns, "-o", "jsonpath={.metadata.finalizers}")
		if err != nil || !strings.Contains(out, v1beta1.FinalizerMirrorTags) {
			return fmt.Errorf("finalizers %q %v", out, err)
		}
		return nil
	})

	metrics := c.scrapeTagger(t)
	host := fmt.Sprintf(`registry=%q`, src.Addr())
	for _, want := range []string{"tagger_imports_total{", "tagger_mirror_duration_seconds_count{", "tagger_imports_progressing ", "apiserver_request_total{"} {
		if !strings.Contains(metrics, want) {
			t.Errorf("/metrics has no %s", want)
		}
	}
	if !strings.Contains(metrics, host) && !strings.Contains(metrics, `registry="other"`) {
		t.Errorf("/metrics has no series labelled %s", host)
	}

	// kubectl delete waits for the finalizer.
	c.mustKubectl(t, "admin", "", "delete", "img", "app", "-n", ns, "--timeout=60s")
	if got := mirror.tags(t, repo); len(got) != 0 {
		t.Errorf("mirror tags after delete: %v", got)
	}
	eventually(t, 30*time.Second, func() error {
		out, err := c.kubectlAs("admin", "", "get", "imageimports", "-n", ns, "-o", "name")
		if err != nil || strings.TrimSpace(out) != "" {
			return fmt.Errorf("records left: %q %v", out, err)
		}
		return nil
	})
	if after := c.scrapeTagger(t); !strings.Contains(after, "tagger_mirror_tags_removed_total{") {
		t.Errorf("/metrics has no tagger_mirror_tags_removed_total after the delete")
	}
}

// helmPostRenderer adapts the chart's output to loopback as the kustomize
// overlay does (loopbackOverlay), and keeps the ServiceAccount at uninstall:
// the tagger-apiserver process of this suite authenticates with its token.
const helmPostRenderer = `#!/bin/sh
set -e
dir=$(dirname "$0")/render
cat > "$dir/chart.yaml"
exec %q kustomize "$dir"
`

const helmKeepServiceAccount = `
- target:
    kind: ServiceAccount
    name: tagger-apiserver
  patch: |-
    apiVersion: v1
    kind: ServiceAccount
    metadata:
      name: tagger-apiserver
      namespace: tagger
      annotations:
        helm.sh/resource-policy: keep
`

// The chart against the real kube-apiserver: every object passes a
// server-side dry run; "helm install" takes over the objects of the
// kustomize install (as an administrator migrating would, the serving
// certificate moved into the chart's Secret), "helm upgrade" keeps the
// caBundle (the chart looks the Secret up) with the APIService Available,
// and "helm uninstall" removes the objects. The kustomize install is
// restored at the end for the other tests.
func TestHelmInstallUpgradeUninstall(t *testing.T) {
	c := needCluster(t)
	helm := taggerhelm.Helm(t)
	port, err := strconv.Atoi(c.tagger[strings.LastIndexByte(c.tagger, ':')+1:])
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	render := filepath.Join(dir, "render")
	if err := os.MkdirAll(render, 0o755); err != nil {
		t.Fatal(err)
	}
	kust := strings.Replace(fmt.Sprintf(loopbackOverlay, port), "- ../artifacts", "- chart.yaml", 1) + helmKeepServiceAccount
	if err := os.WriteFile(filepath.Join(render, "kustomization.yaml"), []byte(kust), 0o644); err != nil {
		t.Fatal(err)
	}
	post := filepath.Join(dir, "post-render.sh")
	if err := os.WriteFile(post, []byte(fmt.Sprintf(helmPostRenderer, c.kubectl)), 0o755); err != nil {
		t.Fatal(err)
	}
	helmRun := func(args ...string) string {
		t.Helper()
		cmd := exec.Command(helm, args...)
		cmd.Env = append(os.Environ(), "KUBECONFIG="+c.kubeconfig, "HOME="+filepath.Join(c.dir, "home"),
			"HELM_CACHE_HOME="+filepath.Join(dir, "helm-cache"), "HELM_CONFIG_HOME="+filepath.Join(dir, "helm-config"), "HELM_DATA_HOME="+filepath.Join(dir, "helm-data"))
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Fatalf("helm %s: %v\n%s", strings.Join(args, " "), err, out)
		}
		return string(out)
	}
	chart := "../../artifacts"
	certs := filepath.Join(c.dir, "install", "artifacts", "certs")
	caBundle := func() string {
		return c.mustKubectl(t, "admin", "", "get", "apiservice", "v1beta1.tagger.dev", "-o", "jsonpath={.spec.caBundle}")
	}
	available := func() {
		t.Helper()
		eventually(t, 60*time.Second, func() error {
			out, err := c.kubectlAs("admin", "", "get", "apiservice", "v1beta1.tagger.dev", "-o", `jsonpath={.status.conditions[?(@.type=="Available")].status}`)
			if err != nil || out != "True" {
				return fmt.Errorf("Available=%q %v", out, err)
			}
			_, err = c.kubectlAs("admin", "", "get", "img", "-A")
			return err
		})
	}
	restore := func() {
		overlay := filepath.Join(c.dir, "install", "loopback")
		if _, err := c.kubectlAs("admin", "", "apply", "-k", overlay); err != nil {
			t.Errorf("restoring the kustomize install: %v", err)
		}
		available()
	}
	t.Cleanup(restore)

	// Server-side dry run of every object the chart renders.
	rendered := helmRun("template", "tagger", chart, "-n", taggerNamespace, "--post-renderer", post,
		"--set", "certificate.mode=provided",
		"--set-file", "certificate.cert="+filepath.Join(certs, "tls.crt"),
		"--set-file", "certificate.key="+filepath.Join(certs, "tls.key"),
		"--set-file", "certificate.ca="+filepath.Join(certs, "ca.crt"))
	out := c.mustKubectl(t, "admin", rendered, "apply", "--dry-run=server", "-f", "-")
	if n := strings.Count(out, "(server dry run)"); n < 20 {
		t.Fatalf("server dry run of %d objects:\n%s", n, out)
	}

	// Migration from the kustomize install: the serving certificate goes
	// into the chart's Secret (with its CA), and the objects are marked as
	// the release's.
	c.mustKubectl(t, "admin", "", "create", "secret", "generic", "tagger-apiserver-serving-cert", "-n", taggerNamespace,
		"--type=kubernetes.io/tls", "--from-file=tls.crt="+filepath.Join(certs, "tls.crt"),
		"--from-file=tls.key="+filepath.Join(certs, "tls.key"), "--from-file=ca.crt="+filepath.Join(certs, "ca.crt"))
	objs := filepath.Join(dir, "objects.yaml")
	if err := os.WriteFile(objs, []byte(rendered), 0o644); err != nil {
		t.Fatal(err)
	}
	_, _ = c.kubectlAs("admin", "", "label", "--overwrite", "-f", objs, "app.kubernetes.io/managed-by=Helm")
	_, _ = c.kubectlAs("admin", "", "annotate", "--overwrite", "-f", objs, "meta.helm.sh/release-name=tagger", "meta.helm.sh/release-namespace="+taggerNamespace)

	before := caBundle()
	helmRun("install", "tagger", chart, "-n", taggerNamespace, "--post-renderer", post, "--wait=false")
	available()
	ca, err := os.ReadFile(filepath.Join(certs, "ca.crt"))
	if err != nil {
		t.Fatal(err)
	}
	if got := caBundle(); got != before || got != base64.StdEncoding.EncodeToString(ca) {
		t.Fatalf("caBundle changed by the install (generated certificate instead of the stored one)")
	}

	helmRun("upgrade", "tagger", chart, "-n", taggerNamespace, "--post-renderer", post, "--reuse-values", "--set", "replicas=3,extraArgs[0]=-v=3")
	available()
	if got := caBundle(); got != before {
		t.Fatalf("caBundle changed by the upgrade")
	}
	if r := c.mustKubectl(t, "admin", "", "get", "deployment", "tagger-apiserver", "-n", taggerNamespace, "-o", "jsonpath={.spec.replicas} {.spec.template.spec.containers[0].args}"); !strings.HasPrefix(r, "3 ") || !strings.Contains(r, "-v=3") {
		t.Fatalf("upgrade not applied: %s", r)
	}
	if s := helmRun("status", "tagger", "-n", taggerNamespace); !strings.Contains(s, "REVISION: 2") || !strings.Contains(s, "STATUS: deployed") {
		t.Fatalf("helm status:\n%s", s)
	}

	helmRun("uninstall", "tagger", "-n", taggerNamespace, "--wait")
	for _, obj := range []string{"apiservice/v1beta1.tagger.dev", "clusterrole/tagger:edit", "mutatingwebhookconfiguration/tagger.dev-pods", "secret/tagger-apiserver-serving-cert"} {
		if out, err := c.kubectlAs("admin", "", "get", obj, "-n", taggerNamespace, "--ignore-not-found", "-o", "name"); err != nil || strings.TrimSpace(out) != "" {
			t.Errorf("%s left after uninstall: %q %v", obj, out, err)
		}
	}
}
