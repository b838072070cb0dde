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
	"net"
	"net/http"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/wait"
	etcd3testing "k8s.io/apiserver/pkg/storage/etcd3/testing"
	"k8s.io/client-go/tools/record"
	"k8s.io/utils/ptr"

	"tagger.dev/tagger/pkg/apis/tagger/v1beta1"
	"tagger.dev/tagger/pkg/apiserver"
)

func newImport(name, target, from string) *v1beta1.ImageImport {
	return &v1beta1.ImageImport{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: ns},
		Spec:       v1beta1.ImageImportSpec{TargetImage: target, From: from},
	}
}

func imported(ii *v1beta1.ImageImport) *metav1.Condition {
	return meta.FindStatusCondition(ii.Status.Conditions, "Imported")
}

// methods counts manifest requests by method.
type methods struct {
	mu     sync.Mutex
	counts map[string]int
}

func (m *methods) wrap(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if strings.Contains(r.URL.Path, "/manifests/") {
			m.mu.Lock()
			if m.counts == nil {
				m.counts = map[string]int{}
			}
			m.counts[r.Method]++
			m.mu.Unlock()
		}
		next.ServeHTTP(w, r)
	})
}

func (m *methods) get(method string) int {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.counts[method]
}

func TestImportCreatesImageWithFirstGeneration(t *testing.T) {
	var counter methods
	src := startRegistry(t, counter.wrap)
	digest := src.push(t, "src/app:v1")
	recorder := record.NewFakeRecorder(10)
	s := startServer(t, serverOptions{configure: func(c *apiserver.Config) { c.ExtraConfig.Recorder = recorder }})
	ctx := context.Background()

	ii := newImport("app-1", "app", src.Addr()+"/src/app:v1")
	ii.Spec.Insecure = ptr.To(true)
	got, err := s.client.TaggerV1beta1().ImageImports(ns).Create(ctx, ii, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	// The create answer already holds the outcome.
	wantRef := src.Addr() + "/src/app@" + digest.String()
	if got.Status.HashReference == nil || got.Status.HashReference.ImageReference != wantRef {
		t.Fatalf("hashReference %+v, want %s", got.Status.HashReference, wantRef)
	}
	if c := imported(got); c == nil || c.Status != metav1.ConditionTrue || c.Reason != "ImageImported" {
		t.Fatalf("condition %+v", c)
	}
	if len(got.Status.ImportAttempts) != 1 || !got.Status.ImportAttempts[0].Succeed {
		t.Fatalf("attempts %+v", got.Status.ImportAttempts)
	}
	// Resolved with HEAD, never a manifest GET (registries count GETs as pulls).
	if counter.get(http.MethodHead) == 0 || counter.get(http.MethodGet) != 0 {
		t.Fatalf("manifest requests %v", counter.counts)
	}
	// The record says what was used, inherited values included.
	if got.Spec.Mirror == nil || *got.Spec.Mirror || got.Spec.Insecure == nil || !*got.Spec.Insecure {
		t.Fatalf("recorded spec %+v", got.Spec)
	}
	stored, err := s.client.TaggerV1beta1().ImageImports(ns).Get(ctx, "app-1", metav1.GetOptions{})
	if err != nil || stored.Status.HashReference == nil || stored.Status.HashReference.ImageReference != wantRef {
		t.Fatalf("stored import %v %+v", err, stored)
	}

	img, err := s.client.TaggerV1beta1().Images(ns).Get(ctx, "app", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if img.Spec.From != ii.Spec.From || !img.Spec.Insecure || img.Spec.Mirror {
		t.Fatalf("image spec %+v", img.Spec)
	}
	if len(img.Status.HashReferences) != 1 || img.Status.HashReferences[0].ImageReference != wantRef {
		t.Fatalf("image generations %+v", img.Status.HashReferences)
	}
	select {
	case ev := <-recorder.Events:
		if !strings.HasPrefix(ev, "Normal Imported") || !strings.Contains(ev, digest.String()) {
			t.Fatalf("event %q", ev)
		}
	default:
		t.Fatal("no event")
	}
}

func TestImportMirrorsEveryPlatform(t *testing.T) {
	src := startRegistry(t, nil)
	mirror := startRegistry(t, nil)
	digest := src.pushIndex(t, "src/multi:latest")
	s := startServer(t, serverOptions{mirror: mirror.Addr()})
	ctx := context.Background()

	img := newImage("multi", src.Addr()+"/src/multi")
	img.Spec.Mirror, img.Spec.Insecure = true, true
	if _, err := s.client.TaggerV1beta1().Images(ns).Create(ctx, img, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	got, err := s.client.TaggerV1beta1().ImageImports(ns).Create(ctx, newImport("multi-1", "multi", ""), metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	want := mirror.Addr() + "/" + ns + "/multi@" + digest.String()
	if got.Status.HashReference == nil || got.Status.HashReference.ImageReference != want {
		t.Fatalf("hashReference %+v (attempts %+v), want %s", got.Status.HashReference, got.Status.ImportAttempts, want)
	}
	if got.Spec.From != img.Spec.From || !*got.Spec.Mirror || !*got.Spec.Insecure {
		t.Fatalf("inherited spec %+v", got.Spec)
	}
	// The index itself was copied, digest unchanged, and tagged by digest.
	for _, ref := range []string{ns + "/multi@" + digest.String(), ns + "/multi:tagger-" + strings.Replace(digest.String(), ":", "-", 1)} {
		d, err := mirror.head(ref)
		if err != nil || d != digest {
			t.Fatalf("mirror %s: %v %v", ref, d, err)
		}
	}
}

func TestImportRefusals(t *testing.T) {
	s := startServer(t, serverOptions{})
	ctx := context.Background()
	imports := s.client.TaggerV1beta1().ImageImports(ns)

	// No Image and no from: nothing to import.
	_, err := imports.Create(ctx, newImport("orphan", "missing", ""), metav1.CreateOptions{})
	if got := causeFields(t, err); len(got) != 1 || got[0] != "spec.from" {
		t.Fatalf("causes %v", got)
	}
	// Metadata addresses are refused before any connection.
	_, err = imports.Create(ctx, newImport("metadata", "meta", "169.254.169.254/latest/meta-data"), metav1.CreateOptions{})
	if got := causeFields(t, err); len(got) != 1 || got[0] != "spec.from" {
		t.Fatalf("causes %v", got)
	}
	_, err = imports.Create(ctx, newImport("Bad", "bad name!", "nginx"), metav1.CreateOptions{})
	if got := causeFields(t, err); len(got) != 2 {
		t.Fatalf("causes %v", got)
	}
	// Mirroring without a mirror says how to configure one.
	got, err := imports.Create(ctx, &v1beta1.ImageImport{
		ObjectMeta: metav1.ObjectMeta{Name: "nomirror"},
		Spec:       v1beta1.ImageImportSpec{TargetImage: "x", From: "127.0.0.1:1/x", Mirror: ptr.To(true)},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	// A configuration error is not retried: one attempt, failed for good.
	if n := len(got.Status.ImportAttempts); n != 1 || !strings.Contains(got.Status.ImportAttempts[n-1].Reason, "--local-registry-address") {
		t.Fatalf("attempts %+v", got.Status.ImportAttempts)
	}
	if c := meta.FindStatusCondition(got.Status.Conditions, v1beta1.ConditionFailed); c == nil || c.Status != metav1.ConditionTrue {
		t.Fatalf("conditions %+v", got.Status.Conditions)
	}
	list, err := imports.List(ctx, metav1.ListOptions{})
	if err != nil || len(list.Items) != 1 {
		t.Fatalf("stored imports: %v %d", err, len(list.Items))
	}
	if _, err := s.client.TaggerV1beta1().Images(ns).Get(ctx, "x", metav1.GetOptions{}); !apierrors.IsNotFound(err) {
		t.Fatalf("a failed import created its Image: %v", err)
	}
	// The name is taken.
	if _, err := imports.Create(ctx, newImport("nomirror", "x", "nginx"), metav1.CreateOptions{}); !apierrors.IsAlreadyExists(err) {
		t.Fatalf("want AlreadyExists, got %v", err)
	}
}

func TestImportFailures(t *testing.T) {
	var hits atomic.Int32
	broken := startRegistry(t, func(http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			hits.Add(1)
			http.Error(w, "registry is broken on purpose", http.StatusInternalServerError)
		})
	})
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	down := ln.Addr().String()
	ln.Close()
	recorder := record.NewFakeRecorder(10)
	s := startServer(t, serverOptions{configure: func(c *apiserver.Config) { c.ExtraConfig.Recorder = recorder }})
	ctx := context.Background()

	cases := map[string]struct {
		from   string
		reason string
	}{
		"registry answers 500": {broken.Addr() + "/app:latest", "500"},
		"registry is down":     {down + "/app:latest", "connection refused"},
	}
	for name, tc := range cases {
		t.Run(name, func(t *testing.T) {
			ii := newImport(strings.ReplaceAll(name, " ", "-"), "failing", tc.from)
			ii.Spec.Insecure = ptr.To(true)
			got, err := s.client.TaggerV1beta1().ImageImports(ns).Create(ctx, ii, metav1.CreateOptions{})
			if err != nil {
				t.Fatal(err)
			}
			if n := len(got.Status.ImportAttempts); n != 10 {
				t.Fatalf("%d attempts", n)
			}
			for _, a := range got.Status.ImportAttempts {
				if a.Succeed || !strings.Contains(a.Reason, tc.reason) {
					t.Fatalf("attempt %+v, want a failure mentioning %q", a, tc.reason)
				}
			}
			if c := imported(got); c == nil || c.Status != metav1.ConditionFalse || c.Reason != "NoMoreAttempts" {
				t.Fatalf("condition %+v", c)
			}
			if got.Status.HashReference != nil {
				t.Fatalf("failed import has a reference")
			}
			select {
			case ev := <-recorder.Events:
				if !strings.HasPrefix(ev, "Warning ImportFailed") {
					t.Fatalf("event %q", ev)
				}
			case <-time.After(5 * time.Second):
				t.Fatal("no event")
			}
		})
	}
	if hits.Load() < 10 {
		t.Fatalf("broken registry saw %d requests, want one per attempt at least", hits.Load())
	}
	if _, err := s.client.TaggerV1beta1().Images(ns).Get(ctx, "failing", metav1.GetOptions{}); !apierrors.IsNotFound(err) {
		t.Fatalf("failing imports created the Image: %v", err)
	}
}

func TestImportHistoryDedupeAndCap(t *testing.T) {
	src := startRegistry(t, nil)
	s := startServer(t, serverOptions{})
	ctx := context.Background()
	img := newImage("hist", src.Addr()+"/src/hist:latest")
	img.Spec.Insecure = true
	if _, err := s.client.TaggerV1beta1().Images(ns).Create(ctx, img, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	importOnce := func(name string) *v1beta1.ImageImport {
		t.Helper()
		got, err := s.client.TaggerV1beta1().ImageImports(ns).Create(ctx, newImport(name, "hist", ""), metav1.CreateOptions{})
		if err != nil || got.Status.HashReference == nil {
			t.Fatalf("import %s: %v %+v", name, err, got)
		}
		return got
	}

	first := src.push(t, "src/hist:latest")
	a := importOnce("same-1")
	time.Sleep(1100 * time.Millisecond) // importedAt has second resolution
	b := importOnce("same-2")
	got, err := s.client.TaggerV1beta1().Images(ns).Get(ctx, "hist", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if len(got.Status.HashReferences) != 1 || !strings.HasSuffix(got.Status.HashReferences[0].ImageReference, first.String()) ||
		!got.Status.HashReferences[0].ImportedAt.Equal(&b.Status.HashReference.ImportedAt) || a.Status.HashReference.ImportedAt.Equal(&b.Status.HashReference.ImportedAt) {
		t.Fatalf("re-import of the same digest: %+v", got.Status.HashReferences)
	}

	var digests []string
	for i := 0; i < 26; i++ {
		digests = append(digests, src.push(t, "src/hist:latest").String())
		importOnce(fmt.Sprintf("gen-%d", i))
	}
	got, err = s.client.TaggerV1beta1().Images(ns).Get(ctx, "hist", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	refs := got.Status.HashReferences
	if len(refs) != 25 {
		t.Fatalf("%d generations, want 25", len(refs))
	}
	for i, ref := range refs {
		if want := digests[len(digests)-1-i]; !strings.HasSuffix(ref.ImageReference, want) {
			t.Fatalf("generation %d is %s, want %s (newest first)", i, ref.ImageReference, want)
		}
	}
}

func TestConcurrentImportsLoseNothing(t *testing.T) {
	src := startRegistry(t, nil)
	s := startServer(t, serverOptions{})
	ctx := context.Background()
	const n = 20
	want := map[string]bool{}
	for i := 0; i < n; i++ {
		want[src.Addr()+"/src/many@"+src.push(t, fmt.Sprintf("src/many:t%d", i)).String()] = true
	}
	var wg sync.WaitGroup
	errs := make(chan error, n)
	for i := 0; i < n; i++ {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			ii := newImport(fmt.Sprintf("many-%d", i), "many", fmt.Sprintf("%s/src/many:t%d", src.Addr(), i))
			ii.Spec.Insecure = ptr.To(true)
			got, err := s.client.TaggerV1beta1().ImageImports(ns).Create(ctx, ii, metav1.CreateOptions{})
			if err == nil && got.Status.HashReference == nil {
				err = fmt.Errorf("%s: no reference: %+v", ii.Name, got.Status)
			}
			errs <- err
		}(i)
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	img, err := s.client.TaggerV1beta1().Images(ns).Get(ctx, "many", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	refs := img.Status.HashReferences
	if len(refs) != n {
		t.Fatalf("%d generations, want %d", len(refs), n)
	}
	for _, r := range refs {
		if !want[r.ImageReference] {
			t.Fatalf("unexpected generation %s", r.ImageReference)
		}
		delete(want, r.ImageReference)
	}
	if !sort.SliceIsSorted(refs, func(i, j int) bool { return refs[i].ImportedAt.After(refs[j].ImportedAt.Time) }) {
		t.Fatalf("generations not newest first: %+v", refs)
	}
}

// TestImportOutlivesRequest covers an import slower than the request: the
// create answers Progressing and the outcome lands in the stored status.
func TestImportOutlivesRequest(t *testing.T) {
	g := newGate()
	src := startRegistry(t, g.wrap)
	s := startServer(t, serverOptions{configure: func(c *apiserver.Config) {
		c.ExtraConfig.ImportOptions.SyncTimeout = 300 * time.Millisecond
	}})
	ctx := context.Background()
	digest := src.push(t, "src/slow:latest")
	g.arm()
	ii := newImport("slow-1", "slow", src.Addr()+"/src/slow:latest")
	ii.Spec.Insecure = ptr.To(true)
	got, err := s.client.TaggerV1beta1().ImageImports(ns).Create(ctx, ii, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if c := imported(got); c == nil || c.Status != metav1.ConditionFalse || c.Reason != "Progressing" {
		t.Fatalf("condition %+v", c)
	}
	g.release()
	waitImported(t, s, "slow-1", src.Addr()+"/src/slow@"+digest.String())
}

// TestRestartResumesImport stops the server in the middle of an import: it
// releases the import, and the next server resumes it at once instead of
// leaving it Progressing.
func TestRestartResumesImport(t *testing.T) {
	g := newGate()
	src := startRegistry(t, g.wrap)
	_, etcdConfig := etcd3testing.NewUnsecuredEtcd3TestClientServer(t)
	etcd := etcdConfig.Transport.ServerList
	first := startServer(t, serverOptions{etcd: etcd, configure: func(c *apiserver.Config) {
		c.ExtraConfig.ImportOptions.SyncTimeout = 200 * time.Millisecond
	}})
	ctx := context.Background()
	digest := src.push(t, "src/resume:latest")
	g.arm()
	ii := newImport("resume-1", "resume", src.Addr()+"/src/resume:latest")
	ii.Spec.Insecure = ptr.To(true)
	got, err := first.client.TaggerV1beta1().ImageImports(ns).Create(ctx, ii, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if c := imported(got); c == nil || c.Reason != "Progressing" {
		t.Fatalf("condition %+v", c)
	}
	first.stop()
	g.release()
	// The default ResumeAfter is minutes: only the release makes this quick.
	second := startServer(t, serverOptions{etcd: etcd})
	waitImported(t, second, "resume-1", src.Addr()+"/src/resume@"+digest.String())
}

// TestReplicaKilledMidImport runs two servers on one etcd; the one running
// the imports dies without a word (its claims stay, as after a crash). The
// other takes them over once the claims are stale and finishes each once.
func TestReplicaKilledMidImport(t *testing.T) {
	g := newGate()
	src := startRegistry(t, g.wrap)
	_, etcdConfig := etcd3testing.NewUnsecuredEtcd3TestClientServer(t)
	etcd := etcdConfig.Transport.ServerList
	replica := func(id string) func(*apiserver.Config) {
		return func(c *apiserver.Config) {
			o := &c.ExtraConfig.ImportOptions
			o.Identity, o.SyncTimeout, o.KeepClaimsOnStop = id, 200*time.Millisecond, true
			o.RenewInterval, o.ResumeAfter = 200*time.Millisecond, 2*time.Second
		}
	}
	a := startServer(t, serverOptions{etcd: etcd, configure: replica("a")})
	b := startServer(t, serverOptions{etcd: etcd, configure: replica("b")})
	ctx := context.Background()
	const n = 3
	digests := map[string]string{}
	for i := range n {
		img := fmt.Sprintf("killed-%d", i)
		digests[img] = src.push(t, "src/"+img+":latest").String()
	}
	g.arm()
	for i := range n {
		img := fmt.Sprintf("killed-%d", i)
		ii := newImport(img, img, src.Addr()+"/src/"+img+":latest")
		ii.Spec.Insecure = ptr.To(true)
		got, err := a.client.TaggerV1beta1().ImageImports(ns).Create(ctx, ii, metav1.CreateOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if got.Annotations[v1beta1.AnnotationImportRunner] != "a" {
			t.Fatalf("runner %q", got.Annotations[v1beta1.AnnotationImportRunner])
		}
	}
	// b leaves imports a renews alone.
	time.Sleep(3 * time.Second)
	for i := range n {
		if got := getImport(t, b, fmt.Sprintf("killed-%d", i)); got.Annotations[v1beta1.AnnotationImportRunner] != "a" {
			t.Fatalf("b took over an import a still runs: %v", got.Annotations)
		}
	}
	a.stop()
	g.release()
	for i := range n {
		img := fmt.Sprintf("killed-%d", i)
		waitImported(t, b, img, src.Addr()+"/src/"+img+"@"+digests[img])
		got := getImport(t, b, img)
		if _, claimed := got.Annotations[v1beta1.AnnotationImportRunner]; claimed {
			t.Errorf("finished import still claimed: %v", got.Annotations)
		}
		image, err := b.client.TaggerV1beta1().Images(ns).Get(ctx, img, metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if len(image.Status.HashReferences) != 1 {
			t.Errorf("Image %s has %d generations, want exactly 1: %+v", img, len(image.Status.HashReferences), image.Status.HashReferences)
		}
	}
}

func getImport(t *testing.T, s *testServer, name string) *v1beta1.ImageImport {
	t.Helper()
	ii, err := s.client.TaggerV1beta1().ImageImports(ns).Get(context.Background(), name, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	return ii
}

// waitImported waits until the stored import succeeded with want and the
// Image carries it.
func waitImported(t *testing.T, s *testServer, name, want string) {
	t.Helper()
	ctx := context.Background()
	err := wait.PollUntilContextTimeout(ctx, 50*time.Millisecond, 30*time.Second, true, func(ctx context.Context) (bool, error) {
		ii, err := s.client.TaggerV1beta1().ImageImports(ns).Get(ctx, name, metav1.GetOptions{})
		if err != nil {
			return false, err
		}
		c := imported(ii)
		return c != nil && c.Status == metav1.ConditionTrue, nil
	})
	if err != nil {
		t.Fatalf("import %s did not finish: %v", name, err)
	}
	ii := getImport(t, s, name)
	if ii.Status.HashReference == nil || ii.Status.HashReference.ImageReference != want {
		t.Fatalf("reference %+v, want %s", ii.Status.HashReference, want)
	}
	img, err := s.client.TaggerV1beta1().Images(ns).Get(ctx, ii.Spec.TargetImage, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if len(img.Status.HashReferences) == 0 || img.Status.HashReferences[0].ImageReference != want {
		t.Fatalf("image generations %+v, want %s first", img.Status.HashReferences, want)
	}
}
