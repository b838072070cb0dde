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

// Package imagejson writes tagger.dev/v1beta1 Images and ImageLists as
// JSON faster than encoding/json, byte for byte what encoding/json writes.
//
// An Image with a full history is 25 generations of about 270 bytes each:
// nine tenths of a list of Images is history. encoding/json spends most of
// its time there on reflection and on validating and compacting the output
// of the two time fields' MarshalJSON, once per generation; a list of
// 10,000 such Images took it a quarter of a second of CPU before a byte
// left the server. Here the generations are appended directly, and
// everything else (metadata, spec, the rest of the status) still goes
// through encoding/json, so only the history's layout is duplicated, and
// a test holds it to encoding/json's output for random Images.
package imagejson

import (
	"bytes"
	"encoding/json"
	"io"
	"sync"
	"time"
	"unicode/utf8"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"

	taggerv1beta1 "tagger.dev/tagger/pkg/apis/tagger/v1beta1"
)

// NegotiatedSerializer returns ns with its application/json encoder
// writing Images and ImageLists through this package; every other object,
// pretty output, decoding and watch streams stay ns's own.
func NegotiatedSerializer(ns runtime.NegotiatedSerializer) runtime.NegotiatedSerializer {
	infos := append([]runtime.SerializerInfo(nil), ns.SupportedMediaTypes()...)
	for i := range infos {
		if infos[i].MediaType == runtime.ContentTypeJSON && infos[i].Serializer != nil {
			infos[i].Serializer = Serializer{infos[i].Serializer}
		}
	}
	return negotiated{NegotiatedSerializer: ns, infos: infos}
}

type negotiated struct {
	runtime.NegotiatedSerializer
	infos []runtime.SerializerInfo
}

func (n negotiated) SupportedMediaTypes() []runtime.SerializerInfo { return n.infos }

// Serializer encodes Images and ImageLists itself and hands everything
// else to the JSON serializer it wraps. Its Identifier is the wrapped
// one's: the bytes are the same, so cached encodings may be shared.
type Serializer struct {
	runtime.Serializer
}

// Encode writes obj followed by a newline, as the wrapped serializer does.
func (s Serializer) Encode(obj runtime.Object, w io.Writer) error {
	switch o := obj.(type) {
	case *taggerv1beta1.ImageList:
		return write(w, func(e *encoder) error { return e.list(o) })
	case *taggerv1beta1.Image:
		return write(w, func(e *encoder) error { return e.image(o) })
	}
	return s.Serializer.Encode(obj, w)
}

// flushAt is how much output an encoder gathers before writing it: large
// enough that the writer (often gzip) sees few calls, small enough that a
// list of any length does not sit in memory whole.
const flushAt = 256 << 10

var encoders = sync.Pool{New: func() any {
	e := &encoder{buf: make([]byte, 0, flushAt+64<<10)}
	e.json = json.NewEncoder(&e.scratch)
	return e
}}

func write(w io.Writer, f func(*encoder) error) error {
	e := encoders.Get().(*encoder)
	e.w, e.err = w, nil
	e.buf = e.buf[:0]
	err := f(e)
	if err == nil {
		e.buf = append(e.buf, '\n')
		err = e.flush()
	}
	e.w = nil
	if cap(e.buf) <= 4*flushAt {
		encoders.Put(e)
	}
	return err
}

type encoder struct {
	w       io.Writer
	err     error
	buf     []byte
	scratch bytes.Buffer
	json    *json.Encoder
}

func (e *encoder) flush() error {
	if e.err == nil && len(e.buf) > 0 {
		_, e.err = e.w.Write(e.buf)
	}
	e.buf = e.buf[:0]
	return e.err
}

// value appends what encoding/json writes for v (without its newline).
func (e *encoder) value(v any) error {
	e.scratch.Reset()
	if err := e.json.Encode(v); err != nil {
		return err
	}
	b := e.scratch.Bytes()
	e.buf = append(e.buf, b[:len(b)-1]...)
	return nil
}

func (e *encoder) list(l *taggerv1beta1.ImageList) error {
	e.buf = append(e.buf, '{')
	e.typeMeta(&l.TypeMeta)
	e.buf = append(e.buf, `"metadata":`...)
	if err := e.value(&l.ListMeta); err != nil {
		return err
	}
	if l.Items == nil {
		e.buf = append(e.buf, `,"items":null}`...)
		return nil
	}
	e.buf = append(e.buf, `,"items":[`...)
	for i := range l.Items {
		if i > 0 {
			e.buf = append(e.buf, ',')
		}
		if err := e.image(&l.Items[i]); err != nil {
			return err
		}
		if len(e.buf) >= flushAt {
			if err := e.flush(); err != nil {
				return err
			}
		}
	}
	e.buf = append(e.buf, "]}"...)
	return nil
}

func (e *encoder) typeMeta(t *metav1.TypeMeta) {
	if t.Kind != "" {
		e.buf = append(e.buf, `"kind":`...)
		e.buf = appendString(e.buf, t.Kind)
		e.buf = append(e.buf, ',')
	}
	if t.APIVersion != "" {
		e.buf = append(e.buf, `"apiVersion":`...)
		e.buf = appendString(e.buf, t.APIVersion)
		e.buf = append(e.buf, ',')
	}
}

func (e *encoder) image(img *taggerv1beta1.Image) error {
	e.buf = append(e.buf, '{')
	e.typeMeta(&img.TypeMeta)
	e.buf = append(e.buf, `"metadata":`...)
	if err := e.value(&img.ObjectMeta); err != nil {
		return err
	}
	e.buf = append(e.buf, `,"spec":`...)
	if err := e.value(&img.Spec); err != nil {
		return err
	}
	e.buf = append(e.buf, `,"status":{`...)
	history := img.Status.HashReferences
	if len(history) > 0 {
		e.buf = append(e.buf, `"hashReferences":[`...)
		for i := range history {
			if i > 0 {
				e.buf = append(e.buf, ',')
			}
			e.hashReference(&history[i])
		}
		e.buf = append(e.buf, ']')
	}
	// The rest of the status in encoding/json's hands: its object without
	// the braces, after the history (hashReferences is the status's first
	// field).
	rest := img.Status
	rest.HashReferences = nil
	mark := len(e.buf)
	if err := e.value(&rest); err != nil {
		return err
	}
	inner := e.buf[mark+1 : len(e.buf)-1]
	switch {
	case len(inner) == 0:
		e.buf = e.buf[:mark]
	case len(history) > 0:
		e.buf[mark] = ','
		e.buf = e.buf[:len(e.buf)-1]
	default:
		copy(e.buf[mark:], inner)
		e.buf = e.buf[:mark+len(inner)]
	}
	e.buf = append(e.buf, "}}"...)
	return nil
}

func (e *encoder) hashReference(h *taggerv1beta1.HashReference) {
	e.buf = append(e.buf, `{"from":`...)
	e.buf = appendString(e.buf, h.From)
	e.buf = append(e.buf, `,"resolvedAt":`...)
	e.buf = appendTime(e.buf, h.ResolvedAt.Time, true)
	e.buf = append(e.buf, `,"importedAt":`...)
	e.buf = appendTime(e.buf, h.ImportedAt.Time, false)
	e.buf = append(e.buf, `,"imageReference":`...)
	e.buf = appendString(e.buf, h.ImageReference)
	e.buf = append(e.buf, '}')
}

// plain marks the bytes encoding/json writes as they are inside a string:
// printable ASCII but the quote, the backslash and the three it escapes
// for HTML.
var plain = func() (t [utf8.RuneSelf]bool) {
	for c := 0x20; c < utf8.RuneSelf-1; c++ {
		t[c] = true
	}
	for _, c := range `"\<>&` {
		t[c] = false
	}
	return t
}()

func appendString(dst []byte, s string) []byte {
	for i := 0; i < len(s); i++ {
		if c := s[i]; c >= utf8.RuneSelf || !plain[c] {
			// Escapes, invalid UTF-8 and U+2028/U+2029 are rare in an
			// Image: encoding/json decides those.
			b, _ := json.Marshal(s)
			return append(dst, b...)
		}
	}
	dst = append(dst, '"')
	dst = append(dst, s...)
	return append(dst, '"')
}

// appendTime writes t as metav1.Time (seconds) or metav1.MicroTime
// (micro) marshal it: null when zero, else RFC 3339 in UTC.
func appendTime(dst []byte, t time.Time, micro bool) []byte {
	if t.IsZero() {
		return append(dst, "null"...)
	}
	t = t.UTC()
	year, month, day := t.Date()
	if year < 0 || year > 9999 {
		layout := time.RFC3339
		if micro {
			layout = metav1.RFC3339Micro
		}
		dst = append(dst, '"')
		dst = t.AppendFormat(dst, layout)
		return append(dst, '"')
	}
	hour, min, sec := t.Clock()
	dst = append(dst, '"')
	dst = appendDigits(dst, year, 4)
	dst = append(dst, '-')
	dst = appendDigits(dst, int(month), 2)
	dst = append(dst, '-')
	dst = appendDigits(dst, day, 2)
	dst = append(dst, 'T')
	dst = appendDigits(dst, hour, 2)
	dst = append(dst, ':')
	dst = appendDigits(dst, min, 2)
	dst = append(dst, ':')
	dst = appendDigits(dst, sec, 2)
	if micro {
		dst = append(dst, '.')
		dst = appendDigits(dst, t.Nanosecond()/1000, 6)
	}
	return append(dst, 'Z', '"')
}

func appendDigits(dst []byte, v, width int) []byte {
	var b [6]byte
	for i := width - 1; i >= 0; i-- {
		b[i] = byte('0' + v%10)
		v /= 10
	}
	return append(dst, b[:width]...)
}
