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
	"archive/tar"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
	"github.com/google/go-containerregistry/pkg/v1/types"

	"tagger.dev/tagger/pkg/apis/tagger/v1beta1"
	"tagger.dev/tagger/pkg/imagecopy/imagecopytest"
	"tagger.dev/tagger/pkg/localregistry"
	"tagger.dev/tagger/test/scenario"
)

// pluginRun runs "kubectl image ARGS" as user and returns stdout and stderr.
func (c *cluster) pluginRun(ctx context.Context, user string, args ...string) (string, string, error) {
	stdout, stderr, err := c.run(ctx, user, "", append([]string{"image"}, args...)...)
	if err != nil {
		err = fmt.Errorf("kubectl image %s: %w\n%s", strings.Join(args, " "), err, stderr)
	}
	return stdout, stderr, err
}

// mustPlugin runs "kubectl image ARGS" as user within two minutes and
// returns its trimmed stdout, failing t on error.
func (c *cluster) mustPlugin(t *testing.T, user string, args ...string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	out, _, err := c.pluginRun(ctx, user, args...)
	if err != nil {
		t.Fatal(err)
	}
	return strings.TrimSpace(out)
}

// ownMirror gives ns a mirror-registry-config Secret for r (plain http on
// 127.0.0.1) and waits for Tagger's informers to see it.
func (c *cluster) ownMirror(t *testing.T, ns string, r *registry) {
	t.Helper()
	c.mustKubectl(t, "admin", mirrorSecret(ns, r.Addr(), map[string]string{"insecure": "true"}), "apply", "-f", "-")
	time.Sleep(informerDelay)
}

// sameImageArchive checks that the OCI archive got holds the image of want,
// blob for blob.
func sameImageArchive(t *testing.T, want, got string) {
	t.Helper()
	if err := imagecopytest.SameOCIArchive(want, got); err != nil {
		t.Fatal(err)
	}
}

// scenarioEnv runs the shared push/pull/rollback scenario as admin in ns,
// through kube-apiserver's aggregator.
func (c *cluster) scenarioEnv(t *testing.T, ns string, mirror *registry) scenario.Env {
	return scenario.Env{
		Plugin: func(args ...string) (string, string, error) {
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
			defer cancel()
			return c.pluginRun(ctx, "admin", append(args, "-n", ns)...)
		},
		Table: func(name string) (string, error) {
			return c.kubectlAs("admin", "", "get", "img", "-n", ns, name)
		},
		Image: func(name string) (*v1beta1.Image, error) {
			out, err := c.kubectlAs("admin", "", "get", "img", "-n", ns, name, "-o", "json")
			if err != nil {
				return nil, err
			}
			img := &v1beta1.Image{}
			return img, json.Unmarshal([]byte(out), img)
		},
		Repository: func(name string) string { return mirror.Addr() + "/" + ns + "/" + name },
		Work:       t.TempDir(),
	}
}

// Push, pull, an index, a history that repeats a digest, rollback and
// rollforward with "kubectl image" through kube-apiserver's aggregator,
// into the namespace's own mirror (test/scenario); then what only a
// cluster shows: the mirror's tags and the push records.
func TestTransfer(t *testing.T) {
	c := needCluster(t)
	c.needPlugin(t, "kubectl-image")
	ns := c.namespace(t, "transfer")
	mirror := startRegistry(t, registryOptions{})
	c.ownMirror(t, ns, mirror)
	scenario.Run(t, c.scenarioEnv(t, ns, mirror))

	ref := c.mustKubectl(t, "admin", "", "get", "img", "-n", ns, "app", "-o", "jsonpath={.status.hashReferences[0].imageReference}")
	_, dgst, _ := strings.Cut(ref, "@")
	for _, r := range []string{ns + "/app:latest", ns + "/app:tagger-" + strings.Replace(dgst, ":", "-", 1)} {
		if d, err := mirror.head(t, r); err != nil || d.String() != dgst {
			t.Errorf("mirror %s: %v %v, want %s", r, d, err, dgst)
		}
	}
	// Three pushes into app, one into multi: each left a record.
	if out := c.mustKubectl(t, "admin", "", "get", "imageimports", "-n", ns, "-o", "jsonpath={.items[*].status.conditions[0].reason}"); strings.Count(out, "ImagePushed") != 4 {
		t.Fatalf("push records: %q, want 4 ImagePushed", out)
	}
}

// Who may push and pull: edit pushes and pulls, view neither pushes nor
// imports nor pulls, a user without rights gets nothing.
func TestTransferRBAC(t *testing.T) {
	c := needCluster(t)
	c.needPlugin(t, "kubectl-image")
	ns := c.namespace(t, "transfer-rbac")
	mirror := startRegistry(t, registryOptions{})
	c.ownMirror(t, ns, mirror)
	c.mustKubectl(t, "admin", "", "create", "rolebinding", "alice-view", "-n", ns, "--clusterrole=view", "--user=alice")
	c.mustKubectl(t, "admin", "", "create", "rolebinding", "bob-edit", "-n", ns, "--clusterrole=edit", "--user=bob")
	// kube-controller-manager aggregates tagger:edit into edit.
	eventually(t, 60*time.Second, func() error {
		if !c.canI(t, "bob", ns, "create", "images.tagger.dev", "push") || !c.canI(t, "bob", ns, "get", "images.tagger.dev", "pull") {
			return fmt.Errorf("edit does not include tagger:edit yet")
		}
		return nil
	})
	work := t.TempDir()
	img, err := imagecopytest.Image(2, 64<<10, v1.Platform{OS: "linux", Architecture: "amd64"})
	if err != nil {
		t.Fatal(err)
	}
	in := filepath.Join(work, "app.tar")
	d, err := imagecopytest.WriteOCIArchive(in, img)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	forbidden := func(user, what, sub string, args ...string) {
		t.Helper()
		_, stderr, err := c.pluginRun(ctx, user, args...)
		if err == nil {
			t.Errorf("%s could %s", user, what)
			return
		}
		if !strings.Contains(strings.ToLower(stderr), "forbidden") || !strings.Contains(stderr, sub) {
			t.Errorf("%s %s: want Forbidden on %s, got %v", user, what, sub, err)
		}
	}

	// view: no push (not even of a new Image), no import.
	forbidden("alice", "push", "images/push", "push", "-n", ns, "app", "oci-archive:"+in)
	forbidden("alice", "import", "imageimports", "import", "-n", ns, "app", "--from", mirror.Addr()+"/x/y:z", "--insecure")
	if _, err := mirror.head(t, ns+"/app@"+d.String()); err == nil {
		t.Error("the view user's push reached the mirror")
	}

	// edit pushes and pulls.
	ref := mirror.Addr() + "/" + ns + "/app@" + d.String()
	if out := c.mustPlugin(t, "bob", "push", "-n", ns, "app", "oci-archive:"+in); out != ref {
		t.Fatalf("bob's push printed %q, want %q", out, ref)
	}
	pulled := filepath.Join(work, "bob.tar")
	c.mustPlugin(t, "bob", "pull", "-n", ns, "app", pulled)
	sameImageArchive(t, in, pulled)

	// view reads the Image but may not pull it; carol may not even read it.
	forbidden("alice", "pull", "images/pull", "pull", "-n", ns, "app", filepath.Join(work, "alice.tar"))
	forbidden("carol", "pull", "images", "pull", "-n", ns, "app", filepath.Join(work, "carol.tar"))
	forbidden("carol", "push", "images", "push", "-n", ns, "app", "oci-archive:"+in)
	for _, f := range []string{"alice.tar", "carol.tar"} {
		if st, err := os.Stat(filepath.Join(work, f)); err == nil && st.Size() > 0 {
			t.Errorf("a refused pull wrote %s (%d bytes)", f, st.Size())
		}
	}
}

// transferLayers and transferLayerSize make the large push: random, hence
// incompressible, uncompressed layers.
const (
	transferLayers    = 3
	transferLayerSize = 200 << 20
)

// A large image goes through kube-apiserver (default --request-timeout,
// 60 s) in both directions, into a filesystem-backed mirror, and comes
// back byte for byte.
func TestTransferLarge(t *testing.T) {
	if testing.Short() {
		t.Skip("pushes and pulls 600 MiB")
	}
	c := needCluster(t)
	c.needPlugin(t, "kubectl-image")
	ns := c.namespace(t, "transfer-large")
	reg, err := localregistry.New(context.Background(), localregistry.Options{Dir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = reg.Close() })
	mirror := &registry{Registry: reg}
	c.ownMirror(t, ns, mirror)

	work := t.TempDir()
	start := time.Now()
	layout := filepath.Join(work, "layout")
	d, size := bigLayout(t, work, layout, transferLayers, transferLayerSize)
	want := readLayout(t, layout)
	t.Logf("made a %d MiB image of %d layers in %s", size>>20, transferLayers, time.Since(start).Round(time.Millisecond))

	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	start = time.Now()
	out, _, err := c.pluginRun(ctx, "admin", "push", "-n", ns, "big", "oci:"+layout)
	if err != nil {
		t.Fatal(err)
	}
	push := time.Since(start)
	if got, want := strings.TrimSpace(out), mirror.Addr()+"/"+ns+"/big@"+d.String(); got != want {
		t.Fatalf("push printed %q, want %q", got, want)
	}
	t.Logf("push of %d MiB: %s, %.0f MiB/s", size>>20, push.Round(time.Millisecond), float64(size>>20)/push.Seconds())
	if err := os.RemoveAll(layout); err != nil { // room for the pull
		t.Fatal(err)
	}

	pulledDir := filepath.Join(work, "pulled")
	start = time.Now()
	if _, _, err := c.pluginRun(ctx, "admin", "pull", "-n", ns, "big", "oci:"+pulledDir); err != nil {
		t.Fatal(err)
	}
	pull := time.Since(start)
	t.Logf("pull of %d MiB: %s, %.0f MiB/s", size>>20, pull.Round(time.Millisecond), float64(size>>20)/pull.Seconds())

	got := readLayout(t, pulledDir)
	if got.digest != want.digest {
		t.Fatalf("pulled %s, pushed %s", got.digest, want.digest)
	}
	if len(got.blobs) != len(want.blobs) {
		t.Fatalf("pulled %d blobs, pushed %d", len(got.blobs), len(want.blobs))
	}
	for b, n := range want.blobs {
		if got.blobs[b] != n {
			t.Errorf("blob %s: pulled %d bytes, pushed %d", b, got.blobs[b], n)
		}
	}
}

// bigLayout writes an OCI layout of an image of n random uncompressed
// layers of size bytes each to dir, making the layers under work first
// (and removing them), and returns its digest and its size in bytes.
func bigLayout(t *testing.T, work, dir string, n int, size int64) (v1.Hash, int64) {
	t.Helper()
	img := mutate.MediaType(empty.Image, types.OCIManifestSchema1)
	img = mutate.ConfigMediaType(img, types.OCIConfigJSON)
	var total int64
	for i := range n {
		path := filepath.Join(work, fmt.Sprintf("layer-%d.tar", i))
		f, err := os.Create(path)
		if err != nil {
			t.Fatal(err)
		}
		tw := tar.NewWriter(f)
		if err := tw.WriteHeader(&tar.Header{Name: fmt.Sprintf("random-%d.bin", i), Mode: 0o644, Size: size, Typeflag: tar.TypeReg}); err != nil {
			t.Fatal(err)
		}
		if _, err := io.CopyN(tw, rand.Reader, size); err != nil {
			t.Fatal(err)
		}
		if err := tw.Close(); err != nil {
			t.Fatal(err)
		}
		if err := f.Close(); err != nil {
			t.Fatal(err)
		}
		l, err := tarball.LayerFromFile(path, tarball.WithMediaType(types.OCIUncompressedLayer))
		if err != nil {
			t.Fatal(err)
		}
		if img, err = mutate.AppendLayers(img, l); err != nil {
			t.Fatal(err)
		}
		st, err := os.Stat(path)
		if err != nil {
			t.Fatal(err)
		}
		total += st.Size()
	}
	d, err := imagecopytest.WriteOCILayout(dir, img)
	if err != nil {
		t.Fatal(err)
	}
	for i := range n {
		_ = os.Remove(filepath.Join(work, fmt.Sprintf("layer-%d.tar", i)))
	}
	return d, total
}

// ociLayout is what an OCI layout directory holds: the digest of its one
// image, and the size of each blob, checked against its digest.
type ociLayout struct {
	digest string
	blobs  map[string]int64
}

func readLayout(t *testing.T, dir string) ociLayout {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(dir, "index.json"))
	if err != nil {
		t.Fatal(err)
	}
	var idx struct {
		Manifests []struct {
			Digest string `json:"digest"`
		} `json:"manifests"`
	}
	if err := json.Unmarshal(b, &idx); err != nil {
		t.Fatal(err)
	}
	if len(idx.Manifests) != 1 {
		t.Fatalf("%s/index.json lists %d manifests, want 1", dir, len(idx.Manifests))
	}
	l := ociLayout{digest: idx.Manifests[0].Digest, blobs: map[string]int64{}}
	entries, err := os.ReadDir(filepath.Join(dir, "blobs", "sha256"))
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range entries {
		f, err := os.Open(filepath.Join(dir, "blobs", "sha256", e.Name()))
		if err != nil {
			t.Fatal(err)
		}
		h := sha256.New()
		n, err := io.Copy(h, f)
		_ = f.Close()
		if err != nil {
			t.Fatal(err)
		}
		if got := hex.EncodeToString(h.Sum(nil)); got != e.Name() {
			t.Fatalf("%s: blob %s has digest %s", dir, e.Name(), got)
		}
		l.blobs["sha256:"+e.Name()] = n
	}
	return l
}
