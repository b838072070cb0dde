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
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"testing"
	"time"

	"tagger.dev/tagger/pkg/apis/tagger/v1beta1"
)

// canI asks "kubectl auth can-i" as user: verb resource [--subresource=sub].
func (c *cluster) canI(t *testing.T, user, ns, verb, resource, sub string) bool {
	t.Helper()
	args := []string{"auth", "can-i", verb, resource, "-n", ns}
	if sub != "" {
		args = append(args, "--subresource="+sub)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	stdout, stderr, _ := c.run(ctx, user, "", args...) // exits 1 on "no"
	switch strings.TrimSpace(stdout) {
	case "yes":
		return true
	case "no":
		return false
	}
	t.Fatalf("kubectl auth can-i %s: %q %s", strings.Join(args, " "), stdout, stderr)
	return false
}

// The built-in roles, with Tagger's aggregated into them, decide: view reads,
// edit also imports, pushes and pulls; kubectl auth can-i agrees with what
// the server (through delegated authorization) does.
func TestRBAC(t *testing.T) {
	c := needCluster(t)
	ns := c.namespace(t, "rbac")
	c.mustKubectl(t, "admin", "", "create", "rolebinding", "alice-view", "-n", ns, "--clusterrole=view", "--user=alice")
	c.mustKubectl(t, "admin", "", "create", "rolebinding", "bob-edit", "-n", ns, "--clusterrole=edit", "--user=bob")
	// kube-controller-manager aggregates tagger:edit into edit.
	eventually(t, 60*time.Second, func() error {
		if !c.canI(t, "bob", ns, "create", "imageimports.tagger.dev", "") {
			return fmt.Errorf("edit does not include tagger:edit yet")
		}
		return nil
	})

	for _, tc := range []struct {
		verb, resource, sub string
		alice, bob, carol   bool
	}{
		{"get", "images.tagger.dev", "", true, true, false},
		{"list", "images.tagger.dev", "", true, true, false},
		{"watch", "imageimports.tagger.dev", "", true, true, false},
		{"create", "imageimports.tagger.dev", "", false, true, false},
		{"create", "images.tagger.dev", "", false, true, false},
		{"delete", "images.tagger.dev", "", false, true, false},
		{"create", "images.tagger.dev", "push", false, true, false},
		{"get", "images.tagger.dev", "pull", false, true, false},
	} {
		for user, want := range map[string]bool{"alice": tc.alice, "bob": tc.bob, "carol": tc.carol} {
			if got := c.canI(t, user, ns, tc.verb, tc.resource, tc.sub); got != want {
				t.Errorf("%s: can-i %s %s %s = %t, want %t", user, tc.verb, tc.resource, tc.sub, got, want)
			}
		}
	}

	src := startRegistry(t, registryOptions{})
	src.push(t, "org/app:v1")
	from := src.Addr() + "/org/app:v1"

	if _, err := c.kubectlAs("alice", importYAML("app", from, false, true), "create", "-n", ns, "-f", "-"); err == nil ||
		!strings.Contains(err.Error(), "forbidden") {
		t.Errorf("view created an ImageImport: %v", err)
	}
	mustImport(t, c.importImage(t, "bob", ns, "app", from, false, true))
	if out := c.mustKubectl(t, "alice", "", "get", "-n", ns, "images.tagger.dev", "app", "-o", "name"); strings.TrimSpace(out) != "image.tagger.dev/app" {
		t.Errorf("view: kubectl get img app = %q", out)
	}
	if _, err := c.kubectlAs("carol", "", "get", "-n", ns, "images.tagger.dev"); err == nil || !strings.Contains(err.Error(), "forbidden") {
		t.Errorf("a user without rights listed Images: %v", err)
	}
	if _, err := c.kubectlAs("alice", "", "delete", "-n", ns, "images.tagger.dev", "app"); err == nil || !strings.Contains(err.Error(), "forbidden") {
		t.Errorf("view deleted an Image: %v", err)
	}
}

// kubectl's everyday commands, through the aggregator.
func TestKubectl(t *testing.T) {
	c := needCluster(t)
	ns := c.namespace(t, "kubectl")

	t.Run("api-resources", func(t *testing.T) {
		out := c.mustKubectl(t, "admin", "", "api-resources", "--api-group=tagger.dev", "--no-headers")
		for _, want := range []string{"images", "img", "imageimports", "ii"} {
			if !strings.Contains(out, want) {
				t.Errorf("api-resources lacks %q:\n%s", want, out)
			}
		}
	})

	t.Run("explain", func(t *testing.T) {
		out := c.mustKubectl(t, "admin", "", "explain", "img.spec")
		for _, want := range []string{"from", "mirror", "insecure"} {
			if !strings.Contains(out, want) {
				t.Errorf("kubectl explain img.spec lacks %q:\n%s", want, out)
			}
		}
	})

	src := startRegistry(t, registryOptions{})
	from := src.Addr() + "/org/app:stable"
	image := func() string {
		return fmt.Sprintf(`apiVersion: tagger.dev/v1beta1
kind: Image
metadata:
  name: app
  labels:
    team: e2e
spec:
  from: %s
  insecure: true
`, from)
	}

	t.Run("server-side apply", func(t *testing.T) {
		out := c.mustKubectl(t, "admin", image(), "apply", "--server-side", "-n", ns, "-f", "-")
		if !strings.Contains(out, "serverside-applied") {
			t.Errorf("kubectl apply --server-side: %s", out)
		}
		// Taking over a field another manager set conflicts, as for built-in kinds.
		c.mustKubectl(t, "admin", "", "label", "-n", ns, "img", "app", "team=other", "--overwrite")
		if _, err := c.kubectlAs("admin", image(), "apply", "--server-side", "-n", ns, "-f", "-"); err == nil || !strings.Contains(err.Error(), "conflict") {
			t.Errorf("want a conflict on metadata.labels.team, got %v", err)
		}
		c.mustKubectl(t, "admin", image(), "apply", "--server-side", "--force-conflicts", "-n", ns, "-f", "-")
		out = c.mustKubectl(t, "admin", "", "get", "-n", ns, "image.tagger.dev", "app", "-o", "json", "--show-managed-fields")
		img := &v1beta1.Image{}
		if err := json.Unmarshal([]byte(out), img); err != nil {
			t.Fatal(err)
		}
		if img.Labels["team"] != "e2e" || img.Spec.From != from {
			t.Errorf("after apply: labels %v, spec %+v", img.Labels, img.Spec)
		}
		var managers []string
		for _, mf := range img.ManagedFields {
			managers = append(managers, mf.Manager+"/"+string(mf.Operation))
		}
		if !strings.Contains(strings.Join(managers, " "), "kubectl/Apply") {
			t.Errorf("managedFields: %v", managers)
		}
	})

	t.Run("get -w sees new generations", func(t *testing.T) {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
		defer cancel()
		watch := c.command(ctx, "admin", "get", "-n", ns, "img", "app", "-w",
			"-o", `jsonpath={.status.hashReferences[0].imageReference}{"\n"}`)
		stdout, err := watch.StdoutPipe()
		if err != nil {
			t.Fatal(err)
		}
		var stderr strings.Builder
		watch.Stderr = &stderr
		if err := watch.Start(); err != nil {
			t.Fatal(err)
		}
		defer func() { cancel(); _ = watch.Wait() }()
		lines := make(chan string, 100)
		go func() {
			defer close(lines)
			s := bufio.NewScanner(stdout)
			for s.Scan() {
				lines <- s.Text()
			}
		}()
		waitLine := func(want string) {
			t.Helper()
			var seen []string
			timeout := time.After(60 * time.Second)
			for {
				select {
				case l, ok := <-lines:
					if !ok {
						t.Fatalf("kubectl get -w ended before %q; saw %q; stderr: %s", want, seen, stderr.String())
					}
					if strings.Contains(l, want) {
						return
					}
					seen = append(seen, l)
				case <-timeout:
					t.Fatalf("kubectl get -w: no %q in 60s; saw %q; stderr: %s", want, seen, stderr.String())
				}
			}
		}
		waitLine("") // the current object: the watch is established

		for _, round := range []string{"first", "second"} {
			digest := src.push(t, "org/app:stable")
			ii := c.importImage(t, "admin", ns, "app", from, false, true)
			if got := mustImport(t, ii); !strings.HasSuffix(got, digest.String()) {
				t.Fatalf("%s import: %s, want @%s", round, got, digest)
			}
			waitLine(digest.String())
		}
		if n := len(c.getImage(t, ns, "app").Status.HashReferences); n != 2 {
			t.Errorf("hashReferences: %d, want 2", n)
		}
	})

	t.Run("get tagger", func(t *testing.T) {
		out := c.mustKubectl(t, "admin", "", "get", "tagger", "-n", ns, "-o", "name")
		if !strings.Contains(out, "image.tagger.dev/app") || !strings.Contains(out, "imageimport.tagger.dev/app-") {
			t.Errorf("kubectl get tagger:\n%s", out)
		}
		out = c.mustKubectl(t, "admin", "", "get", "img", "-n", ns)
		if h := strings.Fields(strings.SplitN(out, "\n", 2)[0]); len(h) < 3 || h[0] != "NAME" {
			t.Errorf("kubectl get img:\n%s", out)
		}
	})
}
