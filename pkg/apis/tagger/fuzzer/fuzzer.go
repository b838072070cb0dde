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

// Package fuzzer fills tagger.dev objects with random values for the
// roundtrip tests.
package fuzzer

import (
	"strings"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	runtimeserializer "k8s.io/apimachinery/pkg/runtime/serializer"
	"sigs.k8s.io/randfill"

	"tagger.dev/tagger/pkg/apis/tagger"
)

// Funcs returns the fuzzer functions of the tagger.dev API group. They keep
// the random objects inside what a decode leaves unchanged: v1beta1
// defaulting trims spaces around references and names, so the fuzzed
// values must not have any, and sets the interval of an import policy.
var Funcs = func(codecs runtimeserializer.CodecFactory) []interface{} {
	return []interface{}{
		func(s *tagger.ImageSpec, c randfill.Continue) {
			c.FillNoCustom(s) // fill the spec without calling this function again
			s.From = strings.TrimSpace(s.From)
			s.PinnedReference = strings.TrimSpace(s.PinnedReference)
		},
		func(s *tagger.ImageImportSpec, c randfill.Continue) {
			c.FillNoCustom(s)
			s.From = strings.TrimSpace(s.From)
			s.TargetImage = strings.TrimSpace(s.TargetImage)
		},
		func(p *tagger.ImportPolicy, c randfill.Continue) {
			c.FillNoCustom(p)
			if p.Interval == nil { // v1beta1 defaulting sets it
				p.Interval = &metav1.Duration{Duration: tagger.DefaultImportInterval}
			}
		},
	}
}
