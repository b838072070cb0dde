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
	"context"
	"fmt"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/rest"
	"k8s.io/utils/ptr"

	"tagger.dev/tagger/pkg/apis/tagger/v1beta1"
	taggerclient "tagger.dev/tagger/pkg/generated/clientset/versioned"
)

// replica starts one more tagger-apiserver on the cluster's etcd, as the
// cluster runs its own but for its port and the given flags, and returns a
// client that talks to it directly (not through the aggregator). A flag
// given as --name=value replaces the cluster's --name=... (so
// --etcd-servers=URL points the replica at another etcd).
func (c *cluster) replica(t *testing.T, name string, flags ...string) (*proc, taggerclient.Interface) {
	t.Helper()
	port, err := freePort()
	if err != nil {
		t.Fatal(err)
	}
	given := map[string]bool{}
	for _, f := range flags {
		if n, _, ok := strings.Cut(f, "="); ok {
			given[n] = true
		}
	}
	args := []string{fmt.Sprintf("--secure-port=%d", port)}
	for _, a := range c.taggerArgs {
		if n, _, ok := strings.Cut(a, "="); !ok || !given[n] {
			args = append(args, a)
		}
	}
	args = append(args, flags...)
	p, err := c.start(name, c.taggerBin, args...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		select {
		case <-p.exited:
		default:
			_ = p.cmd.Process.Kill()
			<-p.exited
		}
	})
	client, err := taggerclient.NewForConfig(&rest.Config{
		Host:            fmt.Sprintf("https://127.0.0.1:%d", port),
		BearerToken:     "admin-token", // authenticated by kube-apiserver's TokenReview
		TLSClientConfig: rest.TLSClientConfig{Insecure: true},
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := waitFor(name+" ready", 60*time.Second, p, func() error {
		_, err := client.Discovery().RESTClient().Get().AbsPath("/readyz").DoRaw(context.Background())
		return err
	}); err != nil {
		t.Fatal(err)
	}
	return p, client
}

// TestReplicaKilledMidImport: two replicas on one etcd; the one running
// three imports is killed (SIGKILL) while its registry requests hang. The
// other takes each import over once its claim is stale and finishes it:
// every import is recorded once in its Image's history.
func TestReplicaKilledMidImport(t *testing.T) {
	c := needCluster(t)
	var hold atomic.Bool
	release := make(chan struct{})
	src := startRegistry(t, registryOptions{wrap: func(next http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			// Tagger's requests, not the test's own pushes.
			if hold.Load() && strings.Contains(r.URL.Path, "/manifests/") && !strings.Contains(r.UserAgent(), "go-containerregistry") {
				select {
				case <-release:
				case <-r.Context().Done():
					return
				}
			}
			next.ServeHTTP(w, r)
		})
	}})
	ns := c.namespace(t, "replicas")
	fast := []string{"--import-renew-interval=500ms", "--import-resume-after=3s", "--import-sync-timeout=1s"}
	doomed, b := c.replica(t, "tagger-doomed", append([]string{"--import-identity=doomed"}, fast...)...)
	_, survivor := c.replica(t, "tagger-survivor", append([]string{"--import-identity=survivor"}, fast...)...)

	ctx := context.Background()
	const n = 3
	want := map[string]string{}
	for i := range n {
		img := fmt.Sprintf("app-%d", i)
		want[img] = src.Addr() + "/org/" + img + "@" + src.push(t, "org/"+img+":v1").String()
	}
	hold.Store(true)
	for i := range n {
		img := fmt.Sprintf("app-%d", i)
		got, err := b.TaggerV1beta1().ImageImports(ns).Create(ctx, &v1beta1.ImageImport{
			ObjectMeta: metav1.ObjectMeta{Name: img},
			Spec:       v1beta1.ImageImportSpec{TargetImage: img, From: src.Addr() + "/org/" + img + ":v1", Insecure: ptr.To(true)},
		}, metav1.CreateOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if r := got.Annotations[v1beta1.AnnotationImportRunner]; r != "doomed" {
			t.Fatalf("%s run by %q", img, r)
		}
	}
	// While the doomed replica renews its claims, the survivor keeps off.
	time.Sleep(4 * time.Second)
	for i := range n {
		got, err := survivor.TaggerV1beta1().ImageImports(ns).Get(ctx, fmt.Sprintf("app-%d", i), metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if r := got.Annotations[v1beta1.AnnotationImportRunner]; r != "doomed" {
			t.Fatalf("claim moved to %q while its runner was alive", r)
		}
	}
	if err := doomed.cmd.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	<-doomed.exited
	close(release)

	for i := range n {
		img := fmt.Sprintf("app-%d", i)
		eventually(t, 60*time.Second, func() error {
			got, err := survivor.TaggerV1beta1().ImageImports(ns).Get(ctx, img, metav1.GetOptions{})
			if err != nil {
				return err
			}
			if c := meta.FindStatusCondition(got.Status.Conditions, v1beta1.ConditionImported); c == nil || c.Status != metav1.ConditionTrue {
				return fmt.Errorf("%s: %+v", img, got.Status.Conditions)
			}
			if _, claimed := got.Annotations[v1beta1.AnnotationImportRunner]; claimed {
				return fmt.Errorf("%s still claimed: %v", img, got.Annotations)
			}
			return nil
		})
		image := c.getImage(t, ns, img)
		if len(image.Status.HashReferences) != 1 || image.Status.HashReferences[0].ImageReference != want[img] {
			t.Errorf("Image %s history %+v, want exactly %s", img, image.Status.HashReferences, want[img])
		}
	}
}
