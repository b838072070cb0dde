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
	"strings"
	"sync/atomic"
	"testing"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"

	"tagger.dev/tagger/pkg/apis/tagger/v1beta1"
)

// pagedTags makes the registry list tags two a page (a Link header to the
// next), and counts the pages.
func pagedTags(pages *atomic.Int32, next func(http.Handler) http.Handler) func(http.Handler) http.Handler {
	return func(h http.Handler) http.Handler {
		if next != nil {
			h = next(h)
		}
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if strings.HasSuffix(r.URL.Path, "/tags/list") {
				pages.Add(1)
				if r.URL.Query().Get("n") == "" {
					q := r.URL.Query()
					q.Set("n", "2")
					r.URL.RawQuery = q.Encode()
				}
			}
			h.ServeHTTP(w, r)
		})
	}
}

// TestTagPolicySemver: a semver policy ">=1.2.0 <2" imports 1.2.0, moves to
// 1.3.1 when it is pushed and ignores 2.0.0 — on schedule, by hand and by
// webhook — reading paginated tag lists; a policy nothing matches fails
// the import with the reason; an invalid one is refused with its field.
func TestTagPolicySemver(t *testing.T) {
	var pages atomic.Int32
	var heads manifestHeads
	reg := startRegistry(t, pagedTags(&pages, heads.wrap))
	v120 := reg.push(t, "org/svc:1.2.0")
	reg.push(t, "org/svc:latest")
	reg.push(t, "org/svc:1.1.9")
	s := startServer(t, serverOptions{configure: lowMinInterval})
	ctx := context.Background()
	repo := reg.Addr() + "/org/svc"
	policy := &v1beta1.TagPolicy{Semver: ">=1.2.0 <2"}

	img := scheduledImage("svc", repo, checkInterval)
	img.Spec.TagPolicy = policy
	if _, err := s.client.TaggerV1beta1().Images(ns).Create(ctx, img, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	got := s.waitGeneration(t, ns, "svc", v120.String(), 10*time.Second)
	if from := got.Status.HashReferences[0].From; from != repo+":1.2.0" {
		t.Errorf("generation from %q, want the chosen tag %s:1.2.0", from, repo)
	}
	if pages.Load() < 2 {
		t.Errorf("tag list read in %d pages, want 2 or more (two tags a page)", pages.Load())
	}

	v200 := reg.push(t, "org/svc:2.0.0")
	v131 := reg.push(t, "org/svc:1.3.1")
	pushed := time.Now()
	got = s.waitGeneration(t, ns, "svc", v131.String(), checkInterval+checkInterval/10+3*time.Second)
	t.Logf("1.3.1 imported %s after the push", time.Since(pushed).Round(10*time.Millisecond))
	if from := got.Status.HashReferences[0].From; from != repo+":1.3.1" {
		t.Errorf("generation from %q, want %s:1.3.1", from, repo)
	}
	time.Sleep(2 * checkInterval)
	got = s.image(t, ns, "svc")
	if len(got.Status.HashReferences) != 2 {
		t.Errorf("generations %+v, want 1.3.1 and 1.2.0", got.Status.HashReferences)
	}
	for _, hr := range got.Status.HashReferences {
		if strings.Contains(hr.ImageReference, v200.String()) {
			t.Errorf("2.0.0 was imported: %+v", hr)
		}
	}
	if c := checked(got); c == nil || c.Reason != v1beta1.ReasonUnchanged || !strings.Contains(c.Message, repo+":1.3.1 still resolves to "+v131.String()) {
		t.Errorf("Checked %+v", c)
	}

	// By hand: the import inherits the policy with the Image's from.
	ii, err := s.client.TaggerV1beta1().ImageImports(ns).Create(ctx, &v1beta1.ImageImport{
		ObjectMeta: metav1.ObjectMeta{GenerateName: "svc-"}, Spec: v1beta1.ImageImportSpec{TargetImage: "svc"},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if ii.Spec.TagPolicy == nil || ii.Spec.TagPolicy.Semver != policy.Semver || ii.Spec.From != repo {
		t.Errorf("manual import spec %+v", ii.Spec)
	}
	if hr := ii.Status.HashReference; hr == nil || hr.From != repo+":1.3.1" || !strings.HasSuffix(hr.ImageReference, v131.String()) {
		t.Errorf("manual import chose %+v, want 1.3.1", ii.Status.HashReference)
	}

	// By webhook, on an Image that is not scheduled: a push the policy
	// admits checks it, one it does not admit checks nothing.
	hooked := &v1beta1.Image{ObjectMeta: metav1.ObjectMeta{Name: "svc-hooked", Namespace: ns},
		Spec: v1beta1.ImageSpec{From: repo, Insecure: true, TagPolicy: policy}}
	if _, err := s.client.TaggerV1beta1().Images(ns).Create(ctx, hooked, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	client, url := s.hookClient(t), s.hook(t, ns).Status.URL
	if code, body := post(t, client, url, fmt.Sprintf(`{"repository": %q, "tag": "2.1.0"}`, repo), nil); code != http.StatusAccepted || !strings.Contains(body, `"images":[]`) {
		t.Errorf("push of 2.1.0: %d %s, want no Image", code, body)
	}
	v132 := reg.push(t, "org/svc:1.3.2")
	if code, body := post(t, client, url, fmt.Sprintf(`{"repository": %q, "tag": "1.3.2"}`, repo), nil); code != http.StatusAccepted || !strings.Contains(body, `"svc-hooked"`) {
		t.Errorf("push of 1.3.2: %d %s", code, body)
	}
	got = s.waitGeneration(t, ns, "svc-hooked", v132.String(), 5*time.Second)
	if from := got.Status.HashReferences[0].From; from != repo+":1.3.2" {
		t.Errorf("webhook generation from %q", from)
	}

	// Nothing matches: the import fails at once, saying so.
	none, err := s.client.TaggerV1beta1().ImageImports(ns).Create(ctx, &v1beta1.ImageImport{
		ObjectMeta: metav1.ObjectMeta{Name: "svc-none"},
		Spec: v1beta1.ImageImportSpec{TargetImage: "svc-none", From: repo, Insecure: ptr.To(true),
			TagPolicy: &v1beta1.TagPolicy{Semver: ">=5"}},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	c := imported(none)
	if c == nil || c.Reason != v1beta1.ReasonNoMoreAttempts || !strings.Contains(c.Message, "no tag of "+repo+" matches the tag policy") || len(none.Status.ImportAttempts) != 1 {
		t.Errorf("no match: condition %+v, %d attempts", c, len(none.Status.ImportAttempts))
	}

	// A policy that does not compile is refused with its field.
	bad := scheduledImage("bad", repo, time.Hour)
	bad.Spec.TagPolicy = &v1beta1.TagPolicy{Semver: ">=1.2.0 <<2"}
	_, err = s.client.TaggerV1beta1().Images(ns).Create(ctx, bad, metav1.CreateOptions{})
	if !apierrors.IsInvalid(err) || !strings.Contains(err.Error(), "spec.tagPolicy.semver") {
		t.Errorf("invalid semver: %v", err)
	}
	bad.Spec.TagPolicy = &v1beta1.TagPolicy{Pattern: "^v(", Order: v1beta1.TagOrderNumerical}
	_, err = s.client.TaggerV1beta1().Images(ns).Create(ctx, bad, metav1.CreateOptions{})
	if !apierrors.IsInvalid(err) || !strings.Contains(err.Error(), "spec.tagPolicy.pattern") {
		t.Errorf("invalid pattern: %v", err)
	}
	bad.Spec.From, bad.Spec.TagPolicy = repo+":1.2.0", policy
	_, err = s.client.TaggerV1beta1().Images(ns).Create(ctx, bad, metav1.CreateOptions{})
	if !apierrors.IsInvalid(err) || !strings.Contains(err.Error(), "spec.from") {
		t.Errorf("tagged from with a policy: %v", err)
	}
}
