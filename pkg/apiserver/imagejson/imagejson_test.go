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

package imagejson_test

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"math/rand"
	"testing"
	"time"

	apitestingfuzzer "k8s.io/apimachinery/pkg/api/apitesting/fuzzer"
	metafuzzer "k8s.io/apimachinery/pkg/apis/meta/fuzzer"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/serializer"

	"tagger.dev/tagger/pkg/apis/tagger/fuzzer"
	"tagger.dev/tagger/pkg/apis/tagger/install"
	taggerv1beta1 "tagger.dev/tagger/pkg/apis/tagger/v1beta1"
	"tagger.dev/tagger/pkg/apiserver/imagejson"
)

// encoders returns the JSON encoder the API server would have without this
// package (encoding/json through the codec factory, streaming lists as
// genericapiserver.NewDefaultAPIGroupInfo sets up) and the one it has.
func encoders(t testing.TB) (want, got runtime.Encoder, codecs serializer.CodecFactory) {
	t.Helper()
	scheme := runtime.NewScheme()
	install.Install(scheme)
	codecs = serializer.NewCodecFactory(scheme, serializer.WithStreamingCollectionEncodingToJSON())
	pick := func(ns runtime.NegotiatedSerializer) runtime.Encoder {
		info, ok := runtime.SerializerInfoForMediaType(ns.SupportedMediaTypes(), runtime.ContentTypeJSON)
		if !ok {
			t.Fatal("no application/json serializer")
		}
		return ns.EncoderForVersion(info.Serializer, taggerv1beta1.SchemeGroupVersion)
	}
	return pick(codecs), pick(imagejson.NegotiatedSerializer(codecs)), codecs
}

func same(t *testing.T, name string, want, got runtime.Encoder, obj runtime.Object) {
	t.Helper()
	var w, g bytes.Buffer
	if err := want.Encode(obj.DeepCopyObject(), &w); err != nil {
		t.Fatalf("%s: encoding/json: %v", name, err)
	}
	if err := got.Encode(obj.DeepCopyObject(), &g); err != nil {
		t.Fatalf("%s: imagejson: %v", name, err)
	}
	if !bytes.Equal(w.Bytes(), g.Bytes()) {
		wb, gb := w.Bytes(), g.Bytes()
		i := 0
		for i < len(wb) && i < len(gb) && wb[i] == gb[i] {
			i++
		}
		lo := max(0, i-80)
		t.Fatalf("%s: output differs at byte %d:\nencoding/json: …%s\nimagejson:     …%s", name, i, wb[lo:min(len(wb), i+80)], gb[lo:min(len(gb), i+80)])
	}
}

func history(n int, from, repo string) []taggerv1beta1.HashReference {
	base := time.Date(2026, 11, 30, 16, 14, 21, 123456789, time.FixedZone("CET", 3600))
	var h []taggerv1beta1.HashReference
	for g := 0; g < n; g++ {
		sum := sha256.Sum256([]byte(fmt.Sprint(g)))
		at := base.Add(-time.Duration(g) * time.Minute)
		h = append(h, taggerv1beta1.HashReference{
			From:           from,
			ResolvedAt:     metav1.NewMicroTime(at),
			ImportedAt:     metav1.NewTime(at.Add(time.Second)),
			ImageReference: repo + "@sha256:" + hex.EncodeToString(sum[:]),
		})
	}
	return h
}

func TestSameAsEncodingJSON(t *testing.T) {
	want, got, _ := encoders(t)
	meta := metav1.ObjectMeta{
		Name: "app", Namespace: "team-a", UID: "0c8b7a8e-6e4d-4a3e-9b1a-7d5c1e2f3a4b", ResourceVersion: "42",
		CreationTimestamp: metav1.NewTime(time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)),
		Labels:            map[string]string{"b": "2", "a": "<1>"},
		Finalizers:        []string{"tagger.dev/mirror-tags"},
		ManagedFields: []metav1.ManagedFieldsEntry{{
			Manager: "kubectl", Operation: metav1.ManagedFieldsOperationApply, APIVersion: "tagger.dev/v1beta1",
			FieldsType: "FieldsV1", FieldsV1: &metav1.FieldsV1{Raw: []byte(`{"f:spec":{"f:from":{}}}`)},
		}},
	}
	full := taggerv1beta1.Image{
		ObjectMeta: meta,
		Spec:       taggerv1beta1.ImageSpec{From: "registry.example.com/org/app:latest", Mirror: true, ImportPolicy: &taggerv1beta1.ImportPolicy{Scheduled: true, Interval: &metav1.Duration{Duration: time.Minute}}},
		Status: taggerv1beta1.ImageStatus{
			HashReferences:   history(taggerv1beta1.MaxHashReferences, "registry.example.com/org/app:latest", "mirror.example:5000/team-a_app"),
			CurrentReference: "mirror.example:5000/team-a_app@sha256:0000",
			LastCheckedAt:    &metav1.MicroTime{Time: time.Date(2026, 11, 30, 1, 2, 3, 4000, time.UTC)},
			Conditions:       []metav1.Condition{{Type: "Ready", Status: metav1.ConditionTrue, Reason: "Imported", Message: `"status":{ & <b>`, LastTransitionTime: metav1.Now()}},
		},
	}
	odd := history(6, "", "")
	odd[0].From = "reg.example/a<b>&c:\u2028tag\u007f"
	odd[1].ImageReference = "reg.example/ünïcode@sha256:x\"y\\z\n\t\x01"
	odd[2].From = "invalid \xff utf-8"
	odd[3].ResolvedAt = metav1.MicroTime{}
	odd[3].ImportedAt = metav1.Time{}
	odd[4].ResolvedAt = metav1.NewMicroTime(time.Date(12026, 1, 1, 0, 0, 0, 999, time.UTC))
	odd[4].ImportedAt = metav1.NewTime(time.Date(-1, 1, 1, 0, 0, 0, 0, time.UTC))
	odd[5].ResolvedAt = metav1.NewMicroTime(time.Date(1, 1, 1, 0, 0, 0, 1000, time.UTC))
	odd[5].From = "reg.example/a:b&c"

	cases := map[string]taggerv1beta1.Image{
		"empty":                       {},
		"named, no status":            {ObjectMeta: meta, Spec: taggerv1beta1.ImageSpec{From: "a/b:c"}},
		"full history and status":     full,
		"history only":                {ObjectMeta: meta, Status: taggerv1beta1.ImageStatus{HashReferences: history(3, "a/b:c", "a/b")}},
		"status without history":      {Status: taggerv1beta1.ImageStatus{CurrentReference: "a/b@sha256:1", Conditions: full.Status.Conditions}},
		"empty, non-nil history":      {Status: taggerv1beta1.ImageStatus{HashReferences: []taggerv1beta1.HashReference{}, CurrentReference: "x"}},
		"escapes, zero and odd times": {Status: taggerv1beta1.ImageStatus{HashReferences: odd}},
	}
	var list taggerv1beta1.ImageList
	for name, img := range cases {
		img.TypeMeta = metav1.TypeMeta{Kind: "Image", APIVersion: "tagger.dev/v1beta1"}
		same(t, name, want, got, &img)
		img.TypeMeta = metav1.TypeMeta{}
		list.Items = append(list.Items, img)
	}
	same(t, "list", want, got, &list)
	same(t, "list with metadata", want, got, &taggerv1beta1.ImageList{ListMeta: metav1.ListMeta{ResourceVersion: "7", Continue: "abc", RemainingItemCount: new(int64)}, Items: list.Items})
	same(t, "empty list", want, got, &taggerv1beta1.ImageList{Items: []taggerv1beta1.Image{}})
	same(t, "nil list", want, got, &taggerv1beta1.ImageList{})
	// Not ours: handed on unchanged.
	same(t, "an ImageImport", want, got, &taggerv1beta1.ImageImport{ObjectMeta: meta, Spec: taggerv1beta1.ImageImportSpec{TargetImage: "app"}})
}

// TestRandomImages holds the encoder to encoding/json on random Images, so
// that a field added to Image, ImageStatus or HashReference without being
// added here fails.
func TestRandomImages(t *testing.T) {
	want, got, codecs := encoders(t)
	seed := time.Now().UnixNano()
	t.Logf("seed %d", seed)
	f := apitestingfuzzer.FuzzerFor(apitestingfuzzer.MergeFuzzerFuncs(metafuzzer.Funcs, fuzzer.Funcs), rand.NewSource(seed), codecs).NilChance(0.2)
	var list taggerv1beta1.ImageList
	for i := 0; i < 300; i++ {
		var img taggerv1beta1.Image
		f.Fill(&img)
		same(t, fmt.Sprintf("random Image %d", i), want, got, &img)
		list.Items = append(list.Items, img)
	}
	f.Fill(&list.ListMeta)
	same(t, "list of the random Images", want, got, &list)
}

func scaleList(n int) *taggerv1beta1.ImageList {
	l := &taggerv1beta1.ImageList{}
	for i := 0; i < n; i++ {
		from := fmt.Sprintf("registry.example.com/team-%d/app-%05d:latest", i%20, i)
		l.Items = append(l.Items, taggerv1beta1.Image{
			ObjectMeta: metav1.ObjectMeta{Name: fmt.Sprintf("app-%05d", i), Namespace: "scale", ResourceVersion: "1234567", Labels: map[string]string{"team": fmt.Sprint(i % 20)}},
			Spec:       taggerv1beta1.ImageSpec{From: from},
			Status:     taggerv1beta1.ImageStatus{HashReferences: history(taggerv1beta1.MaxHashReferences, from, fmt.Sprintf("registry.example.com/team-%d/app-%05d", i%20, i))},
		})
	}
	return l
}

// BenchmarkList: 1,000 Images with full histories, encoding/json against
// this package.
func BenchmarkList(b *testing.B) {
	want, got, _ := encoders(b)
	l := scaleList(1000)
	for name, enc := range map[string]runtime.Encoder{"encoding-json": want, "imagejson": got} {
		b.Run(name, func(b *testing.B) {
			var n countingWriter
			for i := 0; i < b.N; i++ {
				if err := enc.Encode(l, &n); err != nil {
					b.Fatal(err)
				}
			}
			b.SetBytes(int64(n) / int64(b.N))
		})
	}
}

type countingWriter int

func (c *countingWriter) Write(p []byte) (int, error) {
	*c += countingWriter(len(p))
	return len(p), nil
}
