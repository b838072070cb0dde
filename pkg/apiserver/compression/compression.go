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

// Package compression gzips the API server's get and list answers faster
// than the generic API server does.
//
// k8s.io/apiserver compresses every answer over 128 KiB that a client
// accepts gzipped (client-go and kubectl always do) with compress/gzip at
// level 1, in the goroutine that encodes the answer. For a list of 10,000
// Images with full histories, 69 MiB of JSON, that took 270 ms of the
// 320 ms the server needed on this project's 2-core machines. The same
// level of github.com/klauspost/compress takes 107 ms, and its pgzip
// takes 58 ms: it compresses blocks of 256 KiB on other goroutines (each
// primed with the previous block's tail, so the output is as small) while
// the answer is still being encoded. The filter makes the same decision
// the generic server makes (feature gate, the client's Accept-Encoding,
// 128 KiB) and hides Accept-Encoding from it, so that only one of the two
// compresses. Watches, subresources (push and pull stream blobs) and every
// other verb are left to the generic server.
package compression

import (
	"io"
	"net/http"
	"sync"

	gzip "github.com/klauspost/pgzip"
	"k8s.io/apiserver/pkg/endpoints/handlers/responsewriters"
	"k8s.io/apiserver/pkg/endpoints/request"
	"k8s.io/apiserver/pkg/features"
)

// threshold is the generic API server's: smaller answers go as they are.
const threshold = 128 << 10

// level is the generic API server's too: least CPU for nearly the ratio
// of the higher levels.
const level = gzip.BestSpeed

// Two blocks of 256 KiB in flight keep both cores of a small control
// plane node busy and hold about a megabyte per answer being compressed.
const (
	blockSize = 256 << 10
	blocks    = 2
)

var writers = sync.Pool{New: func() any {
	w, _ := gzip.NewWriterLevel(nil, level)
	_ = w.SetConcurrency(blockSize, blocks)
	return w
}}

// WithGzip compresses what handler answers to get and list requests of
// resources (not subresources) that the client accepts gzipped. It must
// run inside the generic filters: it reads the RequestInfo they set.
func WithGzip(handler http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		info, ok := request.RequestInfoFrom(r.Context())
		if !ok || !info.IsResourceRequest || info.Subresource != "" || (info.Verb != "get" && info.Verb != "list") ||
			responsewriters.ContentEncodingSupported(r, features.APIResponseCompression) != "gzip" {
			handler.ServeHTTP(w, r)
			return
		}
		r = r.Clone(r.Context())
		r.Header.Del("Accept-Encoding")
		cw := &writer{ResponseWriter: w}
		defer cw.abandon()
		handler.ServeHTTP(cw, r)
		cw.close()
	})
}

// writer holds the answer back until it is known to be over threshold
// (then gzips it) or complete (then sends it as it is).
type writer struct {
	http.ResponseWriter
	status  int
	buf     []byte
	decided bool
	out     io.Writer
	gz      *gzip.Writer
}

func (w *writer) WriteHeader(status int) {
	if w.decided {
		w.ResponseWriter.WriteHeader(status)
		return
	}
	if w.status == 0 {
		w.status = status
	}
}

func (w *writer) Write(p []byte) (int, error) {
	if w.decided {
		return w.out.Write(p)
	}
	if len(w.buf)+len(p) <= threshold {
		w.buf = append(w.buf, p...)
		return len(p), nil
	}
	w.decide(true)
	if len(w.buf) > 0 {
		if _, err := w.out.Write(w.buf); err != nil {
			return 0, err
		}
		w.buf = nil
	}
	return w.out.Write(p)
}

// decide sends the header, gzipped or not, and sets where the body goes.
func (w *writer) decide(compress bool) {
	w.decided = true
	h := w.Header()
	w.out = w.ResponseWriter
	if compress {
		h.Set("Content-Encoding", "gzip")
		h.Add("Vary", "Accept-Encoding")
		h.Del("Content-Length")
		w.gz = writers.Get().(*gzip.Writer)
		w.gz.Reset(w.ResponseWriter)
		w.out = w.gz
	}
	if w.status != 0 {
		w.ResponseWriter.WriteHeader(w.status)
	}
}

// Flush sends what is held back: a handler that flushes streams.
func (w *writer) Flush() {
	if !w.decided {
		w.decide(false)
		if len(w.buf) > 0 {
			_, _ = w.out.Write(w.buf)
			w.buf = nil
		}
	}
	if w.gz != nil {
		_ = w.gz.Flush()
	}
	if f, ok := w.ResponseWriter.(http.Flusher); ok {
		f.Flush()
	}
}

// Unwrap lets http.ResponseController reach the connection's writer.
func (w *writer) Unwrap() http.ResponseWriter { return w.ResponseWriter }

// abandon stops the compressor's goroutines if the handler panicked; what
// was held back stays unsent.
func (w *writer) abandon() {
	if w.gz != nil {
		_ = w.gz.Close()
		w.gz = nil
	}
}

func (w *writer) close() {
	if !w.decided {
		if w.status == 0 && len(w.buf) == 0 {
			return // nothing was answered here: leave it to whoever wraps us
		}
		w.decide(false)
		if len(w.buf) > 0 {
			_, _ = w.out.Write(w.buf)
		}
		return
	}
	if w.gz != nil {
		_ = w.gz.Close()
		w.gz.Reset(nil)
		writers.Put(w.gz)
		w.gz = nil
	}
}
