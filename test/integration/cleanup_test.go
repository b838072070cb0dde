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
	"net/http"
	"sort"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/utils/ptr"

	"tagger.dev/tagger/pkg/apis/tagger/v1beta1"
	"tagger.dev/tagger/pkg/apiserver"
	"tagger.dev/tagger/pkg/importer"
)

// tags lists the tags of repo in r, sorted; none when it does not exist.
func (r *testRegistry) tags(t *testing.T, repo string) []string {
	t.Helper()
	rp, err := name.NewRepository(r.Addr()+"/"+repo, name.Insecure)
	if err != nil {
		t.Fatal(err)
	}
	tags, err := remote.List(rp)
	if err != nil && !strings.Contains(err.Error(), "NAME_UNKNOWN") {
		t.Fatal(err)
	}
	sort.Strings(tags)
	return tags
}

// eventually polls check for up to 30 s and fails with its last error.
func eventually(t *testing.T, what string, check func() error) {
	t.Helper()
	var last error
	err := wait.PollUntilContextTimeout(context.Background(), 50*time.Millisecond, 30*time.Second, true, func(context.Context) (bool, error) {
		last = check()
		return last == nil, nil
	})
	if err != nil {
		t.Fatalf("%s: %v", what, last)
	}
}

func mirrorTags(digests ...string) []string {
	var out []string
	for _, d := range digests {
		out = append(out, importer.MirrorTag(d))
	}
	sort.Strings(out)
	return out
}

// The mirror keeps exactly the tags of the generations in the history:
// one that drops off loses its tag, unless a kept generation has the same
// digest; at most N finished records are kept per Image, never a running
// one; records are owned by their Image.
func TestCleanupHistoryOverflowAndRecords(t *testing.T) {
	src := startRegistry(t, nil)
	g := newGate()
	gated := startRegistry(t, g.wrap)
	mirror := startRegistry(t, nil)
	s := startServer(t, serverOptions{mirror: mirror.Addr(), configure: func(c *apiserver.Config) {
		c.ExtraConfig.Cleanup.MaxFinishedImports = 5
		c.ExtraConfig.Cleanup.ProgressingRetry = 100 * time.Millisecond
		c.ExtraConfig.ImportOptions.SyncTimeout = time.Second
	}})
	ctx := context.Background()
	images := s.client.TaggerV1beta1().Images(ns)
	records := s.client.TaggerV1beta1().ImageImports(ns)

	img := newImage("app", src.Addr()+"/src/app")
	img.Spec.Mirror, img.Spec.Insecure = true, true
	if _, err := images.Create(ctx, img, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	n := 0
	importNew := func() string {
		t.Helper()
		d := src.push(t, "src/app:latest")
		n++
		ii, err := records.Create(ctx, newImport(fmt.Sprintf("app-%02d", n), "app", ""), metav1.CreateOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if ii.Status.HashReference == nil {
			t.Fatalf("import %d: %+v", n, ii.Status)
		}
		return d.String()
	}
	var digests []string
	for range v1beta1.MaxHashReferences {
		digests = append(digests, importNew())
	}
	// The oldest digest again: it becomes the newest generation, and its
	// old entry drops off the history; the tag stays, a kept generation
	// needs it.
	src.pushImage(t, "src/app:latest", mustImage(t, src, "src/app@"+digests[0]))
	n++
	if ii, err := records.Create(ctx, newImport(fmt.Sprintf("app-%02d", n), "app", ""), metav1.CreateOptions{}); err != nil || ii.Status.HashReference == nil {
		t.Fatalf("re-import of the oldest digest: %v %+v", err, ii)
	}
	// One more: the second oldest drops off, with its tag.
	digests = append(digests, importNew())

	repo := ns + "/app"
	want := mirrorTags(append([]string{digests[0]}, digests[2:]...)...)
	eventually(t, "mirror tags are those of the history", func() error {
		got := mirror.tags(t, repo)
		if strings.Join(got, ",") != strings.Join(want, ",") {
			return fmt.Errorf("tags of %s: %d %v, want %d %v", repo, len(got), got, len(want), want)
		}
		return nil
	})
	stored, err := images.Get(ctx, "app", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if len(stored.Status.HashReferences) != v1beta1.MaxHashReferences {
		t.Fatalf("history of %d", len(stored.Status.HashReferences))
	}
	if !hasString(stored.Finalizers, v1beta1.FinalizerMirrorTags) {
		t.Fatalf("finalizers %v", stored.Finalizers)
	}

	// Records: the 5 newest are kept, each owned by the Image.
	wantRecords := func(names ...string) func() error {
		return func() error {
			list, err := records.List(ctx, metav1.ListOptions{})
			if err != nil {
				return err
			}
			var got []string
			for _, ii := range list.Items {
				got = append(got, ii.Name)
				if len(ii.OwnerReferences) != 1 || ii.OwnerReferences[0].UID != stored.UID || ii.OwnerReferences[0].Kind != "Image" {
					return fmt.Errorf("%s owners %+v", ii.Name, ii.OwnerReferences)
				}
			}
			sort.Strings(got)
			if strings.Join(got, ",") != strings.Join(names, ",") {
				return fmt.Errorf("records %v, want %v", got, names)
			}
			return nil
		}
	}
	eventually(t, "5 newest records kept", wantRecords("app-23", "app-24", "app-25", "app-26", "app-27"))

	// A running import is never deleted, however many finished ones.
	gated.push(t, "src/slow:latest")
	g.arm()
	slow := newImport("app-slow", "app", gated.Addr()+"/src/slow")
	slow.Spec.Insecure = ptr.To(true)
	got, err := records.Create(ctx, slow, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if c := imported(got); c == nil || c.Reason != v1beta1.ReasonProgressing {
		t.Fatalf("slow import: %+v", got.Status)
	}
	eventually(t, "running import kept beside 5 finished", wantRecords("app-23", "app-24", "app-25", "app-26", "app-27", "app-slow"))
	g.release()
	eventually(t, "6th finished record deletes the oldest", wantRecords("app-24", "app-25", "app-26", "app-27", "app-slow"))
}

func mustImage(t *testing.T, r *testRegistry, ref string) v1.Image {
	t.Helper()
	parsed, err := name.ParseReference(r.Addr()+"/"+ref, name.Insecure)
	if err != nil {
		t.Fatal(err)
	}
	img, err := remote.Image(parsed)
	if err != nil {
		t.Fatal(err)
	}
	return img
}

func hasString(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

// failing makes a registry answer 503 to every request but the version
// check while on.
type failing struct{ on atomic.Bool }

func (f *failing) wrap(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if f.on.Load() && r.URL.Path != "/v2/" {
			w.WriteHeader(http.StatusServiceUnavailable)
			return
		}
		next.ServeHTTP(w, r)
	})
}

// Deleting an Image removes its mirror tags (the tagger-sha256-* ones and
// a tag naming one of its generations) and its records; with the mirror
// unreachable the Image waits, saying so in a condition, until the
// documented annotation forces the deletion.
func TestCleanupOnDelete(t *testing.T) {
	src := startRegistry(t, nil)
	f := &failing{}
	mirror := startRegistry(t, f.wrap)
	s := startServer(t, serverOptions{mirror: mirror.Addr()})
	ctx := context.Background()
	images := s.client.TaggerV1beta1().Images(ns)
	records := s.client.TaggerV1beta1().ImageImports(ns)

	importTwo := func(image string) []string {
		t.Helper()
		img := newImage(image, src.Addr()+"/src/"+image)
		img.Spec.Mirror, img.Spec.Insecure = true, true
		if _, err := images.Create(ctx, img, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
		var ds []string
		for i := range 2 {
			ds = append(ds, src.push(t, "src/"+image+":latest").String())
			ii, err := records.Create(ctx, newImport(fmt.Sprintf("%s-%d", image, i), image, ""), metav1.CreateOptions{})
			if err != nil || ii.Status.HashReference == nil {
				t.Fatalf("import: %v %+v", err, ii)
			}
		}
		eventually(t, "finalizer on "+image, func() error {
			img, err := images.Get(ctx, image, metav1.GetOptions{})
			if err != nil {
				return err
			}
			if !hasString(img.Finalizers, v1beta1.FinalizerMirrorTags) {
				return fmt.Errorf("finalizers %v", img.Finalizers)
			}
			return nil
		})
		return ds
	}

	ds := importTwo("gone")
	// A tag that names a generation (as images/push leaves), and one that
	// does not: only the first is the Image's.
	mirror.pushImage(t, ns+"/gone:latest", mustImage(t, mirror, ns+"/gone@"+ds[1]))
	mirror.push(t, ns+"/gone:other")
	if got, want := mirror.tags(t, ns+"/gone"), append(mirrorTags(ds...), "latest", "other"); len(got) != len(want) {
		t.Fatalf("tags before delete %v", got)
	}
	if err := images.Delete(ctx, "gone", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	eventually(t, "Image deleted", func() error {
		_, err := images.Get(ctx, "gone", metav1.GetOptions{})
		if !apierrors.IsNotFound(err) {
			return fmt.Errorf("get: %v", err)
		}
		return nil
	})
	if got := mirror.tags(t, ns+"/gone"); strings.Join(got, ",") != "other" {
		t.Fatalf("tags after delete %v, want [other]", got)
	}
	eventually(t, "records deleted with their Image", func() error {
		list, err := records.List(ctx, metav1.ListOptions{})
		if err != nil {
			return err
		}
		for _, ii := range list.Items {
			if ii.Spec.TargetImage == "gone" {
				return fmt.Errorf("record %s left", ii.Name)
			}
		}
		return nil
	})

	// Mirror unreachable: the Image waits and says why.
	ds = importTwo("stuck")
	f.on.Store(true)
	if err := images.Delete(ctx, "stuck", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	var waiting *v1beta1.Image
	eventually(t, "MirrorCleanup condition", func() error {
		img, err := images.Get(ctx, "stuck", metav1.GetOptions{})
		if err != nil {
			return err
		}
		c := meta.FindStatusCondition(img.Status.Conditions, v1beta1.ConditionMirrorCleanup)
		if img.DeletionTimestamp == nil || c == nil || c.Status != metav1.ConditionFalse || c.Reason != v1beta1.ReasonMirrorUnreachable {
			return fmt.Errorf("deletionTimestamp %v, conditions %+v", img.DeletionTimestamp, img.Status.Conditions)
		}
		waiting = img
		return nil
	})
	c := meta.FindStatusCondition(waiting.Status.Conditions, v1beta1.ConditionMirrorCleanup)
	for _, want := range []string{ns + "/stuck", "503", "kubectl annotate image stuck " + v1beta1.AnnotationSkipMirrorCleanup + "=true"} {
		if !strings.Contains(c.Message, want) {
			t.Errorf("condition message %q does not say %q", c.Message, want)
		}
	}
	// Forced: the Image goes, the tags stay.
	patch := fmt.Sprintf(`{"metadata":{"annotations":{%q:"true"}}}`, v1beta1.AnnotationSkipMirrorCleanup)
	if _, err := images.Patch(ctx, "stuck", types.MergePatchType, []byte(patch), metav1.PatchOptions{}); err != nil {
		t.Fatal(err)
	}
	eventually(t, "forced deletion", func() error {
		_, err := images.Get(ctx, "stuck", metav1.GetOptions{})
		if !apierrors.IsNotFound(err) {
			return fmt.Errorf("get: %v", err)
		}
		return nil
	})
	f.on.Store(false)
	if got, want := mirror.tags(t, ns+"/stuck"), mirrorTags(ds...); strings.Join(got, ",") != strings.Join(want, ",") {
		t.Fatalf("tags after forced delete %v, want %v", got, want)
	}
}
