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

package redact

import (
	"encoding/base64"
	"errors"
	"fmt"
	"net/url"
	"strings"
	"testing"
	"unicode/utf8"

	"tagger.dev/tagger/pkg/apis/tagger"
)

func b64(s string) string { return base64.StdEncoding.EncodeToString([]byte(s)) }

func TestMessage(t *testing.T) {
	const pass = "s3cr3t-Pa55"
	for _, tc := range []struct {
		name    string
		in      string
		secrets []string
		want    string   // exact result, when set
		gone    []string // must not appear
		kept    []string // must appear
	}{
		{name: "plain text unchanged", in: "resolving quay.io/org/app:v1: manifest unknown", want: "resolving quay.io/org/app:v1: manifest unknown"},
		{name: "digest reference unchanged", in: "mirror 127.0.0.1:5000/ns/app@sha256:abcd and nginx@sha256:0123 done", want: "mirror 127.0.0.1:5000/ns/app@sha256:abcd and nginx@sha256:0123 done"},
		{name: "secret", in: "registry said: bad password " + pass + "!", secrets: []string{pass}, want: "registry said: bad password <redacted>!"},
		{name: "secret base64", in: "echo: " + b64(pass), secrets: []string{pass}, gone: []string{b64(pass)}},
		{name: "basic-auth pair", in: "Authorization: Basic " + b64("alice:"+pass), secrets: []string{"alice:" + pass}, gone: []string{b64("alice:" + pass)}},
		{name: "secret URL-escaped", in: "https://x/?p=" + url.QueryEscape("a b&c/d"), secrets: []string{"a b&c/d"}, gone: []string{"a+b%26c%2Fd"}},
		{name: "short secret ignored", in: "open a file", secrets: []string{"p", "op"}, want: "open a file"},
		{name: "longest secret first", in: "tok-abcdef-long", secrets: []string{"tok-abcdef", "tok-abcdef-long"}, want: "<redacted>"},
		{name: "URL userinfo", in: `Get "https://bob:` + pass + `@registry.example.com:5000/v2/": EOF`, want: `Get "https://registry.example.com:5000/v2/": EOF`},
		{name: "URL user only", in: "pinging http://bob@10.0.0.1/v2/ failed", want: "pinging http://10.0.0.1/v2/ failed"},
		{name: "URL userinfo with @ in password", in: "https://bob:p@ss@host.example/x", want: "https://host.example/x"},
		{name: "host userinfo", in: "mirror bob:" + pass + "@registry.example.com/ns/app refused", want: "mirror registry.example.com/ns/app refused"},
		{name: "host user only", in: "address=bob@127.0.0.1:5000", want: "address=127.0.0.1:5000"},
		{name: "host userinfo localhost", in: "(u:p1234@localhost:5000)", want: "(localhost:5000)"},
		{name: "upload _state", in: `Put "http://127.0.0.1:5000/v2/app/blobs/uploads/5e1f?_state=eyJOYW1lIjoiYXBwIn0%3D&digest=sha256%3Aab": EOF`,
			want: `Put "http://127.0.0.1:5000/v2/app/blobs/uploads/5e1f?<redacted>": EOF`},
		{name: "S3 presigned", in: "redirected to https://bucket.s3.amazonaws.com/blob?X-Amz-Algorithm=AWS4&X-Amz-Credential=AKIA%2F&X-Amz-Signature=deadbeef&X-Amz-Expires=300.",
			want: "redirected to https://bucket.s3.amazonaws.com/blob?<redacted>."},
		{name: "CDN signature", in: "https://cdn.example/b?Expires=1&Signature=abc&Key-Pair-Id=K", gone: []string{"Signature=abc", "Key-Pair-Id"}},
		{name: "fragment", in: "https://h.example/p#access_token=zzz", want: "https://h.example/p?<redacted>"},
		{name: "relative location state", in: "location /v2/app/blobs/uploads/u?_state=abc&digest=sha256:1 rejected",
			want: "location /v2/app/blobs/uploads/u?_state=<redacted>&digest=sha256:1 rejected"},
		{name: "relative sig and token", in: "/b?sig=xyz&token=t0k&expires=1&name=ok", want: "/b?sig=<redacted>&token=<redacted>&expires=<redacted>&name=ok"},
		{name: "param name containing sign", in: "/p?mysignature=1&upload_state=2&x=3", want: "/p?mysignature=<redacted>&upload_state=<redacted>&x=3"},
		{name: "bearer header", in: "sent Authorization: Bearer eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxIn0.sig", want: "sent Authorization: Bearer <redacted>"},
		{name: "basic header", in: "header Basic " + b64("user:pass"), want: "header Basic <redacted>"},
		{name: "basic as a word", in: "Basic authentication required, Bearer Authentication", want: "Basic authentication required, Bearer Authentication"},
		{name: "json token", in: `body start "{\"token\":\"abc.def\",\"access_token\":\"xyz\"}"`, gone: []string{"abc.def", "xyz"}},
		{name: "json password", in: `{"password": "hunter2", "user": "x"}`, want: `{"password": "<redacted>", "user": "x"}`},
		{name: "key=value secret", in: "config password=hunter2 token=abc other=1", want: "config password=<redacted> token=<redacted> other=1"},
		{name: "control characters", in: "line1\nline2\r\n\tline3\x00\x1b[31mred\x7f", want: "line1 line2 line3[31mred"},
		{name: "bidi and zero-width", in: "safe\u202etxt.exe\u200b", want: "safetxt.exe"},
		{name: "invalid UTF-8", in: "bad \xff byte", want: "bad \uFFFD byte"},
		{name: "whitespace collapsed and trimmed", in: "  a   b  ", want: "a b"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got := Message(tc.in, tc.secrets...)
			if tc.want != "" && got != tc.want {
				t.Errorf("Message(%q)\n got %q\nwant %q", tc.in, got, tc.want)
			}
			for _, g := range tc.gone {
				if strings.Contains(got, g) {
					t.Errorf("Message(%q) = %q still contains %q", tc.in, got, g)
				}
			}
			for _, k := range tc.kept {
				if !strings.Contains(got, k) {
					t.Errorf("Message(%q) = %q lost %q", tc.in, got, k)
				}
			}
			for _, s := range tc.secrets {
				if len(s) >= MinSecretLength && strings.Contains(got, s) {
					t.Errorf("Message(%q) = %q leaks %q", tc.in, got, s)
				}
			}
		})
	}
}

func TestMessageBound(t *testing.T) {
	max := tagger.MaxReasonLength
	head := "resolving registry.example.com/app:v1: "
	tail := ": the final cause"
	for _, filler := range []string{"x", "é", "日本", "🙂"} {
		long := head + strings.Repeat(filler, 40*1024) + tail
		got := Message(long)
		if len(got) > max {
			t.Errorf("%q: %d bytes, want at most %d", filler, len(got), max)
		}
		if len(got) < max-8 {
			t.Errorf("%q: %d bytes, want close to %d", filler, len(got), max)
		}
		if !utf8.ValidString(got) {
			t.Errorf("%q: result is not valid UTF-8", filler)
		}
		if !strings.HasPrefix(got, head) || !strings.HasSuffix(got, tail) || !strings.Contains(got, " … ") {
			t.Errorf("%q: lost the head or the tail: %.80q ... %.80q", filler, got, got[len(got)-80:])
		}
	}
	exact := strings.Repeat("a", max)
	if got := Message(exact); got != exact {
		t.Errorf("a message of exactly %d bytes was changed", max)
	}
	// Secrets are removed before cutting: a cut can never leave half of one.
	secret := "very-secret-value"
	long := strings.Repeat("z", max-10) + secret + strings.Repeat("z", max)
	if got := Message(long, secret); strings.Contains(got, secret[:8]) {
		t.Errorf("cut left part of the secret: %q", got)
	}
}

func TestBound(t *testing.T) {
	for _, tc := range []struct {
		in   string
		max  int
		want string
	}{
		{"short", 10, "short"},
		{"abcdefghijklmnopqrstuvwxyz", 15, "abcd … uvwxyz"},
		{"abcdefghij", 4, "abcd"},
		{"日本語", 4, "日"},
	} {
		if got := Bound(tc.in, tc.max); got != tc.want || len(got) > tc.max {
			t.Errorf("Bound(%q, %d) = %q, want %q", tc.in, tc.max, got, tc.want)
		}
	}
}

func TestError(t *testing.T) {
	if got := Error(nil); got != "" {
		t.Errorf("Error(nil) = %q", got)
	}
	err := fmt.Errorf("pushing: %w", errors.New("https://u:topsecret@mirror.example/v2/?_state=x: unauthorized"))
	if got := Error(err, "topsecret"); got != "pushing: https://mirror.example/v2/?<redacted>: unauthorized" {
		t.Errorf("Error = %q", got)
	}
}
