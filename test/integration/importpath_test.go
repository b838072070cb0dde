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
	"net"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/rest"
	"k8s.io/utils/ptr"

	"tagger.dev/tagger/pkg/apis/tagger/v1beta1"
	"tagger.dev/tagger/pkg/apiserver"
	taggerclient "tagger.dev/tagger/pkg/generated/clientset/versioned"
	"tagger.dev/tagger/pkg/importer"
)

// TestSlowOldImportDoesNotBecomeCurrent: a slow mirrored import of digest A
// that resolved the tag before it moved to B finishes after a fast import of
// B; B must stay the current generation.
func TestSlowOldImportDoesNotBecomeCurrent(t *testing.T) {
	var holdBlobs atomic.Bool
	release := make(chan struct{})
	src := startRegistry(t, func(next http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if holdBlobs.Load() && strings.Contains(r.URL.Path, "/blobs/") && r.Method == http.MethodGet {
				select {
				case <-release:
				case <-r.Context().Done():
					return
				}
			}
			next.ServeHTTP(w, r)
		})
	})
	mirror := startRegistry(t, nil)
	s := startServer(t, serverOptions{mirror: mirror.Addr()})
	ctx := context.Background()
	imports := s.client.TaggerV1beta1().ImageImports(ns)
	from := src.Addr() + "/src/moving:latest"

	digestA := src.push(t, "src/moving:latest")
	holdBlobs.Store(true)
	slow := newImport("slow-a", "moving", from)
	slow.Spec.Insecure, slow.Spec.Mirror = ptr.To(true), ptr.To(true)
	slowDone := make(chan error, 1)
	go func() {
		_, err := imports.Create(ctx, slow, metav1.CreateOptions{})
		slowDone <- err
	}()
	// Wait until A is resolved (the record shows it Progressing with its
	// copy held), then move the tag and import B without mirroring.
	waitFor(t, func() bool {
		got, err := imports.Get(ctx, "slow-a", metav1.GetOptions{})
		return err == nil && got.Status.HashReference == nil && imported(got) != nil
	})
	time.Sleep(200 * time.Millisecond) // the HEAD of A is answered; its blobs wait
	digestB := src.push(t, "src/moving:latest")
	fast := newImport("fast-b", "moving", from)
	fast.Spec.Insecure, fast.Spec.Mirror = ptr.To(true), ptr.To(false)
	got, err := imports.Create(ctx, fast, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if got.Status.HashReference == nil || !strings.HasSuffix(got.Status.HashReference.ImageReference, digestB.String()) {
		t.Fatalf("fast import: %+v", got.Status)
	}
	close(release)
	if err := <-slowDone; err != nil {
		t.Fatal(err)
	}
	waitFor(t, func() bool {
		got, err := imports.Get(ctx, "slow-a", metav1.GetOptions{})
		return err == nil && imported(got) != nil && imported(got).Status == metav1.ConditionTrue
	})
	img, err := s.client.TaggerV1beta1().Images(ns).Get(ctx, "moving", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	refs := img.Status.HashReferences
	if len(refs) != 2 || !strings.HasSuffix(refs[0].ImageReference, digestB.String()) || !strings.HasSuffix(refs[1].ImageReference, digestA.String()) {
		t.Fatalf("history %+v, want B then A", refs)
	}
	if !strings.HasSuffix(img.Status.CurrentReference, digestB.String()) {
		t.Fatalf("current %s, want B %s", img.Status.CurrentReference, digestB)
	}
	if !refs[0].ResolvedAt.After(refs[1].ResolvedAt.Time) {
		t.Fatalf("times: B resolved %v imported %v, A resolved %v imported %v", refs[0].ResolvedAt, refs[0].ImportedAt, refs[1].ResolvedAt, refs[1].ImportedAt)
	}
}

// TestRefusedCreateLeavesNoTrace: ten parallel creates of one name answer
// one 201 and nine 409, and the Image gains one generation.
func TestRefusedCreateLeavesNoTrace(t *testing.T) {
	var heads atomic.Int32
	src := startRegistry(t, func(next http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			// Tagger's requests, not the test's own pushes.
			if strings.Contains(r.URL.Path, "/manifests/") && !strings.Contains(r.UserAgent(), "go-containerregistry") {
				heads.Add(1)
			}
			next.ServeHTTP(w, r)
		})
	})
	s := startServer(t, serverOptions{})
	ctx := context.Background()
	src.push(t, "src/race:latest")
	var wg sync.WaitGroup
	errs := make(chan error, 10)
	for range 10 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			ii := newImport("race", "race", src.Addr()+"/src/race:latest")
			ii.Spec.Insecure = ptr.To(true)
			_, err := s.client.TaggerV1beta1().ImageImports(ns).Create(ctx, ii, metav1.CreateOptions{})
			errs <- err
		}()
	}
	wg.Wait()
	close(errs)
	created, conflicts := 0, 0
	for err := range errs {
		switch {
		case err == nil:
			created++
		case apierrors.IsAlreadyExists(err):
			conflicts++
		default:
			t.Errorf("create: %v", err)
		}
	}
	if created != 1 || conflicts != 9 {
		t.Fatalf("%d created, %d conflicts", created, conflicts)
	}
	img, err := s.client.TaggerV1beta1().Images(ns).Get(ctx, "race", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if len(img.Status.HashReferences) != 1 {
		t.Fatalf("%d generations, want 1", len(img.Status.HashReferences))
	}
	if n := heads.Load(); n != 1 {
		t.Fatalf("the registry saw %d manifest requests, want 1: refused creates must not reach it", n)
	}
}

// TestFailedImportLooksFailed: a failed import is stored, answered with a
// Warning header, and carries the Failed condition.
func TestFailedImportLooksFailed(t *testing.T) {
	src := startRegistry(t, nil)
	s := startServer(t, serverOptions{})
	var mu sync.Mutex
	var warnings []string
	cfg := rest.CopyConfig(s.config)
	cfg.WarningHandler = warningFunc(func(code int, agent, text string) {
		mu.Lock()
		warnings = append(warnings, text)
		mu.Unlock()
	})
	client, err := taggerclient.NewForConfig(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ii := newImport("gone", "gone", src.Addr()+"/src/nothing:latest")
	ii.Spec.Insecure = ptr.To(true)
	start := time.Now()
	got, err := client.TaggerV1beta1().ImageImports(ns).Create(context.Background(), ii, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	f := meta.FindStatusCondition(got.Status.Conditions, v1beta1.ConditionFailed)
	if f == nil || f.Status != metav1.ConditionTrue || !strings.Contains(f.Message, "unknown") {
		t.Fatalf("conditions %+v", got.Status.Conditions)
	}
	// Manifest unknown is permanent: one attempt, no backoff.
	if len(got.Status.ImportAttempts) != 1 {
		t.Fatalf("%d attempts for a permanent error (took %v)", len(got.Status.ImportAttempts), time.Since(start))
	}
	mu.Lock()
	defer mu.Unlock()
	if len(warnings) != 1 || !strings.Contains(warnings[0], "failed") {
		t.Fatalf("warnings %q", warnings)
	}
}

type warningFunc func(code int, agent, text string)

func (f warningFunc) HandleWarningHeader(code int, agent, text string) { f(code, agent, text) }

func waitFor(t *testing.T, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatal("condition not met within 30s")
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// TestLongRegistryErrorIsBounded: a registry answering with a 40 KB error
// message neither makes the create fail (422 on a field the server wrote)
// nor leaves the import Progressing: it fails, saying why in bounded text.
func TestLongRegistryErrorIsBounded(t *testing.T) {
	long := strings.Repeat("very long explanation ", 2000) // ~44 KB
	src := startRegistry(t, func(next http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if strings.Contains(r.URL.Path, "/manifests/") {
				w.Header().Set("Content-Type", "application/json")
				w.WriteHeader(http.StatusNotFound)
				if r.Method != http.MethodHead {
					_, _ = w.Write([]byte(`{"errors":[{"code":"MANIFEST_UNKNOWN","message":"` + long + `"}]}`))
				}
				return
			}
			next.ServeHTTP(w, r)
		})
	})
	s := startServer(t, serverOptions{})
	ii := newImport("long", "long", src.Addr()+"/src/long:latest")
	ii.Spec.Insecure = ptr.To(true)
	got, err := s.client.TaggerV1beta1().ImageImports(ns).Create(context.Background(), ii, metav1.CreateOptions{})
	if err != nil {
		t.Fatalf("create: %v", err)
	}
	f := meta.FindStatusCondition(got.Status.Conditions, v1beta1.ConditionFailed)
	if f == nil || f.Status != metav1.ConditionTrue {
		t.Fatalf("conditions %+v", got.Status.Conditions)
	}
	for _, msg := range []string{f.Message, imported(got).Message, got.Status.ImportAttempts[0].Reason} {
		if len(msg) > v1beta1.MaxReasonLength || !strings.Contains(msg, "manifest unknown") {
			t.Errorf("message of %d bytes: %.300q", len(msg), msg)
		}
	}
}

// TestTokenRealmPastPolicyIsRefused: a registry whose 401 sends clients to
// a token realm on a denied address gets the import refused by the policy,
// and the denied address never sees a connection.
func TestTokenRealmPastPolicyIsRefused(t *testing.T) {
	denied, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var accepted atomic.Int32
	go func() {
		for {
			c, err := denied.Accept()
			if err != nil {
				return
			}
			accepted.Add(1)
			_ = c.Close()
		}
	}()
	t.Cleanup(func() { _ = denied.Close() })
	realm := "http://" + denied.Addr().String() + "/token"
	src := startRegistry(t, func(next http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if r.Header.Get("Authorization") == "" {
				w.Header().Set("WWW-Authenticate", `Bearer realm="`+realm+`",service="registry"`)
				w.WriteHeader(http.StatusUnauthorized)
				return
			}
			next.ServeHTTP(w, r)
		})
	})
	s := startServer(t, serverOptions{configure: func(c *apiserver.Config) {
		policy := importer.Policy{Deny: []string{denied.Addr().String()}}
		c.ExtraConfig.Importer = importer.New(importer.Options{Policy: policy})
		c.ExtraConfig.Policy = policy
	}})
	ii := newImport("realm", "realm", src.Addr()+"/src/app:latest")
	ii.Spec.Insecure = ptr.To(true)
	got, err := s.client.TaggerV1beta1().ImageImports(ns).Create(context.Background(), ii, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	f := meta.FindStatusCondition(got.Status.Conditions, v1beta1.ConditionFailed)
	if f == nil || !strings.Contains(f.Message, "not allowed") || len(got.Status.ImportAttempts) != 1 {
		t.Fatalf("status %+v", got.Status)
	}
	if n := accepted.Load(); n != 0 {
		t.Fatalf("the denied token realm saw %d connections", n)
	}
}
