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

package sources

import (
	"testing"

	"github.com/google/go-containerregistry/pkg/name"
)

// Two tenants never share a mirror repository: (namespace, Image) maps to
// the repository one to one, with and without the "repository" key, and
// every repository is a valid reference.
func TestMirrorRepositoryIsInjective(t *testing.T) {
	// Namespaces are DNS labels ([a-z0-9-]); Image names DNS subdomains
	// ([a-z0-9.-]). Pairs chosen to collide under "<namespace>-<name>" or
	// "<namespace>.<name>"-like joins.
	pairs := [][2]string{
		{"team", "x-app"}, {"team-x", "app"}, {"team-x-app", "a"}, {"t", "eam-x-app"},
		{"team", "x.app"}, {"team-x", "app.v2"}, {"team", "x-app.v2"}, {"a-b", "c"}, {"a", "b-c"},
		{"a", "b.c"}, {"a-b", "c.d"}, {"default", "app"}, {"default-app", "x"},
	}
	for _, cfg := range []MirrorConfig{
		{Address: "mirror.example:5000"},
		{Address: "https://mirror.example/", Repository: "shared"},
		{Address: "docker.io", Repository: "tenant"},
		{Address: "quay.example", Repository: "org/sub"},
	} {
		seen := map[string][2]string{}
		for _, p := range pairs {
			repo := cfg.Mirror(p[0], p[1]).Repository
			if other, ok := seen[repo]; ok {
				t.Errorf("repository %q: %s/%s and %s/%s share it", repo, other[0], other[1], p[0], p[1])
			}
			seen[repo] = p
			if _, err := name.NewRepository(repo, name.StrictValidation); err != nil {
				t.Errorf("%s/%s -> %q: %v", p[0], p[1], repo, err)
			}
		}
	}
	if got, want := (MirrorConfig{Address: "m.example", Repository: "team"}).Mirror("team-x", "app").Repository, "m.example/team/team-x_app"; got != want {
		t.Errorf("layout with repository: %s, want %s", got, want)
	}
}
