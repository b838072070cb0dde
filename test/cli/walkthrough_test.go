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
	"archive/tar"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"
)

// readmeRegistry is the embedded registry's address in the README; the test
// serves it on a free port and puts that port in its place.
const readmeRegistry = "127.0.0.1:5000"

// walkthrough returns the shell blocks of the README's "Walk-through (local
// mode)" section, its subsections included, in order.
func walkthrough(t *testing.T) []string {
	t.Helper()
	readme, err := os.ReadFile(filepath.Join("..", "..", "README.md"))
	if err != nil {
		t.Fatal(err)
	}
	text := string(readme)
	start := strings.Index(text, "\n## Walk-through (local mode)\n")
	if start < 0 {
		t.Fatal(`README has no "## Walk-through (local mode)" section`)
	}
	section := text[start+1:]
	if end := strings.Index(section, "\n## "); end >= 0 {
		section = section[:end]
	}
	var blocks []string
	for _, m := range regexp.MustCompile("(?s)\n```sh\n(.*?)\n```\n").FindAllStringSubmatch(section, -1) {
		blocks = append(blocks, m[1])
	}
	if len(blocks) < 5 {
		t.Fatalf("the walk-through has %d shell blocks: the section changed shape, update this test", len(blocks))
	}
	return blocks
}

// buildCrane builds crane, which the walk-through names as a prerequisite,
// into dir, at the version go.mod requires, which must be the one of the
// README's install command.
func buildCrane(t *testing.T, dir string) {
	t.Helper()
	const module = "github.com/google/go-containerregistry"
	version, err := exec.Command("go", "list", "-m", "-f", "{{.Version}}", module).Output()
	if err != nil {
		t.Fatalf("go list -m %s: %v", module, err)
	}
	readme, err := os.ReadFile(filepath.Join("..", "..", "README.md"))
	if err != nil {
		t.Fatal(err)
	}
	install := "go install " + module + "/cmd/crane@" + strings.TrimSpace(string(version))
	if !strings.Contains(string(readme), install) {
		t.Errorf("the README does not say %q (the version go.mod requires)", install)
	}
	cmd := exec.Command("go", "build", "-o", filepath.Join(dir, "crane"), module+"/cmd/crane")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("building crane: %v\n%s", err, out)
	}
}

// consoleErrors returns the lines of a console that look like error-level
// log lines or failures: klog "E" lines, logrus and zap error levels, stack
// traces, "error:" answers.
func consoleErrors(console string) []string {
	re := regexp.MustCompile(`^E\d{4} |level=error|"level":"error"|stacktrace|goroutine \d+ \[|^(error|Error|panic)\b`)
	var bad []string
	for _, line := range strings.Split(console, "\n") {
		if re.MatchString(line) {
			bad = append(bad, line)
		}
	}
	return bad
}

// The README's walk-through, every command as written, in order, in one
// shell, offline: against local mode (on free ports) with the real kubectl,
// the built plugin and crane. Its console and the server's show no error.
func TestREADMEWalkthrough(t *testing.T) {
	blocks := walkthrough(t)
	work := t.TempDir()
	bin := filepath.Join(work, "bin") // what "make build" makes in the repository
	if err := os.MkdirAll(bin, 0o755); err != nil {
		t.Fatal(err)
	}
	plugin, err := os.ReadFile(filepath.Join(binDir, "kubectl-image"))
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(bin, "kubectl-image"), plugin, 0o755); err != nil {
		t.Fatal(err)
	}
	buildCrane(t, bin)

	registry := fmt.Sprintf("127.0.0.1:%d", freePort(t))
	l := startLocal(t, filepath.Join(work, ".tagger"), freePort(t), registry)

	script := strings.ReplaceAll(strings.Join(blocks, "\n"), readmeRegistry, registry)
	if !strings.Contains(script, registry) {
		t.Fatalf("the walk-through does not use the embedded registry at %s", readmeRegistry)
	}
	home := filepath.Join(work, "home")
	if err := os.MkdirAll(home, 0o700); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, "bash", "--noprofile", "--norc", "-c", "set -euo pipefail -x\n"+script)
	cmd.Dir = work
	env := []string{"HOME=" + home, "TMPDIR=" + work, "PS4=+ "}
	for _, kv := range os.Environ() {
		// The walk-through sets KUBECONFIG itself; HOME and TMPDIR are the test's.
		if !strings.HasPrefix(kv, "KUBECONFIG=") && !strings.HasPrefix(kv, "HOME=") && !strings.HasPrefix(kv, "TMPDIR=") {
			env = append(env, kv)
		}
	}
	cmd.Env = env
	var console bytes.Buffer
	cmd.Stdout, cmd.Stderr = &console, &console
	err = cmd.Run()
	t.Logf("walk-through console:\n%s", console.String())
	if err != nil {
		t.Fatalf("the walk-through failed: %v", err)
	}

	// What the walk-through did.
	var img struct {
		Spec struct {
			PinnedReference string `json:"pinnedReference"`
		} `json:"spec"`
		Status struct {
			CurrentReference string `json:"currentReference"`
			HashReferences   []struct {
				From           string `json:"from"`
				ImageReference string `json:"imageReference"`
			} `json:"hashReferences"`
		} `json:"status"`
	}
	if err := json.Unmarshal([]byte(l.mustKubectl("", "get", "img", "app", "-o", "json")), &img); err != nil {
		t.Fatal(err)
	}
	refs := img.Status.HashReferences
	if len(refs) != 2 || img.Spec.PinnedReference != "" || img.Status.CurrentReference != refs[0].ImageReference {
		t.Fatalf("Image app after the walk-through: %+v", img)
	}
	imported, pushed := refs[1].ImageReference, refs[0].ImageReference
	if refs[1].From != registry+"/library/app:latest" || !strings.HasPrefix(imported, registry+"/default/app@sha256:") || !strings.HasPrefix(pushed, registry+"/default/app@sha256:") || imported == pushed {
		t.Fatalf("generations: %+v", refs)
	}
	digestOf := func(ref string) string { return ref[strings.LastIndex(ref, "@")+1:] }
	if got := l.mustKubectl("", "get", "img", "copy", "-o", "jsonpath={.status.currentReference}"); got != registry+"/default/copy@"+digestOf(pushed) {
		t.Fatalf("Image copy is %q, want the pushed digest %s", got, digestOf(pushed))
	}
	if got := l.mustKubectl("", "get", "img", "hello", "-o", "jsonpath={.status.currentReference}"); got != registry+"/default/hello@"+digestOf(imported) {
		t.Fatalf("Image hello is %q, want the imported digest %s", got, digestOf(imported))
	}
	for _, want := range []string{"library/app", "default/app", pushed, "default/hello@" + digestOf(imported)} {
		if !strings.Contains(console.String(), want) {
			t.Errorf("the console does not show %q", want)
		}
	}
	if err := archiveHas(filepath.Join(work, "app-v2-oci.tar"), "index.json", "oci-layout"); err != nil {
		t.Error(err)
	}
	if err := archiveHas(filepath.Join(work, "old.tar"), "manifest.json"); err != nil {
		t.Error(err)
	}

	// Nothing on either console looks like an error; stopping the server
	// with Ctrl-C adds none either.
	if bad := consoleErrors(console.String()); len(bad) > 0 {
		t.Errorf("error lines on the walk-through's console:\n%s", strings.Join(bad, "\n"))
	}
	_ = l.cmd.Process.Signal(syscall.SIGINT)
	select {
	case err := <-l.exited:
		if err != nil {
			t.Errorf("tagger-apiserver after Ctrl-C: %v", err)
		}
	case <-time.After(60 * time.Second):
		t.Fatal("tagger-apiserver still running 60s after Ctrl-C")
	}
	if bad := consoleErrors(l.log.String()); len(bad) > 0 {
		t.Errorf("error lines on the server's console:\n%s", strings.Join(bad, "\n"))
	}
}

// archiveHas checks that the tar file path holds the named files.
func archiveHas(path string, names ...string) error {
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	seen := map[string]bool{}
	tr := tar.NewReader(f)
	for {
		h, err := tr.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return fmt.Errorf("%s: %w", path, err)
		}
		seen[strings.TrimPrefix(h.Name, "./")] = true
	}
	for _, n := range names {
		if !seen[n] {
			return fmt.Errorf("%s holds no %s", path, n)
		}
	}
	return nil
}

func TestConsoleErrors(t *testing.T) {
	console := strings.Join([]string{
		`I1130 14:26:11.649622    8817 start.go:147] "Embedded mirror registry serving" address="127.0.0.1:15000"`,
		`E1130 14:28:11.237975   16520 run.go:72] "command failed" err="boom"`,
		`time="2026-11-30T14:26:21Z" level=error msg="response completed with error" err.code="manifest unknown"`,
		`{"level":"error","ts":"2026-11-30T14:27:13.752153Z","msg":"setting up serving from embedded etcd failed."}`,
		`error: pushing oci-archive:app.tar: not found`,
		`+ kubectl image push app docker-archive:app-v2.tar`,
		`pulled 127.0.0.1:35581/default/app@sha256:47c4 to docker-archive:old.tar`,
		`Error from server (NotFound): images.tagger.dev "x" not found`,
	}, "\n")
	if got := consoleErrors(console); len(got) != 5 {
		t.Fatalf("found %d error lines, want 5:\n%s", len(got), strings.Join(got, "\n"))
	}
}
