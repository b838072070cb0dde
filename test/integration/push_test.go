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
	"path/filepath"
	"strings"
	"testing"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/opencontainers/go-digest"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/tools/record"

	"tagger.dev/tagger/pkg/apiserver"
	"tagger.dev/tagger/pkg/imagecopy"
	"tagger.dev/tagger/pkg/imagecopy/imagecopytest"
)

func target(s *testServer, name string) imagecopy.Target {
	return imagecopy.Target{Config: s.config, Namespace: ns, Name: name}
}

// pushArchive writes img as an OCI archive and pushes it into Image name.
func pushArchive(t *testing.T, s *testServer, name string, img any) (v1.Hash, imagecopy.PushResult, string) {
	t.Helper()
	path := filepath.Join(t.TempDir(), "in.tar")
	want, err := imagecopytest.WriteOCIArchive(path, img)
	if err != nil {
		t.Fatal(err)
	}
	res, err := imagecopy.Push(context.Background(), imagecopy.PushOptions{Target: target(s, name), Source: "oci-archive:" + path})
	if err != nil {
		t.Fatal(err)
	}
	if res.Digest.String() != want.String() {
		t.Fatalf("pushed %s, want %s (digest must be preserved)", res.Digest, want)
	}
	return want, res, path
}

// pullArchive pulls generation d of Image name and checks the archive holds
// the same image with the same blobs as the original at orig.
func pullArchive(t *testing.T, s *testServer, name string, d v1.Hash, orig string) {
	t.Helper()
	out := filepath.Join(t.TempDir(), "out.tar")
	if err := imagecopy.Pull(context.Background(), imagecopy.PullOptions{Target: target(s, name), Digest: digest.Digest(d.String()), Dest: "oci-archive:" + out}); err != nil {
		t.Fatal(err)
	}
	got, err := imagecopytest.ReadOCIArchive(out)
	if err != nil {
		t.Fatal(err)
	}
	if got.Digest != d.String() {
		t.Fatalf("pulled %s, want %s", got.Digest, d)
	}
	if err := imagecopytest.SameOCIArchive(orig, out); err != nil {
		t.Fatal(err)
	}
}

func TestPushAndPullThroughSubresources(t *testing.T) {
	mirror := startRegistry(t, nil)
	recorder := record.NewFakeRecorder(10)
	s := startServer(t, serverOptions{mirror: mirror.Addr(), configure: func(c *apiserver.Config) { c.ExtraConfig.Recorder = recorder }})
	ctx := context.Background()

	img, err := imagecopytest.Image(3, 64<<10, v1.Platform{OS: "linux", Architecture: "amd64"})
	if err != nil {
		t.Fatal(err)
	}
	d, _, orig := pushArchive(t, s, "app", img)
	wantRef := mirror.Addr() + "/" + ns + "/app@" + d.String()

	// The push created the Image with its first generation, current.
	got, err := s.client.TaggerV1beta1().Images(ns).Get(ctx, "app", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if len(got.Status.HashReferences) != 1 || got.Status.HashReferences[0].ImageReference != wantRef || got.Status.CurrentReference != wantRef {
		t.Fatalf("status %+v, want one generation %s", got.Status, wantRef)
	}
	if got.Spec.From != mirror.Addr()+"/"+ns+"/app:latest" || !got.Spec.Mirror {
		t.Fatalf("spec %+v", got.Spec)
	}
	// The mirror holds it under the pushed tag and the GC tag.
	for _, ref := range []string{ns + "/app:latest", ns + "/app:tagger-" + strings.Replace(d.String(), ":", "-", 1)} {
		if h, err := mirror.head(ref); err != nil || h != d {
			t.Fatalf("mirror %s: %v %v", ref, h, err)
		}
	}
	// A record of the push, as an import would have left.
	list, err := s.client.TaggerV1beta1().ImageImports(ns).List(ctx, metav1.ListOptions{})
	if err != nil || len(list.Items) != 1 {
		t.Fatalf("imports %v %+v", err, list)
	}
	rec := list.Items[0]
	if c := imported(&rec); c == nil || c.Status != metav1.ConditionTrue || c.Reason != "ImagePushed" || rec.Status.HashReference.ImageReference != wantRef || !strings.HasPrefix(rec.Name, "app-push-") {
		t.Fatalf("push record %+v", rec)
	}
	if ev := <-recorder.Events; !strings.HasPrefix(ev, "Normal Pushed") || !strings.Contains(ev, d.String()) {
		t.Fatalf("event %q", ev)
	}

	pullArchive(t, s, "app", d, orig)

	// Pushing the same image again skips every blob and keeps one generation.
	pushArchive(t, s, "app", img)
	got, _ = s.client.TaggerV1beta1().Images(ns).Get(ctx, "app", metav1.GetOptions{})
	if len(got.Status.HashReferences) != 1 {
		t.Fatalf("generations %+v", got.Status.HashReferences)
	}
}
