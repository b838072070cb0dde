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
	"encoding/json"
	"fmt"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
)

// The pod webhook and the rollout controller run in two more
// tagger-apiserver replicas, started like the first one plus
// --enable-pod-webhook and --enable-rollout: the webhook configuration from
// artifacts/ is pointed at the first of them, and both compete for the
// rollout Lease. kube-controller-manager gets a second instance with the
// deployment, replicaset and job controllers, so that pods come from
// templates as in a real cluster.
var (
	workloadsOnce sync.Once
	workloadsErr  error
)

// findProc returns the cluster's process called name.
func (c *cluster) findProc(name string) *proc {
	for _, p := range c.procs {
		if p.name == name {
			return p
		}
	}
	return nil
}

func (c *cluster) needWorkloads(t *testing.T) {
	t.Helper()
	workloadsOnce.Do(func() { workloadsErr = c.startWorkloads() })
	if workloadsErr != nil {
		t.Fatalf("starting the webhook replicas: %v", workloadsErr)
	}
}

func (c *cluster) startWorkloads() error {
	first := c.findProc("tagger-apiserver")
	kcm := c.findProc("kube-controller-manager")
	if first == nil || kcm == nil {
		return fmt.Errorf("no tagger-apiserver or kube-controller-manager process to copy")
	}
	var ports []int
	for i := 1; i <= 2; i++ {
		// The first serves the webhook, on the port kube-apiserver's
		// admission kubeconfig names (webhookAdmissionConfig).
		port := webhookAuth.port
		if i > 1 {
			var err error
			if port, err = freePort(); err != nil {
				return err
			}
		}
		var args []string
		for _, a := range first.cmd.Args[1:] {
			switch {
			case strings.HasPrefix(a, "--secure-port="):
				a = fmt.Sprintf("--secure-port=%d", port)
			case strings.HasPrefix(a, "--cert-dir="):
				a = fmt.Sprintf("--cert-dir=%s", filepath.Join(c.dir, fmt.Sprintf("tagger-certs-%d", i)))
			}
			args = append(args, a)
		}
		args = append(args, "--enable-pod-webhook", "--enable-rollout",
			// Quick takeover should the leader stop; defaults are 15s/10s/2s.
			"--leader-elect-lease-duration=4s", "--leader-elect-renew-deadline=3s", "--leader-elect-retry-period=500ms")
		p, err := c.start(fmt.Sprintf("tagger-apiserver-workloads-%d", i), first.cmd.Path, args...)
		if err != nil {
			return err
		}
		if err := waitFor(p.name+" serving", 60*time.Second, p, func() error {
			_, err := c.kubectlAs("admin", "", "get", "--raw", "/readyz", fmt.Sprintf("--server=https://127.0.0.1:%d", port), "--insecure-skip-tls-verify")
			return err
		}); err != nil {
			return err
		}
		ports = append(ports, port)
	}
	// The webhook (from artifacts/) reaches the first replica through the
	// ExternalName Service, as the APIService reaches the main one.
	if _, err := c.kubectlAs("admin", "", "patch", "mutatingwebhookconfiguration", "tagger.dev-pods", "--type=json",
		"-p", fmt.Sprintf(`[{"op":"replace","path":"/webhooks/0/clientConfig/service/port","value":%d}]`, ports[0])); err != nil {
		return err
	}
	if _, err := c.start("kube-controller-manager-workloads", kcm.cmd.Path,
		"--kubeconfig="+c.kubeconfig, "--controllers=deployment,replicaset,job",
		"--leader-elect=false", "--secure-port=0", "--use-service-account-credentials=false"); err != nil {
		return err
	}
	return nil
}

// webhookFixture creates a namespace labelled for resolution, with an
// Image app (and an Image tool) imported from a registry of the test.
type webhookFixture struct {
	ns, other     string
	src           *registry
	appV1, toolV1 string // current references
}

func (c *cluster) webhookFixture(t *testing.T, prefix string) *webhookFixture {
	t.Helper()
	c.needWorkloads(t)
	f := &webhookFixture{src: startRegistry(t, registryOptions{})}
	f.ns = c.namespace(t, prefix)
	c.mustKubectl(t, "admin", "", "label", "namespace", f.ns, "tagger.dev/resolve=enabled")
	f.src.push(t, "org/app:v1")
	f.src.push(t, "org/tool:v1")
	f.appV1 = mustImport(t, c.importImage(t, "admin", f.ns, "app", f.src.Addr()+"/org/app:v1", false, true))
	f.toolV1 = mustImport(t, c.importImage(t, "admin", f.ns, "tool", f.src.Addr()+"/org/tool:v1", false, true))
	return f
}

func (c *cluster) getPod(t *testing.T, ns, name string) *corev1.Pod {
	t.Helper()
	out := c.mustKubectl(t, "admin", "", "get", "pod", "-n", ns, name, "-o", "json")
	pod := &corev1.Pod{}
	if err := json.Unmarshal([]byte(out), pod); err != nil {
		t.Fatalf("decoding pod: %v\n%s", err, out)
	}
	return pod
}

func podYAML(ns, name, initImage string, images ...string) string {
	var b strings.Builder
	fmt.Fprintf(&b, "apiVersion: v1\nkind: Pod\nmetadata:\n  name: %s\n  namespace: %s\nspec:\n", name, ns)
	if initImage != "" {
		fmt.Fprintf(&b, "  initContainers:\n  - name: init\n    image: %s\n", initImage)
	}
	b.WriteString("  containers:\n")
	for i, img := range images {
		fmt.Fprintf(&b, "  - name: c%d\n    image: %s\n", i, img)
	}
	return b.String()
}

// A pod of an opted-in namespace that names an Image is stored with its
// digest — containers, init containers, and ephemeral containers added
// later — and says so in an annotation; other images are left alone.
func TestWebhookResolvesPods(t *testing.T) {
	c := needCluster(t)
	f := c.webhookFixture(t, "resolve")

	c.mustKubectl(t, "admin", podYAML(f.ns, "p", "tool", "app", "tagger.dev/app", "nginx:1.27", "busybox"), "create", "-f", "-")
	pod := c.getPod(t, f.ns, "p")
	if got := pod.Spec.InitContainers[0].Image; got != f.toolV1 {
		t.Errorf("init container: %s, want %s", got, f.toolV1)
	}
	for i, want := range []string{f.appV1, f.appV1, "nginx:1.27", "busybox"} {
		if got := pod.Spec.Containers[i].Image; got != want {
			t.Errorf("container c%d: %s, want %s", i, got, want)
		}
	}
	var rec map[string]struct{ From, Image string }
	if err := json.Unmarshal([]byte(pod.Annotations["tagger.dev/resolved-images"]), &rec); err != nil {
		t.Fatalf("annotation: %v: %q", err, pod.Annotations["tagger.dev/resolved-images"])
	}
	if rec["c0"].From != "app" || rec["c0"].Image != f.appV1 || rec["c1"].From != "tagger.dev/app" || rec["init"].Image != f.toolV1 || len(rec) != 3 {
		t.Errorf("annotation %v", rec)
	}

	// An ephemeral container, added through pods/ephemeralcontainers as kubectl debug does.
	pod.Spec.EphemeralContainers = append(pod.Spec.EphemeralContainers, corev1.EphemeralContainer{
		EphemeralContainerCommon: corev1.EphemeralContainerCommon{Name: "debug", Image: "tool"}})
	body, _ := json.Marshal(pod)
	c.mustKubectl(t, "admin", string(body), "replace", "--raw", fmt.Sprintf("/api/v1/namespaces/%s/pods/p/ephemeralcontainers", f.ns), "-f", "-")
	pod = c.getPod(t, f.ns, "p")
	if n := len(pod.Spec.EphemeralContainers); n != 1 || pod.Spec.EphemeralContainers[0].Image != f.toolV1 {
		t.Errorf("ephemeral containers: %+v, want debug with %s", pod.Spec.EphemeralContainers, f.toolV1)
	}

	// A rollback changes what new pods get.
	c.mustKubectl(t, "admin", "", "patch", "-n", f.ns, "image.tagger.dev", "app", "--type=merge", "-p", `{"spec":{"pinnedReference":"`+f.appV1+`"}}`)
	f.src.push(t, "org/app:v2")
	appV2 := mustImport(t, c.importImage(t, "admin", f.ns, "app", f.src.Addr()+"/org/app:v2", false, true))
	c.mustKubectl(t, "admin", podYAML(f.ns, "pinned", "", "app"), "create", "-f", "-")
	if got := c.getPod(t, f.ns, "pinned").Spec.Containers[0].Image; got != f.appV1 {
		t.Errorf("pinned Image: pod got %s, want %s (not the newest %s)", got, f.appV1, appV2)
	}
}

// Missing Images are refused with their name in the explicit form; in a
// namespace that did not opt in nothing is touched or refused.
func TestWebhookRefusesAndLeavesAlone(t *testing.T) {
	c := needCluster(t)
	f := c.webhookFixture(t, "refuse")

	_, err := c.kubectlAs("admin", podYAML(f.ns, "missing", "", "tagger.dev/missing"), "create", "-f", "-")
	if err == nil || !strings.Contains(err.Error(), `Image "missing" not found in namespace "`+f.ns+`"`) {
		t.Errorf("pod naming a missing Image: %v", err)
	}
	// A bare name that matches no Image is an ordinary image.
	c.mustKubectl(t, "admin", podYAML(f.ns, "plain", "", "missing"), "create", "-f", "-")
	if got := c.getPod(t, f.ns, "plain").Spec.Containers[0].Image; got != "missing" {
		t.Errorf("unmatched bare name: %s", got)
	}

	// Another namespace, with an Image app too but no label.
	other := c.namespace(t, "notoptedin")
	mustImport(t, c.importImage(t, "admin", other, "app", f.src.Addr()+"/org/app:v1", false, true))
	c.mustKubectl(t, "admin", podYAML(other, "p", "tool", "app", "tagger.dev/missing"), "create", "-f", "-")
	pod := c.getPod(t, other, "p")
	if pod.Spec.Containers[0].Image != "app" || pod.Spec.Containers[1].Image != "tagger.dev/missing" || pod.Spec.InitContainers[0].Image != "tool" {
		t.Errorf("pod outside opted-in namespaces changed: %+v", pod.Spec)
	}
	if _, ok := pod.Annotations["tagger.dev/resolved-images"]; ok {
		t.Errorf("annotation outside opted-in namespaces")
	}
}

// podsOf returns the pods whose name starts with prefix.
func (c *cluster) podsOf(t *testing.T, ns, prefix string) []corev1.Pod {
	t.Helper()
	out := c.mustKubectl(t, "admin", "", "get", "pods", "-n", ns, "-o", "json")
	var list corev1.PodList
	if err := json.Unmarshal([]byte(out), &list); err != nil {
		t.Fatal(err)
	}
	var pods []corev1.Pod
	for _, p := range list.Items {
		if strings.HasPrefix(p.Name, prefix) {
			pods = append(pods, p)
		}
	}
	return pods
}

func (c *cluster) getDeployment(t *testing.T, ns, name string) *appsv1.Deployment {
	t.Helper()
	out := c.mustKubectl(t, "admin", "", "get", "deployment", "-n", ns, name, "-o", "json")
	d := &appsv1.Deployment{}
	if err := json.Unmarshal([]byte(out), d); err != nil {
		t.Fatal(err)
	}
	return d
}

const followingDeployment = `apiVersion: apps/v1
kind: Deployment
metadata:
  name: web
  namespace: %s
  annotations:
    tagger.dev/follow: "true"
spec:
  replicas: 1
  selector:
    matchLabels: {app: web}
  template:
    metadata:
      labels: {app: web}
    spec:
      containers:
      - name: web
        image: app
`

// A Deployment keeps "image: app" in its template while its pods (made by
// the ReplicaSet controller) get the digest; a Job's pods too. A new import
// rolls the following Deployment out once, a rollback once more.
func TestWorkloadsAndRollout(t *testing.T) {
	c := needCluster(t)
	f := c.webhookFixture(t, "rollout")

	c.mustKubectl(t, "admin", fmt.Sprintf(followingDeployment, f.ns), "create", "-f", "-")
	eventually(t, 60*time.Second, func() error {
		pods := c.podsOf(t, f.ns, "web-")
		if len(pods) == 0 {
			return fmt.Errorf("no pod of the Deployment yet")
		}
		if got := pods[0].Spec.Containers[0].Image; got != f.appV1 {
			return fmt.Errorf("pod %s runs %s, want %s", pods[0].Name, got, f.appV1)
		}
		return nil
	})
	d := c.getDeployment(t, f.ns, "web")
	if got := d.Spec.Template.Spec.Containers[0].Image; got != "app" {
		t.Errorf("the Deployment's template was rewritten: %s", got)
	}
	gen := d.Generation

	c.mustKubectl(t, "admin", `apiVersion: batch/v1
kind: Job
metadata:
  name: job
  namespace: `+f.ns+`
spec:
  template:
    spec:
      restartPolicy: Never
      containers:
      - name: job
        image: tagger.dev/tool
`, "create", "-f", "-")
	eventually(t, 60*time.Second, func() error {
		pods := c.podsOf(t, f.ns, "job-")
		if len(pods) == 0 {
			return fmt.Errorf("no pod of the Job yet")
		}
		if got := pods[0].Spec.Containers[0].Image; got != f.toolV1 {
			return fmt.Errorf("job pod runs %s, want %s", got, f.toolV1)
		}
		return nil
	})

	// Starting to follow is not a change: the Deployment was not patched.
	time.Sleep(2 * time.Second)
	if d := c.getDeployment(t, f.ns, "web"); d.Generation != gen {
		t.Fatalf("Deployment patched without a change: generation %d -> %d", gen, d.Generation)
	}

	rolledOutTo := func(ref string, wantGen int64) {
		t.Helper()
		eventually(t, 60*time.Second, func() error {
			d := c.getDeployment(t, f.ns, "web")
			if got := d.Spec.Template.Annotations["rollout.tagger.dev/app"]; got != ref {
				return fmt.Errorf("template annotation %q, want %q", got, ref)
			}
			return nil
		})
		time.Sleep(2 * time.Second) // no second patch, from either replica
		d := c.getDeployment(t, f.ns, "web")
		if d.Generation != wantGen {
			t.Fatalf("Deployment generation %d, want %d: one rollout per change", d.Generation, wantGen)
		}
		if got := d.Spec.Template.Spec.Containers[0].Image; got != "app" {
			t.Errorf("the Deployment's template image was rewritten: %s", got)
		}
		eventually(t, 60*time.Second, func() error {
			for _, p := range c.podsOf(t, f.ns, "web-") {
				if p.Spec.Containers[0].Image == ref && p.DeletionTimestamp == nil {
					return nil
				}
			}
			return fmt.Errorf("no pod of the Deployment runs %s yet", ref)
		})
	}

	// An import of a new digest: one rollout.
	f.src.push(t, "org/app:v2")
	appV2 := mustImport(t, c.importImage(t, "admin", f.ns, "app", f.src.Addr()+"/org/app:v2", false, true))
	rolledOutTo(appV2, gen+1)

	// Importing the same digest again changes nothing current: no rollout.
	mustImport(t, c.importImage(t, "admin", f.ns, "app", f.src.Addr()+"/org/app:v2", false, true))
	time.Sleep(2 * time.Second)
	if d := c.getDeployment(t, f.ns, "web"); d.Generation != gen+1 {
		t.Fatalf("re-import of the current digest rolled out: generation %d", d.Generation)
	}

	// A rollback: one more.
	c.mustKubectl(t, "admin", "", "patch", "-n", f.ns, "image.tagger.dev", "app", "--type=merge", "-p", `{"spec":{"pinnedReference":"`+f.appV1+`"}}`)
	rolledOutTo(f.appV1, gen+2)

	// The Lease names one of the two replicas.
	holder := c.mustKubectl(t, "admin", "", "get", "lease", "-n", taggerNamespace, "tagger-rollout", "-o", "jsonpath={.spec.holderIdentity}")
	if holder == "" {
		t.Errorf("Lease tagger-rollout has no holder")
	}
}

// A pod resolved to a mirror that needs credentials gets the pull Secret
// Tagger keeps for it in the namespace.
func TestWebhookMirrorPullSecret(t *testing.T) {
	c := needCluster(t)
	c.needWorkloads(t)
	src := startRegistry(t, registryOptions{})
	mirror := startRegistry(t, registryOptions{users: map[string]string{"mirrorer": "m1rr0r"}})
	digest := src.push(t, "org/app:v1")
	ns := c.namespace(t, "pullsecret")
	c.mustKubectl(t, "admin", "", "label", "namespace", ns, "tagger.dev/resolve=enabled")
	c.mustKubectl(t, "admin", mirrorSecret(ns, mirror.Addr(), map[string]string{"insecure": "true", "username": "mirrorer", "password": "m1rr0r"}), "apply", "-f", "-")
	time.Sleep(informerDelay)
	ref := mustImport(t, c.importImage(t, "admin", ns, "app", src.Addr()+"/org/app:v1", true, true))
	if want := mirror.Addr() + "/" + ns + "/app@" + digest.String(); ref != want {
		t.Fatalf("imageReference = %s, want %s", ref, want)
	}

	c.mustKubectl(t, "admin", podYAML(ns, "p", "", "app"), "create", "-f", "-")
	pod := c.getPod(t, ns, "p")
	if pod.Spec.Containers[0].Image != ref {
		t.Errorf("image %s, want %s", pod.Spec.Containers[0].Image, ref)
	}
	if len(pod.Spec.ImagePullSecrets) != 1 || pod.Spec.ImagePullSecrets[0].Name != "tagger-mirror-pull" {
		t.Fatalf("imagePullSecrets %v", pod.Spec.ImagePullSecrets)
	}
	out := c.mustKubectl(t, "admin", "", "get", "secret", "-n", ns, "tagger-mirror-pull", "-o", "json")
	var s corev1.Secret
	if err := json.Unmarshal([]byte(out), &s); err != nil {
		t.Fatal(err)
	}
	cfg := string(s.Data[corev1.DockerConfigJsonKey])
	if s.Type != corev1.SecretTypeDockerConfigJson || s.Labels["app.kubernetes.io/managed-by"] != "tagger" ||
		!strings.Contains(cfg, `"`+mirror.Addr()+`"`) || !strings.Contains(cfg, `"username":"mirrorer"`) {
		t.Errorf("pull Secret %s %v: %s", s.Type, s.Labels, cfg)
	}
}
