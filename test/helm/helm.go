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

// Package helm checks the Helm chart in artifacts/ with the real helm: it
// lints, and renders the same objects as the kustomize base ("kubectl
// kustomize", certificates from hack/gen-certs.sh). The real-cluster suite
// (test/e2e) installs, upgrades and uninstalls it.
package helm

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// Helm finds the helm binary: on PATH or in $(go env GOPATH)/bin. Without
// it the tests are skipped, or fail when CI=true (CI installs it).
func Helm(t testing.TB) string {
	t.Helper()
	if p, err := exec.LookPath("helm"); err == nil {
		return p
	}
	if out, err := exec.Command("go", "env", "GOPATH").Output(); err == nil {
		p := filepath.Join(strings.TrimSpace(string(out)), "bin", "helm")
		if _, err := os.Stat(p); err == nil {
			return p
		}
	}
	msg := "helm is not installed: go install helm.sh/helm/v3/cmd/helm@v3.22.0"
	if os.Getenv("CI") == "true" {
		t.Fatal(msg)
	}
	t.Skip(msg)
	return ""
}
