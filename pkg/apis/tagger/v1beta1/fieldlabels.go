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
	"fmt"

	"k8s.io/apimachinery/pkg/runtime"
)

// addFieldLabelConversionFuncs lets clients select Images by source and
// ImageImports by target ("kubectl get ii --field-selector spec.targetImage=app").
func addFieldLabelConversionFuncs(scheme *runtime.Scheme) error {
	selectable := map[string][]string{
		"Image":       {"metadata.name", "metadata.namespace", "spec.from"},
		"ImageImport": {"metadata.name", "metadata.namespace", "spec.targetImage"},
	}
	for kind, fields := range selectable {
		allowed := map[string]bool{}
		for _, f := range fields {
			allowed[f] = true
		}
		err := scheme.AddFieldLabelConversionFunc(SchemeGroupVersion.WithKind(kind), func(label, value string) (string, string, error) {
			if !allowed[label] {
				return "", "", fmt.Errorf("field label not supported: %s", label)
			}
			return label, value, nil
		})
		if err != nil {
			return err
		}
	}
	return nil
}
