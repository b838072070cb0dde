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

package cli

import (
	"fmt"
	"strings"
	"testing"
)

// TestFailedImportWithKubectl: a failed import is a failure for every
// kubectl path a user takes: "kubectl create" prints a warning, "kubectl
// get ii" shows Failed, "kubectl wait --for=condition=Failed" returns, and
// "kubectl image import" exits non-zero with the reason, at once (a missing
// tag is not retried).
func TestFailedImportWithKubectl(t *testing.T) {
	registry := fmt.Sprintf("127.0.0.1:%d", freePort(t))
	l := startLocal(t, t.TempDir(), freePort(t), registry)
	from := registry + "/nothing/here:latest"

	stdout, stderr, err := l.kubectl(fmt.Sprintf(`apiVersion: tagger.dev/v1beta1
kind: ImageImport
metadata:
  name: gone
spec:
  targetImage: gone
  from: %s
  insecure: true
`, from), "create", "-f", "-")
	if err != nil {
		t.Fatalf("create: %v\n%s%s", err, stdout, stderr)
	}
	if !strings.Contains(stderr, "Warning: import of "+from+" failed") || !strings.Contains(stderr, "unknown") {
		t.Fatalf("kubectl create printed no warning with the reason:\nstdout: %s\nstderr: %s", stdout, stderr)
	}

	out := l.mustKubectl("", "get", "ii", "gone")
	if h := header(out); len(h) < 5 || h[4] != "STATUS" || !strings.Contains(out, "Failed") {
		t.Fatalf("kubectl get ii:\n%s", out)
	}
	if out := l.mustKubectl("", "wait", "--for=condition=Failed", "--timeout=10s", "imageimport/gone"); !strings.Contains(out, "condition met") {
		t.Fatalf("kubectl wait: %s", out)
	}

	stdout, stderr, err = l.kubectl("", "image", "import", "gone", "--from", from, "--insecure")
	if err == nil {
		t.Fatalf("kubectl image import of a missing tag exited 0:\n%s%s", stdout, stderr)
	}
	if !strings.Contains(stderr, "failed") || !strings.Contains(stderr, "unknown") || stdout != "" || strings.Contains(stderr, "warnings.go") {
		t.Fatalf("kubectl image import:\nstdout: %q\nstderr: %s", stdout, stderr)
	}
}
