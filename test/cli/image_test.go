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
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/tarball"

	"tagger.dev/tagger/pkg/imagecopy/imagecopytest"
)

var amd64 = v1.Platform{OS: "linux", Architecture: "amd64"}

// The README's push/pull/rollback walk-through, with the real kubectl and
// the built plugin on its PATH.
func TestImagePluginWithKubectl(t *testing.T) {
	dir := t.TempDir()
	registry := fmt.Sprintf("127.0.0.1:%d", freePort(t))
	l := startLocal(t, dir, freePort(t), registry)
	work := t.TempDir()

	// Push a multi-layer OCI archive: the Image is created with it.
	img, err := imagecopytest.Image(3, 256<<10, amd64)
	if err != nil {
		t.Fatal(err)
	}
	in := filepath.Join(work, "app.tar")
	d1, err := imagecopytest.WriteOCIArchive(in, img)
	if err != nil {
		t.Fatal(err)
	}
	ref1 := registry + "/default/app@" + d1.String()
	if out := l.mustKubectl("", "image", "push", "app", "oci-archive:"+in); strings.TrimSpace(out) != ref1 {
		t.Fatalf("push printed %q, want %q", out, ref1)
	}
	out := l.mustKubectl("", "get", "img", "app")
	if !strings.Contains(out, ref1) || !strings.Contains(out, "newest") {
		t.Fatalf("get img:\n%s", out)
	}

	// Pull it back: the same image, blob for blob.
	pulled := filepath.Join(work, "pulled.tar")
	l.mustKubectl("", "image", "pull", "app", pulled)
	sameArchive(t, in, pulled)

	// A two-platform index, pushed from a bare path, stays whole.
	idx, err := imagecopytest.Index(2, 64<<10)
	if err != nil {
		t.Fatal(err)
	}
	multi := filepath.Join(work, "multi.tar")
	dm, err := imagecopytest.WriteOCIArchive(multi, idx)
	if err != nil {
		t.Fatal(err)
	}
	if out := l.mustKubectl("", "image", "push", "multi", multi); strings.TrimSpace(out) != registry+"/default/multi@"+dm.String() {
		t.Fatalf("push of an index printed %q", out)
	}
	multiOut := filepath.Join(work, "multi-out.tar")
	l.mustKubectl("", "image", "pull", "multi", "oci-archive:"+multiOut)
	sameArchive(t, multi, multiOut)

	// docker-archive in and out keeps the image config.
	single, err := imagecopytest.Image(2, 64<<10, amd64)
	if err != nil {
		t.Fatal(err)
	}
	docker := filepath.Join(work, "docker.tar")
	tag, _ := name.NewTag("example.com/app:v1")
	if err := tarball.WriteToFile(docker, tag, single); err != nil {
		t.Fatal(err)
	}
	l.mustKubectl("", "image", "push", "legacy", "docker-archive:"+docker)
	dockerOut := filepath.Join(work, "docker-out.tar")
	l.mustKubectl("", "image", "pull", "legacy", "docker-archive:"+dockerOut)
	wantCfg, err := imagecopytest.DockerArchiveConfigDigest(docker)
	if err != nil {
		t.Fatal(err)
	}
	if gotCfg, err := imagecopytest.DockerArchiveConfigDigest(dockerOut); err != nil || gotCfg != wantCfg {
		t.Fatalf("docker-archive round trip: config %s %v, want %s", gotCfg, err, wantCfg)
	}

	// A second generation, then roll back to the first and forward again.
	img2, err := imagecopytest.Image(1, 1024, amd64)
	if err != nil {
		t.Fatal(err)
	}
	in2 := filepath.Join(work, "app2.tar")
	d2, err := imagecopytest.WriteOCIArchive(in2, img2)
	if err != nil {
		t.Fatal(err)
	}
	ref2 := registry + "/default/app@" + d2.String()
	l.mustKubectl("", "image", "push", "app", in2)
	lines := strings.Split(strings.TrimSpace(l.mustKubectl("", "image", "list", "app")), "\n")
	if len(lines) != 3 || !strings.Contains(lines[1], ref2) || !strings.Contains(lines[1], "*") || !strings.Contains(lines[2], ref1) || strings.Contains(lines[2], "*") {
		t.Fatalf("list:\n%s", strings.Join(lines, "\n"))
	}
	if out := l.mustKubectl("", "image", "rollback", "app"); strings.TrimSpace(out) != ref1 {
		t.Fatalf("rollback printed %q, want %q", out, ref1)
	}
	if out := l.mustKubectl("", "get", "img", "app", "-o", "jsonpath={.status.currentReference}"); out != ref1 {
		t.Fatalf("currentReference after rollback %q, want %q", out, ref1)
	}
	lines = strings.Split(strings.TrimSpace(l.mustKubectl("", "image", "history", "app")), "\n")
	if !strings.Contains(lines[2], "* (pinned)") || strings.Contains(lines[1], "*") {
		t.Fatalf("history after rollback:\n%s", strings.Join(lines, "\n"))
	}
	if out := l.mustKubectl("", "get", "img", "app"); !strings.Contains(out, "pinned #1") {
		t.Fatalf("get img after rollback:\n%s", out)
	}
	// The pinned generation can be pulled by number.
	old := filepath.Join(work, "old.tar")
	l.mustKubectl("", "image", "pull", "app", old, "--generation", "1")
	sameArchive(t, in, old)
	if _, stderr, err := l.kubectl("", "image", "rollback", "app"); err == nil || !strings.Contains(stderr, "oldest") {
		t.Fatalf("rollback past the oldest: %v %s", err, stderr)
	}
	if out := l.mustKubectl("", "image", "rollforward", "app"); strings.TrimSpace(out) != ref2 {
		t.Fatalf("rollforward printed %q, want %q", out, ref2)
	}
	if out := l.mustKubectl("", "get", "img", "app", "-o", "jsonpath={.spec.pinnedReference}"); out != "" {
		t.Fatalf("pin after rollforward to the newest: %q", out)
	}
	// Pushes are recorded like imports.
	if out := l.mustKubectl("", "get", "imageimports", "-o", "jsonpath={.items[*].status.conditions[0].reason}"); !strings.Contains(out, "ImagePushed") {
		t.Fatalf("push records: %q", out)
	}

	// Import through the plugin, from the embedded registry, mirrored.
	if out := l.mustKubectl("", "image", "import", "copy", "--from", registry+"/default/app@"+d1.String(), "--insecure", "--mirror"); strings.TrimSpace(out) != registry+"/default/copy@"+d1.String() {
		t.Fatalf("import printed %q", out)
	}
	_, stderr, err := l.kubectl("", "image", "import", "nothing")
	if err == nil || !strings.Contains(stderr, "spec.from") {
		t.Fatalf("import of a missing Image without --from: %v %s", err, stderr)
	}
	_, stderr, err = l.kubectl("", "image", "pull", "missing", filepath.Join(work, "x.tar"))
	if err == nil || !strings.Contains(stderr, "kubectl image push missing") {
		t.Fatalf("pull of a missing Image: %v %s", err, stderr)
	}
	// An archive that is not there: one colon after the reference, not
	// containers/image's "oci-archive:nope.tar::".
	_, stderr, err = l.kubectl("", "image", "push", "app", "oci-archive:nope.tar")
	if err == nil || !strings.HasPrefix(stderr, "error: pushing oci-archive:nope.tar: ") || strings.Contains(stderr, "::") {
		t.Fatalf("push of a missing archive: %v %s", err, stderr)
	}
	for _, c := range []string{"import", "push", "pull", "list", "rollback", "rollforward"} {
		if out := l.mustKubectl("", "image", c, "--help"); !strings.Contains(out, "Examples:") {
			t.Fatalf("%s --help has no examples:\n%s", c, out)
		}
	}
}

// peakRSS returns the peak resident memory (VmHWM) of a process, in bytes.
func peakRSS(t *testing.T, pid int) int64 {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		t.Skipf("no /proc: %v", err)
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "VmHWM:"); ok {
			kb, err := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 10, 64)
			if err != nil {
				t.Fatal(err)
			}
			return kb << 10
		}
	}
	t.Fatal("no VmHWM")
	return 0
}

// A push far larger than the memory the server may use: the server (and
// its embedded registry) stream it.
func TestLargePushStreams(t *testing.T) {
	if testing.Short() {
		t.Skip("pushes 300 MiB")
	}
	const size = 300 << 20
	dir := t.TempDir()
	registry := fmt.Sprintf("127.0.0.1:%d", freePort(t))
	l := startLocal(t, dir, freePort(t), registry)
	work := t.TempDir()
	img, err := imagecopytest.BigImage(work, size)
	if err != nil {
		t.Fatal(err)
	}
	layout := filepath.Join(work, "layout")
	d, err := imagecopytest.WriteOCILayout(layout, img)
	if err != nil {
		t.Fatal(err)
	}
	_ = os.Remove(filepath.Join(work, "layer.tar"))
	l.mustKubectl("", "get", "img") // warm up
	before := peakRSS(t, l.cmd.Process.Pid)
	if out := l.mustKubectl("", "image", "push", "big", "oci:"+layout); strings.TrimSpace(out) != registry+"/default/big@"+d.String() {
		t.Fatalf("push printed %q", out)
	}
	after := peakRSS(t, l.cmd.Process.Pid)
	t.Logf("server peak RSS %d MiB before, %d MiB after pushing %d MiB", before>>20, after>>20, size>>20)
	if growth := after - before; growth > 100<<20 {
		t.Fatalf("server peak RSS grew by %d MiB pushing %d MiB: it must stream", growth>>20, size>>20)
	}
	// And back, through images/pull.
	out := filepath.Join(work, "out")
	l.mustKubectl("", "image", "pull", "big", "oci:"+out)
	if after2 := peakRSS(t, l.cmd.Process.Pid); after2-before > 100<<20 {
		t.Fatalf("server peak RSS grew by %d MiB pulling %d MiB", (after2-before)>>20, size>>20)
	}

	// Ctrl-C in the middle of a push (into another repository, so that
	// the blobs go up again) says so, without the relay's upload URL and
	// its signed _state.
	stdout, stderr, err := l.interrupt(time.Second, "image", "push", "big2", "--chunk-size", fmt.Sprint(4<<20), "oci:"+layout)
	var exit *exec.ExitError
	if !errors.As(err, &exit) || exit.ExitCode() != 130 || stdout != "" || strings.TrimSpace(stderr) != "error: interrupted" {
		t.Fatalf("interrupted push: %v\nstdout: %s\nstderr: %s", err, stdout, stderr)
	}
}

func sameArchive(t *testing.T, want, got string) {
	t.Helper()
	if err := imagecopytest.SameOCIArchive(want, got); err != nil {
		t.Fatal(err)
	}
}
