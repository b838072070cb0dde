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

package bench

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"net/http"
	"os"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/v1/random"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/rest"

	taggerv1beta1 "tagger.dev/tagger/pkg/apis/tagger/v1beta1"
)

// The scale benchmark: TAGGER_BENCH_IMAGES Images (10,000 by default) in
// namespace "scale", each with a full history of 25 generations, listed
// whole (JSON, and the Table kubectl asks for) and by a 500-item page with
// a plain HTTP client, next to `kubectl get img`; then 100 concurrent
// imports into 10 Images.

const scaleNamespace = "scale"

var (
	scaleOnce  sync.Once
	scaleErr   error
	scaleCount int
)

func scaleImages() int {
	if n, err := strconv.Atoi(os.Getenv("TAGGER_BENCH_IMAGES")); err == nil && n > 0 {
		return n
	}
	return 10000
}

// fillScale creates the Images and writes their histories, 16 at a time.
func fillScale(f *transferFixture, n int) error {
	ctx := context.Background()
	images := f.client.TaggerV1beta1().Images(scaleNamespace)
	work := make(chan int)
	errs := make(chan error, 16)
	var wg sync.WaitGroup
	base := time.Now().Add(-time.Hour).UTC()
	for w := 0; w < 16; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range work {
				img := &taggerv1beta1.Image{
					ObjectMeta: metav1.ObjectMeta{Name: fmt.Sprintf("app-%05d", i), Labels: map[string]string{"team": fmt.Sprintf("t%d", i%20)}},
					Spec:       taggerv1beta1.ImageSpec{From: fmt.Sprintf("registry.example.com/team-%d/app-%05d:latest", i%20, i)},
				}
				created, err := images.Create(ctx, img, metav1.CreateOptions{})
				if err != nil {
					errs <- err
					return
				}
				for g := 0; g < taggerv1beta1.MaxHashReferences; g++ {
					sum := sha256.Sum256([]byte(fmt.Sprintf("%d/%d", i, g)))
					at := base.Add(-time.Duration(g) * time.Minute)
					created.Status.HashReferences = append(created.Status.HashReferences, taggerv1beta1.HashReference{
						From:           img.Spec.From,
						ResolvedAt:     metav1.NewMicroTime(at),
						ImportedAt:     metav1.NewTime(at),
						ImageReference: fmt.Sprintf("registry.example.com/team-%d/app-%05d@sha256:%s", i%20, i, hex.EncodeToString(sum[:])),
					})
				}
				if _, err := images.UpdateStatus(ctx, created, metav1.UpdateOptions{}); err != nil {
					errs <- err
					return
				}
			}
		}()
	}
	var sendErr error
	for i := 0; i < n && sendErr == nil; i++ {
		select {
		case work <- i:
		case sendErr = <-errs:
		}
	}
	close(work)
	wg.Wait()
	if sendErr != nil {
		return sendErr
	}
	select {
	case err := <-errs:
		return err
	default:
	}
	return nil
}

// get fetches path with a plain HTTP client and returns the body size.
// With encoding set the client asks for it itself, so the Go transport
// hands over the body as the server wrote it, without decompressing it.
func get(client *http.Client, host, path, accept, encoding string) (int64, error) {
	req, err := http.NewRequest(http.MethodGet, host+path, nil)
	if err != nil {
		return 0, err
	}
	req.Header.Set("Accept", accept)
	if encoding != "" {
		req.Header.Set("Accept-Encoding", encoding)
	}
	resp, err := client.Do(req)
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	n, err := io.Copy(io.Discard, resp.Body)
	if err == nil && resp.StatusCode != http.StatusOK {
		err = fmt.Errorf("GET %s: %s", path, resp.Status)
	}
	return n, err
}

const tableAccept = "application/json;as=Table;v=v1;g=meta.k8s.io,application/json;as=Table;v=v1beta1;g=meta.k8s.io,application/json"

func BenchmarkScaleList(b *testing.B) {
	f := getTransfer(b)
	scaleOnce.Do(func() {
		scaleCount = scaleImages()
		start := time.Now()
		scaleErr = fillScale(f, scaleCount)
		b.Logf("%d Images with %d generations each written in %s", scaleCount, taggerv1beta1.MaxHashReferences, time.Since(start).Round(time.Millisecond))
	})
	if scaleErr != nil {
		b.Fatal(scaleErr)
	}
	client, err := rest.HTTPClientFor(f.rest)
	if err != nil {
		b.Fatal(err)
	}
	// Like kubectl, client carries Accept-Encoding: gzip (Go adds it), and
	// the server compresses lists over 128 KiB; identity does not ask.
	identityConfig := rest.CopyConfig(f.rest)
	identityConfig.DisableCompression = true
	identity, err := rest.HTTPClientFor(identityConfig)
	if err != nil {
		b.Fatal(err)
	}
	path := "/apis/tagger.dev/v1beta1/namespaces/" + scaleNamespace + "/images"
	// The whole list is checked once: every Image, every generation.
	var list taggerv1beta1.ImageList
	if err := f.client.TaggerV1beta1().RESTClient().Get().AbsPath(path).Do(context.Background()).Into(&list); err != nil {
		b.Fatal(err)
	}
	if len(list.Items) != scaleCount || len(list.Items[0].Status.HashReferences) != taggerv1beta1.MaxHashReferences {
		b.Fatalf("listed %d Images (%d generations in the first), want %d with %d", len(list.Items), len(list.Items[0].Status.HashReferences), scaleCount, taggerv1beta1.MaxHashReferences)
	}
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		// The server's answer as kubectl asks for it (gzip), to its last
		// byte, the client not decompressing: the goal's measure.
		measure(b, "scale/list-json", func() error {
			n, err := get(identity, f.rest.Host, path, "application/json", "gzip")
			record("scale/list-gzip-bytes", time.Duration(n))
			return err
		})
		// The same through Go's transport, which asks for gzip and
		// decompresses on the client's side, as client-go and kubectl do.
		measure(b, "scale/list-json-decompressed", func() error {
			n, err := get(client, f.rest.Host, path, "application/json", "")
			record("scale/list-bytes", time.Duration(n))
			return err
		})
		measure(b, "scale/list-json-uncompressed", func() error {
			_, err := get(identity, f.rest.Host, path, "application/json", "")
			return err
		})
		measure(b, "scale/list-table", func() error {
			_, err := get(identity, f.rest.Host, path, tableAccept, "gzip")
			return err
		})
		measure(b, "scale/page-500", func() error {
			_, err := get(identity, f.rest.Host, path+"?limit=500", "application/json", "gzip")
			return err
		})
		measure(b, "scale/page-500-decompressed", func() error {
			_, err := get(client, f.rest.Host, path+"?limit=500", "application/json", "")
			return err
		})
		measure(b, "scale/page-500-uncompressed", func() error {
			_, err := get(identity, f.rest.Host, path+"?limit=500", "application/json", "")
			return err
		})
		measure(b, "scale/list-table-uncompressed", func() error {
			_, err := get(identity, f.rest.Host, path, tableAccept, "")
			return err
		})
	}
	b.StopTimer()
	if lookTool("kubectl") == "" {
		skipped("scale/kubectl-get-img", "kubectl not on PATH")
		return
	}
	measure(b, "scale/kubectl-get-img", func() error {
		_, err := kubectl(f, "", "get", "images.tagger.dev", "-n", scaleNamespace)
		return err
	})
}

// BenchmarkConcurrentImports: 100 imports without mirror, all at once, into
// 10 Images, each import a different digest; every Image must end with
// exactly its 10 generations, each once.
func BenchmarkConcurrentImports(b *testing.B) {
	f := getTransfer(b)
	src := getFixture(b)
	const imports, images = 100, 10
	digests := make([]string, imports)
	for i := range digests {
		img, err := random.Image(256, 1)
		if err != nil {
			b.Fatal(err)
		}
		ref, err := name.NewTag(fmt.Sprintf("%s/bench/conc:t%d", src.src.Addr(), i))
		if err != nil {
			b.Fatal(err)
		}
		if err := remote.Write(ref, img); err != nil {
			b.Fatal(err)
		}
		d, _ := img.Digest()
		digests[i] = d.String()
	}
	ctx := context.Background()
	b.ResetTimer()
	for n := 0; n < b.N; n++ {
		prefix := fmt.Sprintf("conc-%d-%d-%d", runID, b.N, n)
		lat := make([]time.Duration, imports)
		errs := make([]error, imports)
		var wg sync.WaitGroup
		start := time.Now()
		for i := 0; i < imports; i++ {
			wg.Add(1)
			go func(i int) {
				defer wg.Done()
				t := time.Now()
				_, errs[i] = clientImport(ctx, f, fmt.Sprintf("%s-%d", prefix, i%images), fmt.Sprintf("%s/bench/conc:t%d", src.src.Addr(), i), false)
				lat[i] = time.Since(t)
			}(i)
		}
		wg.Wait()
		record("scale/concurrent-wall", time.Since(start))
		for _, err := range errs {
			if err != nil {
				b.Fatal(err)
			}
		}
		record("scale/concurrent-all", lat...)
		for k := 0; k < images; k++ {
			img, err := f.client.TaggerV1beta1().Images("default").Get(ctx, fmt.Sprintf("%s-%d", prefix, k), metav1.GetOptions{})
			if err != nil {
				b.Fatal(err)
			}
			seen := map[string]int{}
			for _, r := range img.Status.HashReferences {
				seen[r.ImageReference]++
			}
			for i := k; i < imports; i += images {
				ref := fmt.Sprintf("%s/bench/conc@%s", src.src.Addr(), digests[i])
				if seen[ref] != 1 {
					b.Errorf("Image %s has generation %s %d times, want once", img.Name, ref, seen[ref])
				}
			}
			if len(img.Status.HashReferences) != imports/images {
				b.Errorf("Image %s has %d generations, want %d", img.Name, len(img.Status.HashReferences), imports/images)
			}
		}
	}
	results.Lock()
	all := results.times["scale/concurrent-all"]
	results.Unlock()
	results.Lock()
	results.times["scale/concurrent-p50"] = []time.Duration{quantile(all, 0.5)}
	results.times["scale/concurrent-p99"] = []time.Duration{quantile(all, 0.99)}
	results.Unlock()
}
