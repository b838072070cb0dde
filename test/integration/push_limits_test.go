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
	"io"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/opencontainers/go-digest"

	"tagger.dev/tagger/pkg/apiserver"
)

// startUpload opens an upload session of Image name through images/push
// and returns its path below the subresource.
func startUpload(t *testing.T, s *testServer, name string) string {
	t.Helper()
	resp := raw(t, s, name, "push", "POST", "blobs/uploads/", nil)
	if resp.StatusCode != http.StatusAccepted {
		b, _ := io.ReadAll(resp.Body)
		t.Fatalf("start upload: %s %s", resp.Status, b)
	}
	return strings.TrimPrefix(resp.Header.Get("Location"), "/apis/tagger.dev/v1beta1/namespaces/"+ns+"/images/"+name+"/push/")
}

// Every byte of an upload counts towards --max-push-bytes: the body of the
// final PUT adds to what PATCH requests sent before it, and a blob that
// would exceed the limit is refused before the mirror stores it.
func TestPushLimitCountsEveryByteOfAnUpload(t *testing.T) {
	mirror := startRegistry(t, nil)
	const limit = 100 << 10
	s := startServer(t, serverOptions{mirror: mirror.Addr(), configure: func(c *apiserver.Config) { c.ExtraConfig.MaxPushBytes = limit }})

	part := bytes.Repeat([]byte("x"), limit-10)
	whole := append(append([]byte{}, part...), part...) // 2×limit - 20 bytes
	d := digest.FromBytes(whole)

	// PATCH just under the limit, then PUT as much again.
	session := startUpload(t, s, "app")
	resp := raw(t, s, "app", "push", "PATCH", session, bytes.NewReader(part))
	if resp.StatusCode != http.StatusAccepted {
		t.Fatalf("first PATCH under the limit: %s", resp.Status)
	}
	next := strings.TrimPrefix(resp.Header.Get("Location"), "/apis/tagger.dev/v1beta1/namespaces/"+ns+"/images/app/push/")
	resp = raw(t, s, "app", "push", "PUT", next+"&digest="+d.String(), bytes.NewReader(part))
	if b, _ := io.ReadAll(resp.Body); resp.StatusCode != http.StatusRequestEntityTooLarge || !strings.Contains(string(b), "may not exceed") {
		t.Fatalf("PUT that takes the upload over the limit: %s %s", resp.Status, b)
	}
	if _, err := mirror.head(ns + "/app@" + d.String()); err == nil {
		t.Fatal("the mirror stored a blob over --max-push-bytes")
	}

	// Two PATCHes that together pass the limit: the second is refused.
	session = startUpload(t, s, "app")
	resp = raw(t, s, "app", "push", "PATCH", session, bytes.NewReader(part))
	next = strings.TrimPrefix(resp.Header.Get("Location"), "/apis/tagger.dev/v1beta1/namespaces/"+ns+"/images/app/push/")
	resp = raw(t, s, "app", "push", "PATCH", next, bytes.NewReader(part))
	if resp.StatusCode != http.StatusRequestEntityTooLarge {
		t.Fatalf("second PATCH over the limit: %s", resp.Status)
	}

	// Exactly the limit, in two parts, is accepted.
	exact := bytes.Repeat([]byte("y"), limit)
	d = digest.FromBytes(exact)
	session = startUpload(t, s, "app")
	resp = raw(t, s, "app", "push", "PATCH", session, bytes.NewReader(exact[:limit/2]))
	next = strings.TrimPrefix(resp.Header.Get("Location"), "/apis/tagger.dev/v1beta1/namespaces/"+ns+"/images/app/push/")
	resp = raw(t, s, "app", "push", "PUT", next+"&digest="+d.String(), bytes.NewReader(exact[limit/2:]))
	if b, _ := io.ReadAll(resp.Body); resp.StatusCode != http.StatusCreated {
		t.Fatalf("upload of exactly the limit: %s %s", resp.Status, b)
	}
}

// A push to an Image name that is not valid is refused with 422 before
// anything reaches the mirror: no upload session, no blob, no manifest,
// no tag.
func TestPushValidatesBeforeTouchingTheMirror(t *testing.T) {
	var requests atomic.Int64
	mirror := startRegistry(t, func(next http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if r.URL.Path != "/v2/" {
				requests.Add(1)
			}
			next.ServeHTTP(w, r)
		})
	})
	s := startServer(t, serverOptions{mirror: mirror.Addr()})
	manifest := `{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a","size":2},"layers":[]}`
	for _, name := range []string{"a_b", "UPPER", "-a", strings.Repeat("a", 128)} {
		for _, c := range []struct{ method, path, body string }{
			{"POST", "blobs/uploads/", ""},
			{"HEAD", "blobs/sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a", ""},
			{"PUT", "manifests/latest", manifest},
		} {
			resp := raw(t, s, name, "push", c.method, c.path, strings.NewReader(c.body))
			b, _ := io.ReadAll(resp.Body)
			if resp.StatusCode != http.StatusUnprocessableEntity || !strings.Contains(string(b), "metadata.name") {
				t.Errorf("push %s %s to Image %q: %s %s, want 422 naming metadata.name", c.method, c.path, name, resp.Status, b)
			}
		}
	}
	if n := requests.Load(); n != 0 {
		t.Fatalf("the mirror got %d requests for invalid Image names", n)
	}
}
