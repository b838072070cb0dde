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

// Package scenario is the README's "Push, pull and roll back" walk-through,
// written once: push, pull, a multi-platform index, a history that repeats
// a digest, rollback and rollforward over every generation. The integration
// (in-process server and plugin), CLI (local mode, real kubectl) and
// end-to-end (real kube-apiserver) harnesses each drive it through an Env.
package scenario

import (
	"fmt"
	"path/filepath"
	"strings"
	"testing"

	v1 "github.com/google/go-containerregistry/pkg/v1"

	"tagger.dev/tagger/pkg/apis/tagger/v1beta1"
	"tagger.dev/tagger/pkg/imagecopy/imagecopytest"
)

// Env is how a harness runs the scenario, in one namespace of its own.
type Env struct {
	// Plugin runs "kubectl image ARGS" in the namespace.
	Plugin func(args ...string) (stdout, stderr string, err error)
	// Table returns what "kubectl get img NAME" prints.
	Table func(name string) (string, error)
	// Image returns the Image NAME as stored.
	Image func(name string) (*v1beta1.Image, error)
	// Repository returns the mirror repository of Image NAME,
	// "host:port/<namespace>/<name>".
	Repository func(name string) string
	// Work is a directory for the archives.
	Work string
}

var amd64 = v1.Platform{OS: "linux", Architecture: "amd64"}

// Run runs the scenario with the Images app and multi, which must not exist.
func Run(t *testing.T, e Env) {
	t.Helper()
	s := &run{t: t, e: e}

	// A multi-layer OCI archive: the push creates the Image.
	inA, dA := s.archive("a.tar", 3, 256<<10)
	refA := e.Repository("app") + "@" + dA
	s.push("app", "oci-archive:"+inA, refA)
	s.table("app", refA, "newest")
	s.pull("app", inA)

	// A two-platform index keeps both platforms and its digest, and cannot
	// go into a docker archive.
	idx, err := imagecopytest.Index(2, 64<<10)
	if err != nil {
		t.Fatal(err)
	}
	multi := filepath.Join(e.Work, "multi.tar")
	dm, err := imagecopytest.WriteOCIArchive(multi, idx)
	if err != nil {
		t.Fatal(err)
	}
	refM := e.Repository("multi") + "@" + dm.String()
	s.push("multi", multi, refM)
	s.list("multi", 0, false, refM) // the platforms, pushed by digest, are no generations
	s.pull("multi", multi)
	if _, stderr, err := e.Plugin("pull", "multi", "docker-archive:"+filepath.Join(e.Work, "multi-docker.tar")); err == nil || !strings.Contains(stderr+err.Error(), "oci-archive:") {
		t.Fatalf("pull of an index to a docker archive: %v\n%s", err, stderr)
	}

	// A history that repeats a digest: A, B, then A again (newest first:
	// A, B, A). Exactly one generation is current.
	inB, dB := s.archive("b.tar", 1, 4096)
	refB := e.Repository("app") + "@" + dB
	s.push("app", inB, refB)
	s.push("app", "oci-archive:"+inA, refA)
	s.list("app", 0, false, refA, refB, refA)
	s.table("app", refA, "newest")

	// Rollback visits every generation once, the repeated digest included;
	// "kubectl get img" and a pull without --generation follow the current
	// generation, not the newest.
	s.roll("rollback", refB)
	s.list("app", 1, true, refA, refB, refA)
	s.table("app", refB, "pinned #1")
	s.pull("app", inB)
	s.roll("rollback", refA)
	s.list("app", 2, true, refA, refB, refA)
	s.table("app", refA, "pinned #2")
	if _, stderr, err := e.Plugin("rollback", "app"); err == nil || !strings.Contains(stderr+err.Error(), "oldest") {
		t.Fatalf("rollback past the oldest: %v\n%s", err, stderr)
	}
	s.pull("app", inB, "--generation", "1") // by number, whatever is current

	// Rollforward visits them again, in order; at the newest the pin goes.
	s.roll("rollforward", refB)
	s.list("app", 1, true, refA, refB, refA)
	s.roll("rollforward", refA)
	s.list("app", 0, false, refA, refB, refA)
	s.table("app", refA, "newest")
	img, err := e.Image("app")
	if err != nil {
		t.Fatal(err)
	}
	if img.Spec.PinnedReference != "" || img.Spec.PinnedResolvedAt != nil {
		t.Fatalf("pin after rollforward to the newest: %q %v", img.Spec.PinnedReference, img.Spec.PinnedResolvedAt)
	}
	if _, stderr, err := e.Plugin("rollforward", "app"); err == nil || !strings.Contains(stderr+err.Error(), "already current") {
		t.Fatalf("rollforward at the newest: %v\n%s", err, stderr)
	}
}

type run struct {
	t      *testing.T
	e      Env
	n      int
	pulled string // the last archive pulled
}

// archive writes an OCI archive of a new random image and returns its path
// and digest.
func (s *run) archive(name string, layers int, size int64) (string, string) {
	s.t.Helper()
	img, err := imagecopytest.Image(layers, size, amd64)
	if err != nil {
		s.t.Fatal(err)
	}
	path := filepath.Join(s.e.Work, name)
	d, err := imagecopytest.WriteOCIArchive(path, img)
	if err != nil {
		s.t.Fatal(err)
	}
	return path, d.String()
}

func (s *run) plugin(args ...string) string {
	s.t.Helper()
	out, stderr, err := s.e.Plugin(args...)
	if err != nil {
		s.t.Fatalf("kubectl image %s: %v\n%s", strings.Join(args, " "), err, stderr)
	}
	return strings.TrimSpace(out)
}

func (s *run) push(name, src, want string) {
	s.t.Helper()
	if out := s.plugin("push", name, src); out != want {
		s.t.Fatalf("push %s printed %q, want %q", src, out, want)
	}
}

// pull pulls Image name (with args) and checks it holds the image of want.
func (s *run) pull(name, want string, args ...string) {
	s.t.Helper()
	s.n++
	s.pulled = filepath.Join(s.e.Work, fmt.Sprintf("pulled-%d.tar", s.n))
	s.plugin(append([]string{"pull", name, "oci-archive:" + s.pulled}, args...)...)
	if err := imagecopytest.SameOCIArchive(want, s.pulled); err != nil {
		s.t.Fatalf("kubectl image pull %s %s: not the generation expected (%s): %v", name, strings.Join(args, " "), want, err)
	}
}

func (s *run) roll(cmd, want string) {
	s.t.Helper()
	if out := s.plugin(cmd, "app"); out != want {
		s.t.Fatalf("%s printed %q, want %q", cmd, out, want)
	}
	img, err := s.e.Image("app")
	if err != nil {
		s.t.Fatal(err)
	}
	if img.Status.CurrentReference != want {
		s.t.Fatalf("after %s: status.currentReference %q, want %q", cmd, img.Status.CurrentReference, want)
	}
}

// list checks "kubectl image list": the generations refs, newest first,
// and exactly the row current marked current (and pinned).
func (s *run) list(name string, current int, pinned bool, refs ...string) {
	s.t.Helper()
	out := s.plugin("list", name)
	rows := Columns(out)
	if len(rows) != len(refs) {
		s.t.Fatalf("list: %d generations, want %d:\n%s", len(rows), len(refs), out)
	}
	for i, row := range rows {
		if row["GENERATION"] != fmt.Sprint(i) || row["IMAGEREFERENCE"] != refs[i] {
			s.t.Fatalf("list row %d: %v, want %s:\n%s", i, row, refs[i], out)
		}
		want := ""
		if i == current {
			want = "*"
			if pinned {
				want = "* (pinned)"
			}
		}
		if row["CURRENT"] != want {
			s.t.Fatalf("list row %d: CURRENT %q, want %q (exactly generation %d is current):\n%s", i, row["CURRENT"], want, current, out)
		}
	}
}

// table checks the IMAGEREFERENCE and CURRENT columns of "kubectl get img".
func (s *run) table(name, ref, current string) {
	s.t.Helper()
	out, err := s.e.Table(name)
	if err != nil {
		s.t.Fatal(err)
	}
	rows := Columns(out)
	if len(rows) != 1 || rows[0]["IMAGEREFERENCE"] != ref || rows[0]["CURRENT"] != current {
		s.t.Fatalf("kubectl get img %s: want IMAGEREFERENCE %s and CURRENT %q:\n%s", name, ref, current, out)
	}
}

// Columns splits a table printed by kubectl (or tabwriter) into rows of
// column name -> value, by where each header starts: values may hold
// single spaces ("pinned #1").
func Columns(out string) []map[string]string {
	lines := strings.Split(strings.TrimRight(out, "\n"), "\n")
	if len(lines) == 0 {
		return nil
	}
	header := lines[0]
	type col struct {
		name  string
		start int
	}
	var cols []col
	for i := 0; i < len(header); i++ {
		if header[i] != ' ' && (i == 0 || header[i-1] == ' ') {
			end := strings.IndexByte(header[i:], ' ')
			if end < 0 {
				end = len(header) - i
			}
			cols = append(cols, col{header[i : i+end], i})
		}
	}
	var rows []map[string]string
	for _, line := range lines[1:] {
		row := map[string]string{}
		for j, c := range cols {
			if c.start >= len(line) {
				row[c.name] = ""
				continue
			}
			end := len(line)
			if j+1 < len(cols) && cols[j+1].start < end {
				end = cols[j+1].start
			}
			row[c.name] = strings.TrimSpace(line[c.start:end])
		}
		rows = append(rows, row)
	}
	return rows
}
