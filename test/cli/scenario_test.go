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

package cli

import (
	"encoding/json"
	"fmt"
	"testing"

	"tagger.dev/tagger/pkg/apis/tagger/v1beta1"
	"tagger.dev/tagger/test/scenario"
)

// The shared push/pull/rollback scenario (test/scenario) with the real
// kubectl and the built plugin against local mode, in namespace default.
func TestPushPullRollbackScenarioWithKubectl(t *testing.T) {
	registry := fmt.Sprintf("127.0.0.1:%d", freePort(t))
	l := startLocal(t, t.TempDir(), freePort(t), registry)
	scenario.Run(t, scenario.Env{
		Plugin: func(args ...string) (string, string, error) {
			return l.kubectl("", append([]string{"image"}, args...)...)
		},
		Table: func(name string) (string, error) {
			out, stderr, err := l.kubectl("", "get", "img", name)
			if err != nil {
				return "", fmt.Errorf("%w: %s", err, stderr)
			}
			return out, nil
		},
		Image: func(name string) (*v1beta1.Image, error) {
			out, stderr, err := l.kubectl("", "get", "img", name, "-o", "json")
			if err != nil {
				return nil, fmt.Errorf("%w: %s", err, stderr)
			}
			img := &v1beta1.Image{}
			return img, json.Unmarshal([]byte(out), img)
		},
		Repository: func(name string) string { return registry + "/default/" + name },
		Work:       t.TempDir(),
	})
}
