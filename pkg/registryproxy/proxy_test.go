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

package registryproxy

import "testing"

func TestParsePath(t *testing.T) {
	d := "sha256:" + "ab0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcd"[:64]
	ok := map[string]Path{
		"blobs/uploads/":      {Kind: UploadStart},
		"/blobs/uploads":      {Kind: UploadStart},
		"blobs/uploads/a-b_c": {Kind: Upload, Ref: "a-b_c"},
		"blobs/" + d:          {Kind: Blob, Ref: d},
		"manifests/latest":    {Kind: Manifest, Ref: "latest"},
		"manifests/" + d:      {Kind: Manifest, Ref: d},
	}
	for in, want := range ok {
		got, err := ParsePath(in)
		if err != nil || got != want {
			t.Errorf("ParsePath(%q) = %+v, %v; want %+v", in, got, err, want)
		}
	}
	for _, in := range []string{"", "tags/list", "_catalog", "blobs/", "blobs/notadigest", "blobs/uploads/a/b",
		"blobs/uploads/..", "manifests/", "manifests/../x", "manifests/a/b", "../other/blobs/" + d} {
		if got, err := ParsePath(in); err == nil {
			t.Errorf("ParsePath(%q) = %+v, want an error", in, got)
		}
	}
}

func TestRewriteLocation(t *testing.T) {
	r := &Repository{Name: "ns/app", host: "mirror:5000"}
	base := "/apis/tagger.dev/v1beta1/namespaces/ns/images/app/push"
	for in, want := range map[string]string{
		"http://mirror:5000/v2/ns/app/blobs/uploads/u1?_state=x": base + "/blobs/uploads/u1?_state=x",
		"/v2/ns/app/blobs/uploads/u1":                            base + "/blobs/uploads/u1",
		"http://elsewhere/v2/ns/app/blobs/uploads/u1":            "",
		"http://mirror:5000/v2/ns/other/blobs/uploads/u1":        "",
	} {
		if got := r.RewriteLocation(in, base); got != want {
			t.Errorf("RewriteLocation(%q) = %q, want %q", in, got, want)
		}
	}
}

func TestRangeEnd(t *testing.T) {
	for in, want := range map[string]int64{"0-0": 0, "0-99": 99, "bytes=0-1023": 1023, " 0- 7 ": 7} {
		if got, ok := RangeEnd(in); !ok || got != want {
			t.Errorf("RangeEnd(%q) = %d, %v; want %d", in, got, ok, want)
		}
	}
	for _, in := range []string{"", "0", "0-x", "0--1"} {
		if got, ok := RangeEnd(in); ok {
			t.Errorf("RangeEnd(%q) = %d, want none", in, got)
		}
	}
}
