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

package plugin

import (
	"strings"
	"testing"
)

func TestHookInstructions(t *testing.T) {
	const (
		token = "tok"
		url   = "https://tagger.example.com/webhooks/tagger.dev/registry/shop/tok"
		bare  = "https://tagger.example.com/webhooks/tagger.dev/registry/shop"
	)
	if got := hookInstructions("", url, token); got != url+"\n" {
		t.Errorf("plain: %q", got)
	}
	// Registries that can send a header or sign get the URL without the
	// token, and the token for the header or secret.
	for _, target := range []string{"harbor", "distribution", "github"} {
		got := hookInstructions(target, url, token)
		if strings.Contains(got, url) || !strings.Contains(got, bare+"\n") || !strings.Contains(got, token) {
			t.Errorf("%s:\n%s", target, got)
		}
	}
	for _, target := range []string{"dockerhub", "quay", "generic"} {
		if got := hookInstructions(target, url, token); !strings.Contains(got, url) {
			t.Errorf("%s:\n%s", target, got)
		}
	}
}
