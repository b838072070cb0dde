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
package imagecopy

import (
	"net/http"
	"strings"
	"testing"
)

func TestAPIErrorSaysWhatToDo(t *testing.T) {
	cases := map[int]string{
		http.StatusUnauthorized:   "check your kubeconfig",
		http.StatusForbidden:      "create on images/push",
		http.StatusGatewayTimeout: "--chunk-size",
		http.StatusConflict:       "boom",
	}
	for code, want := range cases {
		err := &APIError{Code: code, Message: "boom"}
		if got := err.Error(); !strings.Contains(got, want) || !strings.Contains(got, "boom") {
			t.Errorf("%d: %q lacks %q", code, got, want)
		}
	}
}
