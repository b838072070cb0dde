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
package v1beta1

import (
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"

	"tagger.dev/tagger/pkg/apis/tagger"
)

func addDefaultingFuncs(scheme *runtime.Scheme) error {
	return RegisterDefaults(scheme)
}

// SetDefaults_ImageSpec trims the source reference: a stray space from a
// shell or YAML must not become part of a registry path.
func SetDefaults_ImageSpec(obj *ImageSpec) {
	obj.From = trimSpace(obj.From)
	obj.PinnedReference = trimSpace(obj.PinnedReference)
}

// SetDefaults_ImageImportSpec trims the references the user typed.
func SetDefaults_ImageImportSpec(obj *ImageImportSpec) {
	obj.From = trimSpace(obj.From)
	obj.TargetImage = trimSpace(obj.TargetImage)
}

// SetDefaults_ImportPolicy sets the interval of checks to
// tagger.DefaultImportInterval (15m).
func SetDefaults_ImportPolicy(obj *ImportPolicy) {
	if obj.Interval == nil {
		obj.Interval = &metav1.Duration{Duration: tagger.DefaultImportInterval}
	}
}
