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
	"bytes"
	"compress/gzip"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"net/http"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/serializer"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/client-go/rest"

	"tagger.dev/tagger/pkg/apis/tagger/install"
	"tagger.dev/tagger/pkg/apis/tagger/v1beta1"
)

// TestLargeListGzipped: a list of Images over the 128 KiB compression
// threshold comes gzipped when asked (once: not gzipped twice), decodes to
// what was written, and is byte for byte what encoding/json writes for it;
// without Accept-Encoding it comes plain; a watch with gzip accepted still
// streams its events one by one.
func TestLargeListGzipped(t *testing.T) {
	s := startServer(t, serverOptions{})
	ctx := context.Background()
	const namespace, count = "biglist", 40
	images := s.client.TaggerV1beta1().Images(namespace)
	base := time.Date(2026, 11, 30, 12, 0, 0, 123456000, time.UTC)
	for i := 0; i < count; i++ {
		from := fmt.Sprintf("registry.example.com/team/app-%02d:latest", i)
		img, err := images.Create(ctx, &v1beta1.Image{ObjectMeta: metav1.ObjectMeta{Name: fmt.Sprintf("app-%02d", i)}, Spec: v1beta1.ImageSpec{From: from}}, metav1.CreateOptions{})
		if err != nil {
			t.Fatal(err)
		}
		for g := 0; g < v1beta1.MaxHashReferences; g++ {
			sum := sha256.Sum256([]byte(fmt.Sprintf("%d/%d", i, g)))
			at := base.Add(-time.Duration(g) * time.Minute)
			img.Status.HashReferences = append(img.Status.HashReferences, v1beta1.HashReference{
				From: from, ResolvedAt: metav1.NewMicroTime(at), ImportedAt: metav1.NewTime(at),
				ImageReference: fmt.Sprintf("registry.example.com/team/app-%02d@sha256:%s", i, hex.EncodeToString(sum[:])),
			})
		}
		if _, err := images.UpdateStatus(ctx, img, metav1.UpdateOptions{}); err != nil {
			t.Fatal(err)
		}
	}

	w, err := images.Watch(ctx, metav1.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer w.Stop()

	// client-go asks for gzip and decompresses.
	list, err := images.List(ctx, metav1.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if len(list.Items) != count {
		t.Fatalf("listed %d Images, want %d", len(list.Items), count)
	}
	for i, img := range list.Items {
		h := img.Status.HashReferences
		if len(h) != v1beta1.MaxHashReferences || !h[3].ResolvedAt.Equal(&metav1.MicroTime{Time: base.Add(-3 * time.Minute)}) || h[0].From != img.Spec.From {
			t.Fatalf("Image %d listed with history %+v", i, h[:1])
		}
	}

	config := rest.CopyConfig(s.config)
	config.DisableCompression = true // the body as the server sent it
	client, err := rest.HTTPClientFor(config)
	if err != nil {
		t.Fatal(err)
	}
	get := func(encoding string) (*http.Response, []byte) {
		req, err := http.NewRequest(http.MethodGet, s.config.Host+"/apis/tagger.dev/v1beta1/namespaces/"+namespace+"/images", nil)
		if err != nil {
			t.Fatal(err)
		}
		req.Header.Set("Accept", "application/json")
		if encoding != "" {
			req.Header.Set("Accept-Encoding", encoding)
		}
		resp, err := client.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		body, err := io.ReadAll(resp.Body)
		if err != nil || resp.StatusCode != http.StatusOK {
			t.Fatalf("GET: %s, %v", resp.Status, err)
		}
		return resp, body
	}
	resp, zipped := get("gzip")
	if ce := resp.Header.Get("Content-Encoding"); ce != "gzip" {
		t.Fatalf("Content-Encoding %q for a %d-Image list, want gzip", ce, count)
	}
	zr, err := gzip.NewReader(bytes.NewReader(zipped))
	if err != nil {
		t.Fatal(err)
	}
	body, err := io.ReadAll(zr)
	if err != nil {
		t.Fatal(err)
	}
	if len(body) < 128<<10 || len(zipped) > len(body)/3 {
		t.Fatalf("%d bytes gzipped to %d", len(body), len(zipped))
	}
	if bytes.HasPrefix(body, []byte{0x1f, 0x8b}) {
		t.Fatal("the list was gzipped twice")
	}
	resp, plain := get("")
	if ce := resp.Header.Get("Content-Encoding"); ce != "" {
		t.Fatalf("Content-Encoding %q without Accept-Encoding", ce)
	}
	if !bytes.Equal(plain, body) {
		t.Fatal("the gzipped list decompresses to other bytes than the plain list")
	}

	// What encoding/json writes for the same list.
	scheme := runtime.NewScheme()
	install.Install(scheme)
	codecs := serializer.NewCodecFactory(scheme)
	var decoded v1beta1.ImageList
	if err := runtime.DecodeInto(codecs.UniversalDeserializer(), body, &decoded); err != nil {
		t.Fatal(err)
	}
	info, _ := runtime.SerializerInfoForMediaType(codecs.SupportedMediaTypes(), runtime.ContentTypeJSON)
	var want bytes.Buffer
	if err := codecs.EncoderForVersion(info.Serializer, v1beta1.SchemeGroupVersion).Encode(&decoded, &want); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(want.Bytes(), body) {
		t.Fatalf("the served list (%d bytes) is not what encoding/json writes for it (%d bytes)", len(body), want.Len())
	}

	// The watch (gzip accepted by client-go) sees a change at once.
	for drained := false; !drained; {
		select {
		case <-w.ResultChan():
		case <-time.After(500 * time.Millisecond):
			drained = true
		}
	}
	img := list.Items[0]
	img.Labels = map[string]string{"changed": "yes"}
	if _, err := images.Update(ctx, &img, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	select {
	case ev := <-w.ResultChan():
		if got, ok := ev.Object.(*v1beta1.Image); ev.Type != watch.Modified || !ok || got.Labels["changed"] != "yes" {
			t.Fatalf("watch event %s %T", ev.Type, ev.Object)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("no watch event for the update")
	}
}
