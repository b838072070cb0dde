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
	"bufio"
	"bytes"
	"context"
	"fmt"
	"io"
	"net/http"
	"path/filepath"
	"strings"
	"testing"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/opencontainers/go-digest"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"

	"tagger.dev/tagger/pkg/imagecopy/imagecopytest"
	"tagger.dev/tagger/pkg/registryproxy"
)

// TestPullBlobStream: through kube-apiserver's aggregator, a blob asked
// for on a connection of its own (what kubectl image pull does) comes
// after 101 Switching Protocols, whole or from a Range, never compressed;
// the upgraded request is authorized like any pull; an ordinary request
// is answered as before, uncompressed even when gzip is welcome.
func TestPullBlobStream(t *testing.T) {
	c := needCluster(t)
	c.needPlugin(t, "kubectl-image")
	ns := c.namespace(t, "pull-stream")
	mirror := startRegistry(t, registryOptions{})
	c.ownMirror(t, ns, mirror)
	c.mustKubectl(t, "admin", "", "create", "rolebinding", "alice-view", "-n", ns, "--clusterrole=view", "--user=alice")
	img, err := imagecopytest.Image(1, 1<<20, v1.Platform{OS: "linux", Architecture: "amd64"})
	if err != nil {
		t.Fatal(err)
	}
	in := filepath.Join(t.TempDir(), "app.tar")
	if _, err := imagecopytest.WriteOCIArchive(in, img); err != nil {
		t.Fatal(err)
	}
	c.mustPlugin(t, "admin", "push", "-n", ns, "app", "oci-archive:"+in)
	layers, err := img.Layers()
	if err != nil {
		t.Fatal(err)
	}
	ld, err := layers[0].Digest()
	if err != nil {
		t.Fatal(err)
	}
	size, err := layers[0].Size()
	if err != nil {
		t.Fatal(err)
	}

	cfg, err := clientcmd.BuildConfigFromFlags("", c.kubeconfig)
	if err != nil {
		t.Fatal(err)
	}
	cfg.NextProtos = []string{"http/1.1"} // an upgrade needs HTTP/1.1
	cfg.DisableCompression = true         // see Content-Encoding as sent
	get := func(user string, header http.Header) *http.Response {
		t.Helper()
		cfg := rest.CopyConfig(cfg)
		cfg.BearerToken = user + "-token"
		rt, err := rest.TransportFor(cfg)
		if err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		t.Cleanup(cancel)
		u := fmt.Sprintf("%s/apis/tagger.dev/v1beta1/namespaces/%s/images/app/pull/blobs/%s?method=GET", c.apiserver, ns, ld)
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
		req.Header = header
		req.Header.Set("Accept-Encoding", "gzip")
		resp, err := rt.RoundTrip(req)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = resp.Body.Close() })
		if resp.StatusCode != http.StatusSwitchingProtocols {
			return resp
		}
		if got := resp.Header.Get("Upgrade"); got != registryproxy.BlobStreamProtocol {
			t.Fatalf("switched to %q", got)
		}
		inner, err := http.ReadResponse(bufio.NewReader(resp.Body), req)
		if err != nil {
			t.Fatal(err)
		}
		inner.Header.Set("Test-Upgraded", "true")
		return inner
	}
	check := func(what string, resp *http.Response, upgraded bool, status int, from int64) {
		t.Helper()
		if got := resp.Header.Get("Test-Upgraded") == "true"; got != upgraded || resp.StatusCode != status {
			t.Fatalf("%s: %s, upgraded %t; want %d, upgraded %t", what, resp.Status, got, status, upgraded)
		}
		if ce := resp.Header.Get("Content-Encoding"); ce != "" {
			t.Errorf("%s: Content-Encoding %q", what, ce)
		}
		body, err := io.ReadAll(resp.Body)
		if err != nil {
			t.Fatalf("%s: %v", what, err)
		}
		if int64(len(body)) != size-from {
			t.Fatalf("%s: %d bytes, want %d", what, len(body), size-from)
		}
		if from == 0 && digest.FromBytes(body).String() != ld.String() {
			t.Errorf("%s: body of digest %s, want %s", what, digest.FromBytes(body), ld)
		}
	}
	stream := func() http.Header {
		return http.Header{"Connection": {"Upgrade"}, "Upgrade": {registryproxy.BlobStreamProtocol}}
	}

	check("upgraded", get("admin", stream()), true, http.StatusOK, 0)
	ranged := stream()
	ranged.Set("Range", "bytes=100-")
	resp := get("admin", ranged)
	if cr := resp.Header.Get("Content-Range"); !strings.HasPrefix(cr, "bytes 100-") {
		t.Errorf("Content-Range %q, want bytes 100-...", cr)
	}
	check("upgraded from byte 100", resp, true, http.StatusPartialContent, 100)
	check("ordinary", get("admin", http.Header{}), false, http.StatusOK, 0)

	// alice may read the Image but not pull it, upgraded or not.
	for _, h := range []http.Header{stream(), {}} {
		resp := get("alice", h)
		body, _ := io.ReadAll(resp.Body)
		if resp.StatusCode != http.StatusForbidden || !bytes.Contains(body, []byte("images/pull")) {
			t.Errorf("alice's pull (%v): %s %s", h, resp.Status, body)
		}
	}
}
