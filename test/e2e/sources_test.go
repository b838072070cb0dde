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
	"strings"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// Mirroring goes to the mirror-registry-config of the import's namespace if
// there is one, else to the one in Tagger's namespace. Both mirrors here
// speak TLS with certificates Tagger does not trust: insecure: "true".
func TestMirror(t *testing.T) {
	c := needCluster(t)
	src := startRegistry(t, registryOptions{})
	global := startRegistry(t, registryOptions{tls: true})
	local := startRegistry(t, registryOptions{tls: true})
	digest := src.push(t, "org/app:v1")
	from := src.Addr() + "/org/app:v1"
	tag := "tagger-sha256-" + digest.Hex

	c.mustKubectl(t, "admin", mirrorSecret(taggerNamespace, global.Addr(), map[string]string{"insecure": "true"}), "apply", "-f", "-")
	t.Cleanup(func() {
		_, _ = c.kubectlAs("admin", "", "delete", "secret", "-n", taggerNamespace, "mirror-registry-config")
	})
	plain := c.namespace(t, "mirror-global")
	own := c.namespace(t, "mirror-own")
	c.mustKubectl(t, "admin", mirrorSecret(own, local.Addr(), map[string]string{"insecure": "true", "repository": "team"}), "apply", "-f", "-")
	time.Sleep(informerDelay)

	t.Run("global", func(t *testing.T) {
		ii := c.importImage(t, "admin", plain, "app", from, true, true)
		repo := plain + "/app"
		if got, want := mustImport(t, ii), global.Addr()+"/"+repo+"@"+digest.String(); got != want {
			t.Fatalf("imageReference = %s, want %s", got, want)
		}
		for _, ref := range []string{repo + "@" + digest.String(), repo + ":" + tag} {
			if d, err := global.head(t, ref); err != nil || d != digest {
				t.Errorf("global mirror %s: %v %v, want %s", ref, d, err, digest)
			}
		}
		if _, err := local.head(t, "team/"+plain+"_app@"+digest.String()); err == nil {
			t.Error("the namespace's own mirror got an image of another namespace")
		}
	})

	t.Run("namespace overrides global", func(t *testing.T) {
		ii := c.importImage(t, "admin", own, "app", from, true, true)
		repo := "team/" + own + "_app"
		if got, want := mustImport(t, ii), local.Addr()+"/"+repo+"@"+digest.String(); got != want {
			t.Fatalf("imageReference = %s, want %s", got, want)
		}
		for _, ref := range []string{repo + "@" + digest.String(), repo + ":" + tag} {
			if d, err := local.head(t, ref); err != nil || d != digest {
				t.Errorf("own mirror %s: %v %v, want %s", ref, d, err, digest)
			}
		}
		if _, err := global.head(t, own+"/app@"+digest.String()); err == nil {
			t.Error("the global mirror was used despite the namespace's own")
		}
	})
}

// A private source is reachable with a dockerconfigjson Secret in the
// import's namespace, and only there.
func TestPrivateSource(t *testing.T) {
	c := needCluster(t)
	// Waits out --import-sync-timeout: alongside the other slow test.
	t.Parallel()
	private := startRegistry(t, registryOptions{users: map[string]string{"puller": "s3cret"}})
	digest := private.push(t, "private/app:v1")
	from := private.Addr() + "/private/app:v1"

	withSecret := c.namespace(t, "private")
	without := c.namespace(t, "private-other")
	c.mustKubectl(t, "admin", "", "create", "secret", "docker-registry", "pull", "-n", withSecret,
		"--docker-server="+private.Addr(), "--docker-username=puller", "--docker-password=s3cret")
	time.Sleep(informerDelay)

	ii := c.importImage(t, "admin", withSecret, "app", from, false, true)
	if got, want := mustImport(t, ii), private.Addr()+"/private/app@"+digest.String(); got != want {
		t.Fatalf("imageReference = %s, want %s", got, want)
	}

	ii = c.importImage(t, "admin", without, "app", from, false, true)
	cond := importedCondition(t, ii)
	if cond.Status != metav1.ConditionFalse {
		t.Fatalf("import from %s in %s without credentials: Imported=%s %s", from, without, cond.Status, cond.Message)
	}
	if msg := strings.ToLower(cond.Message); !strings.Contains(msg, "auth") && !strings.Contains(msg, "401") {
		t.Errorf("condition message %q does not say the source refused", cond.Message)
	}
}
