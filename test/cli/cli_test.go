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

// Package cli drives the built tagger-apiserver in local mode with the real
// kubectl, as a newcomer following the README would.
package cli

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/v1/random"
	"github.com/google/go-containerregistry/pkg/v1/remote"
)

var (
	binary  string // the built tagger-apiserver
	kubectl string
	binDir  string // holds the built kubectl-image, put on kubectl's PATH
)

func TestMain(m *testing.M) {
	os.Exit(run(m))
}

func run(m *testing.M) int {
	var err error
	if kubectl, err = exec.LookPath("kubectl"); err != nil {
		fmt.Fprintln(os.Stderr, "kubectl is required for the CLI tests:", err)
		return 1
	}
	dir, err := os.MkdirTemp("", "tagger-cli")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer os.RemoveAll(dir)
	binary = filepath.Join(dir, "tagger-apiserver")
	build := exec.Command("go", "build", "-o", binary, "tagger.dev/tagger/cmd/tagger-apiserver")
	build.Stdout, build.Stderr = os.Stderr, os.Stderr
	if err := build.Run(); err != nil {
		fmt.Fprintln(os.Stderr, "building tagger-apiserver:", err)
		return 1
	}
	binDir = dir
	build = exec.Command("go", "build", "-o", filepath.Join(dir, "kubectl-image"), "tagger.dev/tagger/cmd/kubectl-image")
	build.Stdout, build.Stderr = os.Stderr, os.Stderr
	if err := build.Run(); err != nil {
		fmt.Fprintln(os.Stderr, "building kubectl-image:", err)
		return 1
	}
	return m.Run()
}

// local is a tagger-apiserver running in local mode.
type local struct {
	t          *testing.T
	dir        string
	port       int
	registry   string
	kubeconfig string
	cmd        *exec.Cmd
	log        *bytes.Buffer
	exited     chan error
}

func freePort(t *testing.T) int {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port
}

func startLocal(t *testing.T, dir string, port int, registry string) *local {
	t.Helper()
	l := &local{t: t, dir: dir, port: port, registry: registry, kubeconfig: filepath.Join(dir, "kubeconfig"), log: &bytes.Buffer{}, exited: make(chan error, 1)}
	l.cmd = exec.Command(binary, "--local", "--local-dir", dir, "--secure-port", fmt.Sprint(port), "--local-registry-address", registry)
	l.cmd.Stdout, l.cmd.Stderr = l.log, l.log
	if err := l.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { l.exited <- l.cmd.Wait() }()
	t.Cleanup(func() {
		if l.cmd.ProcessState == nil {
			_ = l.cmd.Process.Kill()
			<-l.exited
		}
		if t.Failed() {
			t.Logf("tagger-apiserver log:\n%s", l.log.String())
		}
	})
	deadline := time.Now().Add(60 * time.Second)
	for {
		if _, err := os.Stat(l.kubeconfig); err == nil {
			if _, _, err := l.kubectl("", "get", "--raw", "/readyz"); err == nil {
				return l
			}
		}
		select {
		case err := <-l.exited:
			t.Fatalf("tagger-apiserver exited: %v\n%s", err, l.log.String())
		case <-time.After(200 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			t.Fatalf("tagger-apiserver not ready in 60s\n%s", l.log.String())
		}
	}
}

// stop sends SIGTERM and expects a clean exit.
func (l *local) stop() {
	l.t.Helper()
	_ = l.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case err := <-l.exited:
		if err != nil {
			l.t.Fatalf("exit after SIGTERM: %v\n%s", err, l.log.String())
		}
	case <-time.After(60 * time.Second):
		l.t.Fatal("no exit 60s after SIGTERM")
	}
}

// kubectl runs the real kubectl against the local server.
func (l *local) kubectl(stdin string, args ...string) (string, string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	// kubectl takes no flags before a plugin's name: plugins read KUBECONFIG.
	if len(args) == 0 || args[0] != "image" {
		args = append([]string{"--kubeconfig", l.kubeconfig}, args...)
	}
	cmd := exec.CommandContext(ctx, kubectl, args...)
	cmd.Env = l.env()
	cmd.Stdin = strings.NewReader(stdin)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	return stdout.String(), stderr.String(), err
}

// env is kubectl's environment: its caches and temporary files under the
// server's directory, the built plugin on its PATH.
func (l *local) env() []string {
	return append(os.Environ(), "KUBECACHEDIR="+filepath.Join(l.dir, "kubecache"), "HOME="+l.dir,
		"PATH="+binDir+string(os.PathListSeparator)+os.Getenv("PATH"), "TMPDIR="+l.dir, "KUBECONFIG="+l.kubeconfig)
}

// interrupt runs kubectl like kubectl does, and sends it SIGINT (Ctrl-C)
// after d. kubectl runs a plugin in its own process (exec), so the plugin
// gets the signal.
func (l *local) interrupt(d time.Duration, args ...string) (string, string, error) {
	cmd := exec.Command(kubectl, args...)
	cmd.Env = l.env()
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Start(); err != nil {
		return "", "", err
	}
	timer := time.AfterFunc(d, func() { _ = cmd.Process.Signal(os.Interrupt) })
	defer timer.Stop()
	err := cmd.Wait()
	return stdout.String(), stderr.String(), err
}

func (l *local) mustKubectl(stdin string, args ...string) string {
	l.t.Helper()
	stdout, stderr, err := l.kubectl(stdin, args...)
	if err != nil {
		l.t.Fatalf("kubectl %s: %v\n%s%s", strings.Join(args, " "), err, stdout, stderr)
	}
	return stdout
}

// header returns the first line's column names.
func header(out string) []string {
	return strings.Fields(strings.SplitN(out, "\n", 2)[0])
}

func TestLocalModeWithKubectl(t *testing.T) {
	dir := t.TempDir()
	port, registryPort := freePort(t), freePort(t)
	registry := fmt.Sprintf("127.0.0.1:%d", registryPort)
	l := startLocal(t, dir, port, registry)

	out := l.mustKubectl("", "api-resources", "--api-group=tagger.dev", "--no-headers")
	for _, want := range []string{"images", "img", "imageimports", "ii"} {
		if !strings.Contains(out, want) {
			t.Fatalf("api-resources lacks %q:\n%s", want, out)
		}
	}

	// An image to import, in the embedded registry as if pushed by a user.
	img, err := random.Image(1024, 2)
	if err != nil {
		t.Fatal(err)
	}
	ref, err := name.ParseReference(registry+"/library/app:latest", name.Insecure)
	if err != nil {
		t.Fatal(err)
	}
	if err := remote.Write(ref, img); err != nil {
		t.Fatal(err)
	}
	digest, _ := img.Digest()

	image := fmt.Sprintf(`apiVersion: tagger.dev/v1beta1
kind: Image
metadata:
  name: app
spec:
  from: %s/library/app:latest
  insecure: true
`, registry)
	if out := l.mustKubectl(image, "apply", "-f", "-"); !strings.Contains(out, "image.tagger.dev/app created") {
		t.Fatalf("apply: %s", out)
	}
	out = l.mustKubectl("", "get", "images")
	if got, want := strings.Join(header(out), " "), "NAME FROM MIRROR INSECURE IMAGEREFERENCE IMPORTEDAT CURRENT AGE"; got != want {
		t.Fatalf("columns %q, want %q", got, want)
	}

	// The create answer (201) carries the import's result.
	imp := `apiVersion: tagger.dev/v1beta1
kind: ImageImport
metadata:
  name: app-1
spec:
  targetImage: app
  mirror: true
`
	var created struct {
		Spec struct {
			From   string `json:"from"`
			Mirror bool   `json:"mirror"`
		} `json:"spec"`
		Status struct {
			HashReference struct {
				ImageReference string `json:"imageReference"`
			} `json:"hashReference"`
		} `json:"status"`
	}
	if err := json.Unmarshal([]byte(l.mustKubectl(imp, "create", "-o", "json", "-f", "-")), &created); err != nil {
		t.Fatal(err)
	}
	wantRef := registry + "/default/app@" + digest.String()
	if created.Status.HashReference.ImageReference != wantRef || !created.Spec.Mirror || created.Spec.From != registry+"/library/app:latest" {
		t.Fatalf("created import %+v, want reference %s", created, wantRef)
	}
	l.mustKubectl("", "wait", "--for=condition=Imported", "imageimport/app-1", "--timeout=30s")
	out = l.mustKubectl("", "get", "imageimports")
	if got, want := strings.Join(header(out), " "), "NAME INSECURE MIRROR TARGETIMAGE STATUS IMPORTEDAT IMAGEREFERENCE"; got != want || !strings.Contains(out, wantRef) {
		t.Fatalf("get imageimports:\n%s", out)
	}
	if out := l.mustKubectl("", "get", "img", "app", "-o", "jsonpath={.status.hashReferences[0].imageReference}"); out != wantRef {
		t.Fatalf("image's newest generation %q, want %q", out, wantRef)
	}
	out = l.mustKubectl("", "get", "tagger")
	if !strings.Contains(out, "image.tagger.dev/app") || !strings.Contains(out, "imageimport.tagger.dev/app-1") {
		t.Fatalf("get tagger:\n%s", out)
	}

	out = l.mustKubectl("", "explain", "img.spec.from")
	if !strings.Contains(out, "quay.io/org/app:latest") {
		t.Fatalf("explain:\n%s", out)
	}
	out = l.mustKubectl("", "explain", "imageimport.status.importAttempts")
	if !strings.Contains(out, "succeed") {
		t.Fatalf("explain:\n%s", out)
	}

	// Both OpenAPI versions describe the types; health endpoints answer.
	if out := l.mustKubectl("", "get", "--raw", "/openapi/v2"); !strings.Contains(out, `"dev.tagger.tagger.pkg.apis.tagger.v1beta1.Image"`) {
		t.Fatalf("/openapi/v2 lacks the Image definition")
	}
	if out := l.mustKubectl("", "get", "--raw", "/openapi/v3/apis/tagger.dev/v1beta1"); !strings.Contains(out, "hashReferences") {
		t.Fatalf("/openapi/v3 lacks the Image schema")
	}
	for _, path := range []string{"/healthz", "/livez", "/readyz"} {
		if out := l.mustKubectl("", "get", "--raw", path); out != "ok" {
			t.Fatalf("%s: %q", path, out)
		}
	}

	// Server-side apply with a field manager of its own.
	applied := strings.Replace(image, "name: app", "name: app-ssa", 1)
	if out := l.mustKubectl(applied, "apply", "--server-side", "--field-manager=cli-test", "-f", "-"); !strings.Contains(out, "serverside-applied") {
		t.Fatalf("server-side apply: %s", out)
	}
	if out := l.mustKubectl("", "get", "img", "app-ssa", "-o", "jsonpath={.metadata.managedFields[0].manager}"); out != "cli-test" {
		t.Fatalf("field manager %q", out)
	}

	// Invalid input: a 422 naming the field, nothing stored.
	bad := "apiVersion: tagger.dev/v1beta1\nkind: Image\nmetadata:\n  name: broken\nspec:\n  from: \"UPPER::bad\"\n"
	_, stderr, err := l.kubectl(bad, "apply", "-f", "-")
	if err == nil || !strings.Contains(stderr, `spec.from: Invalid value: "UPPER::bad"`) {
		t.Fatalf("invalid apply: err %v, stderr %s", err, stderr)
	}
	if _, stderr, err := l.kubectl("", "get", "img", "broken"); err == nil || !strings.Contains(stderr, "NotFound") {
		t.Fatalf("invalid image was stored: %v %s", err, stderr)
	}

	// A restart keeps everything: etcd and the mirror live under the data dir.
	l.stop()
	l = startLocal(t, dir, port, registry)
	if out := l.mustKubectl("", "get", "img", "app", "-o", "jsonpath={.status.hashReferences[0].imageReference}"); out != wantRef {
		t.Fatalf("after restart: %q", out)
	}
	mirrored, err := name.ParseReference(wantRef, name.Insecure)
	if err != nil {
		t.Fatal(err)
	}
	if desc, err := remote.Head(mirrored); err != nil || desc.Digest != digest {
		t.Fatalf("mirror after restart: %v %v", desc, err)
	}
}

// A port in use stops local mode at once with the flag to change, and
// nothing else on the console: no etcd errors or stack traces.
func TestPortsInUse(t *testing.T) {
	busy, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer busy.Close()
	addr := busy.Addr().String()
	port := busy.Addr().(*net.TCPAddr).Port
	for _, tc := range []struct {
		name, flag string
		args       []string
	}{
		{"secure port", "--secure-port", []string{"--secure-port", fmt.Sprint(port), "--local-registry-address", fmt.Sprintf("127.0.0.1:%d", freePort(t))}},
		{"registry", "--local-registry-address", []string{"--secure-port", fmt.Sprint(freePort(t)), "--local-registry-address", addr}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
			defer cancel()
			cmd := exec.CommandContext(ctx, binary, append([]string{"--local", "--local-dir", t.TempDir()}, tc.args...)...)
			out, err := cmd.CombinedOutput()
			if err == nil {
				t.Fatalf("started on a port in use:\n%s", out)
			}
			want := fmt.Sprintf("%s is in use by another process (another tagger-apiserver?): choose another with %s, e.g. make run ARGS=%s=", addr, tc.flag, tc.flag)
			if !strings.Contains(string(out), want) {
				t.Errorf("output lacks %q:\n%s", want, out)
			}
			for _, line := range strings.Split(strings.TrimSpace(string(out)), "\n") {
				if strings.HasPrefix(line, "E") && !strings.Contains(line, "command failed") || strings.Contains(line, "stacktrace") || strings.Contains(line, `"level":"error"`) {
					t.Errorf("noise on the console: %s", line)
				}
			}
		})
	}
}
