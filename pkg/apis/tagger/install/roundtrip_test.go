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

package install

import (
	"testing"

	"k8s.io/apimachinery/pkg/api/apitesting/roundtrip"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/util/sets"

	"tagger.dev/tagger/pkg/apis/tagger/fuzzer"
	"tagger.dev/tagger/pkg/apis/tagger/v1beta1"
)

func TestRoundTripTypes(t *testing.T) {
	roundtrip.RoundTripTestForAPIGroup(t, Install, fuzzer.Funcs)
}

func TestRoundTripToUnstructured(t *testing.T) {
	scheme := runtime.NewScheme()
	Install(scheme)

	// metav1.AddToGroupVersion registers the meta option types in
	// tagger.dev/v1beta1; they have no internal version, so fuzz them as they are.
	noInternal := sets.New[schema.GroupVersionKind]()
	for _, kind := range []string{"CreateOptions", "UpdateOptions", "PatchOptions"} {
		noInternal.Insert(v1beta1.SchemeGroupVersion.WithKind(kind))
	}
	roundtrip.RoundtripToUnstructured(t, scheme, fuzzer.Funcs, nil, noInternal)
}
