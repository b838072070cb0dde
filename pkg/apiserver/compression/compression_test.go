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

package compression

import (
	"bytes"
	"compress/gzip"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"k8s.io/apiserver/pkg/endpoints/request"
)

func TestWithGzip(t *testing.T) {
	big := bytes.Repeat([]byte(`{"from":"registry.example.com/org/app:latest"},`), 8<<10) // 272 KiB
	small := []byte(`{"kind":"Image"}`)
	list := &request.RequestInfo{IsResourceRequest: true, Verb: "list", APIGroup: "tagger.dev", Resource: "images"}
	cases := []struct {
		name   string
		info   *request.RequestInfo
		accept string
		body   []byte
		writes int // the body in this many writes
		status int
		gzip   bool
	}{
		{name: "big list, gzip accepted", info: list, accept: "gzip", body: big, writes: 1, status: 200, gzip: true},
		{name: "big list in small writes", info: list, accept: "deflate, gzip", body: big, writes: 1000, status: 200, gzip: true},
		{name: "big get", info: &request.RequestInfo{IsResourceRequest: true, Verb: "get", Resource: "images"}, accept: "gzip", body: big, writes: 3, status: 200, gzip: true},
		{name: "small list", info: list, accept: "gzip", body: small, writes: 1, status: 200},
		{name: "exactly the threshold", info: list, accept: "gzip", body: big[:threshold], writes: 2, status: 200},
		{name: "big error", info: list, accept: "gzip", body: big, writes: 1, status: 500, gzip: true},
		{name: "gzip not accepted", info: list, accept: "br", body: big, writes: 1, status: 200},
		{name: "no Accept-Encoding", info: list, body: big, writes: 1, status: 200},
		{name: "watch", info: &request.RequestInfo{IsResourceRequest: true, Verb: "watch", Resource: "images"}, accept: "gzip", body: big, writes: 1, status: 200},
		{name: "pull subresource", info: &request.RequestInfo{IsResourceRequest: true, Verb: "get", Resource: "images", Subresource: "pull"}, accept: "gzip", body: big, writes: 1, status: 200},
		{name: "create", info: &request.RequestInfo{IsResourceRequest: true, Verb: "create", Resource: "imageimports"}, accept: "gzip", body: big, writes: 1, status: 201},
		{name: "not a resource", info: &request.RequestInfo{Verb: "get", Path: "/apis"}, accept: "gzip", body: big, writes: 1, status: 200},
		{name: "no request info", accept: "gzip", body: big, writes: 1, status: 200},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			var sawEncoding string
			h := WithGzip(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				sawEncoding = r.Header.Get("Accept-Encoding")
				w.Header().Set("Content-Type", "application/json")
				w.WriteHeader(tc.status)
				step := (len(tc.body) + tc.writes - 1) / tc.writes
				for off := 0; off < len(tc.body); off += step {
					if _, err := w.Write(tc.body[off:min(len(tc.body), off+step)]); err != nil {
						t.Error(err)
					}
				}
			}))
			r := httptest.NewRequest(http.MethodGet, "/apis/tagger.dev/v1beta1/images", nil)
			if tc.accept != "" {
				r.Header.Set("Accept-Encoding", tc.accept)
			}
			if tc.info != nil {
				r = r.WithContext(request.WithRequestInfo(r.Context(), tc.info))
			}
			rec := httptest.NewRecorder()
			h.ServeHTTP(rec, r)

			if rec.Code != tc.status {
				t.Errorf("status %d, want %d", rec.Code, tc.status)
			}
			if ct := rec.Header().Get("Content-Type"); ct != "application/json" {
				t.Errorf("Content-Type %q", ct)
			}
			body := rec.Body.Bytes()
			if got := rec.Header().Get("Content-Encoding"); (got == "gzip") != tc.gzip {
				t.Fatalf("Content-Encoding %q, want gzip: %v", got, tc.gzip)
			}
			if tc.gzip {
				if v := rec.Header().Get("Vary"); v != "Accept-Encoding" {
					t.Errorf("Vary %q", v)
				}
				if sawEncoding != "" {
					t.Errorf("the handler saw Accept-Encoding %q: it would compress too", sawEncoding)
				}
				zr, err := gzip.NewReader(bytes.NewReader(body))
				if err != nil {
					t.Fatal(err)
				}
				if body, err = io.ReadAll(zr); err != nil {
					t.Fatal(err)
				}
				if len(rec.Body.Bytes()) >= len(tc.body)/4 {
					t.Errorf("compressed to %d of %d bytes", rec.Body.Len(), len(tc.body))
				}
			} else if tc.info == nil || tc.info.Verb == "watch" || tc.info.Subresource != "" || tc.info.Verb == "create" || !tc.info.IsResourceRequest {
				if sawEncoding != tc.accept {
					t.Errorf("the handler saw Accept-Encoding %q, want %q: requests not compressed here keep it", sawEncoding, tc.accept)
				}
			}
			if !bytes.Equal(body, tc.body) {
				t.Errorf("body of %d bytes differs from the %d written", len(body), len(tc.body))
			}
		})
	}
}

// A handler that flushes gets what it wrote so far on the wire at once.
func TestFlushSendsHeldBack(t *testing.T) {
	flushed := make(chan struct{})
	srv := httptest.NewServer(func() http.Handler {
		h := WithGzip(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			_, _ = io.WriteString(w, "first line\n")
			w.(http.Flusher).Flush()
			<-flushed
			_, _ = io.WriteString(w, "second line\n")
		}))
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			h.ServeHTTP(w, r.WithContext(request.WithRequestInfo(r.Context(), &request.RequestInfo{IsResourceRequest: true, Verb: "get", Resource: "images"})))
		})
	}())
	defer srv.Close()
	resp, err := http.Get(srv.URL)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	buf := make([]byte, len("first line\n"))
	if _, err := io.ReadFull(resp.Body, buf); err != nil || string(buf) != "first line\n" {
		t.Fatalf("read %q, %v before the handler finished", buf, err)
	}
	close(flushed)
	rest, _ := io.ReadAll(resp.Body)
	if !strings.HasPrefix(string(rest), "second line") {
		t.Fatalf("then %q", rest)
	}
}

// A handler that panics before its answer reached the threshold sends
// nothing of it; one that panics while compressing releases the compressor.
func TestPanicSendsNothingHeldBack(t *testing.T) {
	for _, size := range []int{100, 4 * threshold} {
		h := WithGzip(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			w.WriteHeader(http.StatusOK)
			_, _ = w.Write(bytes.Repeat([]byte("a"), size))
			panic(http.ErrAbortHandler)
		}))
		r := httptest.NewRequest(http.MethodGet, "/apis/tagger.dev/v1beta1/images", nil)
		r.Header.Set("Accept-Encoding", "gzip")
		r = r.WithContext(request.WithRequestInfo(r.Context(), &request.RequestInfo{IsResourceRequest: true, Verb: "list", Resource: "images"}))
		rec := httptest.NewRecorder()
		func() {
			defer func() {
				if recover() == nil {
					t.Errorf("%d bytes: the panic did not reach the caller", size)
				}
			}()
			h.ServeHTTP(rec, r)
		}()
		if size < threshold && rec.Body.Len() != 0 {
			t.Errorf("%d bytes held back, then %d sent after the panic", size, rec.Body.Len())
		}
	}
}
