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

package transfer

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strconv"
	"testing"
	"testing/iotest"

	"tagger.dev/tagger/pkg/apis/tagger"
	"tagger.dev/tagger/pkg/registryproxy"
)

// pieces records the size of each Write.
type pieces struct {
	bytes.Buffer
	sizes []int
}

func (p *pieces) Write(b []byte) (int, error) {
	p.sizes = append(p.sizes, len(b))
	return p.Buffer.Write(b)
}

func TestRelayBodyWritesFullPieces(t *testing.T) {
	in := bytes.Repeat([]byte("0123456789abcdef"), (3*relayPiece+1000)/16)
	var out pieces
	// The registry's answer arrives a few bytes at a time.
	n, err := relayBody(&out, iotest.HalfReader(bytes.NewReader(in)))
	if err != nil || n != int64(len(in)) || !bytes.Equal(out.Bytes(), in) {
		t.Fatalf("relayed %d bytes (%v), want the %d given", n, err, len(in))
	}
	want := []int{relayPiece, relayPiece, relayPiece, len(in) - 3*relayPiece}
	if len(out.sizes) != len(want) {
		t.Fatalf("writes of %v bytes, want %v", out.sizes, want)
	}
	for i := range want {
		if out.sizes[i] != want[i] {
			t.Fatalf("writes of %v bytes, want %v", out.sizes, want)
		}
	}
}

func TestRelayBodyReportsACut(t *testing.T) {
	cut := errors.New("connection reset")
	in := io.MultiReader(bytes.NewReader(make([]byte, 1000)), iotest.ErrReader(cut))
	var out bytes.Buffer
	n, err := relayBody(&out, in)
	if !errors.Is(err, cut) || n != 1000 || out.Len() != 1000 {
		t.Fatalf("relayed %d bytes, error %v; want what came before the cut, and the cut", n, err)
	}
}

func TestWantsBlobStream(t *testing.T) {
	cases := []struct {
		h    http.Header
		want bool
	}{
		{http.Header{"Connection": {"Upgrade"}, "Upgrade": {"tagger-blob-stream"}}, true},
		{http.Header{"Connection": {"keep-alive, upgrade"}, "Upgrade": {"websocket, Tagger-Blob-Stream"}}, true},
		{http.Header{"Upgrade": {"tagger-blob-stream"}}, false},
		{http.Header{"Connection": {"Upgrade"}, "Upgrade": {"websocket"}}, false},
		{http.Header{}, false},
	}
	for _, tc := range cases {
		if got := wantsBlobStream(tc.h); got != tc.want {
			t.Errorf("%v: %t, want %t", tc.h, got, tc.want)
		}
	}
}

// TestWriteUpgraded: a blob asked for on a connection of its own comes as
// 101 Switching Protocols, then the mirror's answer (status, headers,
// body) as an HTTP/1.1 response.
func TestWriteUpgraded(t *testing.T) {
	blob := bytes.Repeat([]byte("layer"), 200_000)
	mirror := func() *http.Response {
		return &http.Response{
			StatusCode: http.StatusPartialContent,
			Header: http.Header{
				"Content-Length": {strconv.Itoa(len(blob) - 10)}, "Content-Range": {fmt.Sprintf("bytes 10-%d/%d", len(blob)-1, len(blob))},
				"Docker-Content-Digest": {"sha256:x"}, "Set-Cookie": {"secret"},
			},
			Body: io.NopCloser(bytes.NewReader(blob[10:])),
		}
	}
	tr := &transfer{repo: &registryproxy.Repository{}, image: &tagger.Image{}}
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if !tr.writeUpgraded(w, r, mirror()) {
			t.Error("not upgraded")
		}
	}))
	defer srv.Close()
	req, _ := http.NewRequest(http.MethodGet, srv.URL, nil)
	req.Header.Set("Connection", "Upgrade")
	req.Header.Set("Upgrade", registryproxy.BlobStreamProtocol)
	up, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer up.Body.Close()
	if up.StatusCode != http.StatusSwitchingProtocols || up.Header.Get("Upgrade") != registryproxy.BlobStreamProtocol {
		t.Fatalf("answer %s, Upgrade %q", up.Status, up.Header.Get("Upgrade"))
	}
	resp, err := http.ReadResponse(bufio.NewReader(up.Body), req)
	if err != nil {
		t.Fatal(err)
	}
	got, err := io.ReadAll(resp.Body)
	if err != nil || !bytes.Equal(got, blob[10:]) {
		t.Fatalf("body of %d bytes (%v), want %d", len(got), err, len(blob)-10)
	}
	if resp.StatusCode != http.StatusPartialContent || resp.Header.Get("Content-Range") == "" ||
		resp.Header.Get("Docker-Content-Digest") != "sha256:x" || resp.Header.Get("Set-Cookie") != "" {
		t.Errorf("inner answer %s %v", resp.Status, resp.Header)
	}

	// Without a connection to take over (HTTP/2), nothing is written.
	rec := httptest.NewRecorder()
	if tr.writeUpgraded(rec, req, mirror()) || rec.Body.Len() > 0 {
		t.Error("upgraded without a Hijacker")
	}
}
