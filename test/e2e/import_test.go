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
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// An import for a new Image creates it, with the import's spec and a first
// generation, answers with the outcome, and leaves an Event.
func TestImportCreatesImage(t *testing.T) {
	c := needCluster(t)
	src := startRegistry(t, registryOptions{})
	ns := c.namespace(t, "import")
	digest := src.push(t, "org/app:v1")
	from := src.Addr() + "/org/app:v1"

	ii := c.importImage(t, "admin", ns, "app", from, false, true)
	want := src.Addr() + "/org/app@" + digest.String()
	if got := mustImport(t, ii); got != want {
		t.Fatalf("imageReference = %s, want %s", got, want)
	}

	img := c.getImage(t, ns, "app")
	if img.Spec.From != from || !img.Spec.Insecure || img.Spec.Mirror {
		t.Errorf("Image spec = %+v, want from %s, insecure, no mirror", img.Spec, from)
	}
	if n := len(img.Status.HashReferences); n != 1 || img.Status.HashReferences[0].ImageReference != want {
		t.Errorf("hashReferences = %+v, want one, %s", img.Status.HashReferences, want)
	}

	// kubectl wait, through the aggregator.
	out := c.mustKubectl(t, "admin", "", "wait", "-n", ns, "--for=condition=Imported", "--timeout=60s", "imageimport/"+ii.Name)
	if !strings.Contains(out, "condition met") {
		t.Errorf("kubectl wait: %s", out)
	}

	// The Event, in the core API.
	eventually(t, 30*time.Second, func() error {
		out, err := c.kubectlAs("admin", "", "get", "events", "-n", ns, "--field-selector", "involvedObject.name="+ii.Name, "-o", "json")
		if err != nil {
			return err
		}
		var events corev1.EventList
		if err := json.Unmarshal([]byte(out), &events); err != nil {
			return err
		}
		for _, e := range events.Items {
			if e.Reason == "Imported" && e.Type == corev1.EventTypeNormal && e.InvolvedObject.Kind == "ImageImport" &&
				strings.Contains(e.Message, digest.String()) {
				return nil
			}
		}
		return fmt.Errorf("no Imported event for %s: %s", ii.Name, out)
	})
}

// An import from a registry nobody listens on fails with the reason, and the
// Image gets no generation.
func TestImportFailsUnreachable(t *testing.T) {
	c := needCluster(t)
	// Waits out --import-sync-timeout: alongside the other slow test.
	t.Parallel()
	ns := c.namespace(t, "unreachable")
	port, err := freePort() // closed: connections are refused
	if err != nil {
		t.Fatal(err)
	}
	from := fmt.Sprintf("127.0.0.1:%d/org/app:v1", port)

	ii := c.importImage(t, "admin", ns, "gone", from, false, true)
	cond := importedCondition(t, ii)
	if cond.Status != metav1.ConditionFalse || (cond.Reason != "Progressing" && cond.Reason != "NoMoreAttempts") {
		t.Fatalf("Imported = %s/%s, want False/Progressing or NoMoreAttempts", cond.Status, cond.Reason)
	}
	if !strings.Contains(cond.Message, "connection refused") {
		t.Errorf("condition message %q does not say why", cond.Message)
	}
	if len(ii.Status.ImportAttempts) == 0 || ii.Status.ImportAttempts[0].Succeed || ii.Status.ImportAttempts[0].Reason == "" {
		t.Errorf("importAttempts = %+v, want a failed attempt with its reason", ii.Status.ImportAttempts)
	}
	if ii.Status.HashReference != nil {
		t.Errorf("hashReference = %+v on a failed import", ii.Status.HashReference)
	}
	out, err := c.kubectlAs("admin", "", "get", "-n", ns, "image.tagger.dev", "gone", "-o", "jsonpath={.status.hashReferences}")
	switch {
	case err != nil && strings.Contains(err.Error(), "NotFound"):
		t.Log("the Image was not created")
	case err != nil:
		t.Fatal(err)
	case out != "" && out != "[]":
		t.Errorf("the Image has references after a failed import: %s", out)
	}
}
