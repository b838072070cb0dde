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

package integration

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/opencontainers/go-digest"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/rest"
	"k8s.io/utils/ptr"

	"tagger.dev/tagger/pkg/apiserver"
	"tagger.dev/tagger/pkg/cmd/plugin"
	"tagger.dev/tagger/pkg/imagecopy"
	"tagger.dev/tagger/pkg/imagecopy/imagecopytest"
)

// raw sends one relayed registry request to images/<sub> of Image name.
func raw(t *testing.T, s *testServer, name, sub, method, path string, body io.Reader) *http.Response {
	t.Helper()
	client, err := rest.HTTPClientFor(s.config)
	if err != nil {
		t.Fatal(err)
	}
	wire := http.MethodPost
	if sub == "pull" {
		wire = http.MethodGet
	}
	sep := "?"
	if strings.Contains(path, "?") {
		sep = "&"
	}
	u := fmt.Sprintf("%s/apis/tagger.dev/v1beta1/namespaces/%s/images/%s/%s/%s%smethod=%s", s.config.Host, ns, name, sub, path, sep, method)
	req, err := http.NewRequest(wire, u, body)
	if err != nil {
		t.Fatal(err)
	}
	if strings.HasPrefix(path, "manifests/") {
		req.Header.Set("Content-Type", "application/vnd.oci.image.manifest.v1+json")
	}
	resp, err := client.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = resp.Body.Close() })
	return resp
}

func noImage(t *testing.T, s *testServer, name string) {
	t.Helper()
	if _, err := s.client.TaggerV1beta1().Images(ns).Get(context.Background(), name, metav1.GetOptions{}); !apierrors.IsNotFound(err) {
		t.Fatalf("image %s exists (%v): a refused push must leave no generation", name, err)
	}
}

func TestPushRefusals(t *testing.T) {
	mirror := startRegistry(t, nil)
	const limit = 200 << 10
	s := startServer(t, serverOptions{mirror: mirror.Addr(), configure: func(c *apiserver.Config) { c.ExtraConfig.MaxPushBytes = limit }})

	// Paths outside the repository's blobs and manifests, and methods
	// the relay does not take.
	for _, c := range []struct{ sub, method, path string }{
		{"push", "GET", "tags/list"},
		{"push", "GET", "_catalog"},
		{"push", "HEAD", "blobs/../../other/blobs/sha256:" + strings.Repeat("a", 64)},
		{"push", "DELETE", "manifests/latest"},
		{"push", "PUT", "manifests/tagger-sha256-" + strings.Repeat("a", 64)},
		{"pull", "PUT", "manifests/latest"},
		{"pull", "POST", "blobs/uploads/"},
	} {
		resp := raw(t, s, "app", c.sub, c.method, c.path, nil)
		if resp.StatusCode != http.StatusBadRequest && resp.StatusCode != http.StatusNotFound {
			t.Errorf("%s %s %s: %s", c.sub, c.method, c.path, resp.Status)
		}
	}

	// A blob whose content does not match its digest: the registry's
	// refusal reaches the client.
	resp := raw(t, s, "app", "push", "POST", "blobs/uploads/", nil)
	if resp.StatusCode != http.StatusAccepted {
		t.Fatalf("start upload: %s", resp.Status)
	}
	loc := resp.Header.Get("Location")
	prefix := "/apis/tagger.dev/v1beta1/namespaces/" + ns + "/images/app/push/blobs/uploads/"
	if !strings.HasPrefix(loc, prefix) {
		t.Fatalf("Location %q not rewritten to the subresource", loc)
	}
	session := strings.TrimPrefix(loc, "/apis/tagger.dev/v1beta1/namespaces/"+ns+"/images/app/push/")
	wrong := digest.FromString("something else")
	resp = raw(t, s, "app", "push", "PUT", session+"&digest="+wrong.String(), strings.NewReader("content"))
	if b, _ := io.ReadAll(resp.Body); resp.StatusCode != http.StatusBadRequest || !strings.Contains(string(b), "DIGEST_INVALID") {
		t.Fatalf("mismatched digest: %s %s", resp.Status, b)
	}
	// A manifest naming blobs the mirror does not have.
	manifest := fmt.Sprintf(`{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"%s","size":7},"layers":[]}`, wrong)
	resp = raw(t, s, "app", "push", "PUT", "manifests/latest", strings.NewReader(manifest))
	if b, _ := io.ReadAll(resp.Body); resp.StatusCode != http.StatusBadRequest || !strings.Contains(string(b), "MANIFEST_BLOB_UNKNOWN") {
		t.Fatalf("manifest with unknown blobs: %s %s", resp.Status, b)
	}
	noImage(t, s, "app")

	// A layer over --max-push-bytes, in one request and in chunks.
	big, err := imagecopytest.Image(1, 2*limit, v1.Platform{OS: "linux", Architecture: "amd64"})
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(t.TempDir(), "big.tar")
	if _, err := imagecopytest.WriteOCIArchive(path, big); err != nil {
		t.Fatal(err)
	}
	for _, chunk := range []int64{-1, 64 << 10} {
		_, err = imagecopy.Push(context.Background(), imagecopy.PushOptions{
			Target: target(s, "big"), Source: "oci-archive:" + path, CopyOptions: imagecopy.CopyOptions{ChunkSize: chunk},
		})
		if err == nil || !strings.Contains(err.Error(), "may not exceed") {
			t.Fatalf("chunk %d: push over the limit: %v", chunk, err)
		}
		noImage(t, s, "big")
	}

	// A truncated archive is refused before anything is recorded.
	small, err := imagecopytest.Image(2, 64<<10, v1.Platform{OS: "linux", Architecture: "amd64"})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := imagecopytest.WriteOCIArchive(path, small); err != nil {
		t.Fatal(err)
	}
	fi, _ := os.Stat(path)
	if err := os.Truncate(path, fi.Size()/2); err != nil {
		t.Fatal(err)
	}
	if _, err := imagecopy.Push(context.Background(), imagecopy.PushOptions{Target: target(s, "trunc"), Source: "oci-archive:" + path}); err == nil {
		t.Fatal("truncated archive pushed")
	}
	noImage(t, s, "trunc")
}

func TestPullOfUnmirroredGenerationExplains(t *testing.T) {
	src := startRegistry(t, nil)
	mirror := startRegistry(t, nil)
	d := src.push(t, "src/app:v1")
	s := startServer(t, serverOptions{mirror: mirror.Addr()})
	ii := newImport("app-1", "app", src.Addr()+"/src/app:v1")
	ii.Spec.Insecure = ptr.To(true)
	if _, err := s.client.TaggerV1beta1().ImageImports(ns).Create(context.Background(), ii, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	err := imagecopy.Pull(context.Background(), imagecopy.PullOptions{Target: target(s, "app"), Digest: digest.Digest(d.String()), Dest: "oci-archive:" + filepath.Join(t.TempDir(), "x.tar")})
	if err == nil || !strings.Contains(err.Error(), "--mirror") {
		t.Fatalf("pull of an unmirrored generation: %v", err)
	}
}

func TestRollbackAndRollforward(t *testing.T) {
	mirror := startRegistry(t, nil)
	s := startServer(t, serverOptions{mirror: mirror.Addr()})
	ctx := context.Background()
	images := s.client.TaggerV1beta1().Images(ns)
	var refs []string // oldest first
	for i := 0; i < 3; i++ {
		img, err := imagecopytest.Image(1, 1024, v1.Platform{OS: "linux", Architecture: "amd64"})
		if err != nil {
			t.Fatal(err)
		}
		d, _, _ := pushArchive(t, s, "app", img)
		refs = append(refs, mirror.Addr()+"/"+ns+"/app@"+d.String())
	}
	roll := func(back bool) string {
		t.Helper()
		img, err := images.Get(ctx, "app", metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		pin, err := plugin.Roll(img, back)
		if err != nil {
			t.Fatal(err)
		}
		img.Spec.PinnedReference, img.Spec.PinnedResolvedAt = pin.Reference, pin.ResolvedAt
		if img, err = images.Update(ctx, img, metav1.UpdateOptions{}); err != nil {
			t.Fatal(err)
		}
		return img.Status.CurrentReference
	}
	if got := roll(true); got != refs[1] {
		t.Fatalf("rollback: current %s, want %s", got, refs[1])
	}
	if got := roll(true); got != refs[0] {
		t.Fatalf("second rollback: current %s, want %s", got, refs[0])
	}
	img, _ := images.Get(ctx, "app", metav1.GetOptions{})
	if _, err := plugin.Roll(img, true); err == nil || !strings.Contains(err.Error(), "oldest") {
		t.Fatalf("rollback past the oldest: %v", err)
	}
	// A new push does not move a pinned Image.
	newer, _ := imagecopytest.Image(1, 1024, v1.Platform{OS: "linux", Architecture: "amd64"})
	d, _, _ := pushArchive(t, s, "app", newer)
	refs = append(refs, mirror.Addr()+"/"+ns+"/app@"+d.String())
	if img, _ = images.Get(ctx, "app", metav1.GetOptions{}); img.Status.CurrentReference != refs[0] || img.Status.HashReferences[0].ImageReference != refs[3] {
		t.Fatalf("after a push while pinned: %+v", img.Status)
	}
	for _, want := range []string{refs[1], refs[2], refs[3]} {
		if got := roll(false); got != want {
			t.Fatalf("rollforward: current %s, want %s", got, want)
		}
	}
	if img, _ = images.Get(ctx, "app", metav1.GetOptions{}); img.Spec.PinnedReference != "" {
		t.Fatalf("rollforward to the newest left pin %q", img.Spec.PinnedReference)
	}
	// A pin must name a generation.
	img.Spec.PinnedReference = mirror.Addr() + "/" + ns + "/app@" + digest.FromString("x").String()
	if _, err := images.Update(ctx, img, metav1.UpdateOptions{}); !apierrors.IsInvalid(err) || !strings.Contains(err.Error(), "spec.pinnedReference") {
		t.Fatalf("pin to a digest that is no generation: %v", err)
	}
}
