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

package tagpolicy

import (
	"context"
	"errors"
	"strings"
	"testing"

	"tagger.dev/tagger/pkg/apis/tagger"
	"tagger.dev/tagger/pkg/importer"
)

func TestNewest(t *testing.T) {
	tests := []struct {
		name   string
		policy tagger.TagPolicy
		tags   []string
		want   string // "" means none
	}{
		{name: "semver range", policy: tagger.TagPolicy{Semver: ">=1.2.0 <2"},
			tags: []string{"1.2.0", "1.3.1", "2.0.0", "latest", "1.3.0", "1.10.0-rc.1"}, want: "1.3.1"},
		{name: "semver compares versions, not strings", policy: tagger.TagPolicy{Semver: ">=1"},
			tags: []string{"1.9.0", "1.10.0", "1.2.0"}, want: "1.10.0"},
		{name: "semver with v prefix", policy: tagger.TagPolicy{Semver: "^1"},
			tags: []string{"v1.0.0", "v1.4.2", "v2.0.0"}, want: "v1.4.2"},
		{name: "semver equal versions: highest tag wins", policy: tagger.TagPolicy{Semver: "^1"},
			tags: []string{"v1.4.2", "1.4.2"}, want: "v1.4.2"},
		{name: "pre-releases only when the range names one", policy: tagger.TagPolicy{Semver: ">=1.3.0-0"},
			tags: []string{"1.2.0", "1.3.0-rc.1"}, want: "1.3.0-rc.1"},
		{name: "pre-releases ignored otherwise", policy: tagger.TagPolicy{Semver: ">=1.2.0"},
			tags: []string{"1.2.0", "1.3.0-rc.1"}, want: "1.2.0"},
		{name: "no match", policy: tagger.TagPolicy{Semver: ">=3"},
			tags: []string{"1.2.0", "2.0.0"}},
		{name: "numerical on an extracted timestamp", policy: tagger.TagPolicy{
			Pattern: `^main-[a-f0-9]+-(?P<ts>[0-9]+)$`, Extract: "$ts", Order: tagger.TagOrderNumerical},
			tags: []string{"main-abc123-99", "main-def456-100", "dev-fff-999", "main-xyz-1000"}, want: "main-def456-100"},
		{name: "alphabetical on the whole tag", policy: tagger.TagPolicy{Pattern: `^release-`, Order: tagger.TagOrderAlphabetical},
			tags: []string{"release-2026-01-02", "release-2026-11-30", "snapshot-2027"}, want: "release-2026-11-30"},
		{name: "alphabetical without pattern", policy: tagger.TagPolicy{Order: tagger.TagOrderAlphabetical},
			tags: []string{"a", "c", "b"}, want: "c"},
		{name: "semver on an extracted part", policy: tagger.TagPolicy{Pattern: `^app-(.*)$`, Extract: "$1", Semver: "~1.2"},
			tags: []string{"app-1.2.3", "app-1.2.9", "app-1.3.0", "1.2.10"}, want: "app-1.2.9"},
		{name: "numerical ignores non-numbers", policy: tagger.TagPolicy{Order: tagger.TagOrderNumerical},
			tags: []string{"10", "9", "latest", "1e3"}, want: "1e3"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			p, err := Compile(&tc.policy)
			if err != nil {
				t.Fatal(err)
			}
			got, ok := p.Newest(tc.tags)
			if tc.want == "" {
				if ok {
					t.Errorf("Newest = %q, want none", got)
				}
				return
			}
			if !ok || got != tc.want {
				t.Errorf("Newest = %q, %v, want %q", got, ok, tc.want)
			}
			// The registry's order does not matter.
			rev := append([]string(nil), tc.tags...)
			for i, j := 0, len(rev)-1; i < j; i, j = i+1, j-1 {
				rev[i], rev[j] = rev[j], rev[i]
			}
			if got, _ := p.Newest(rev); got != tc.want {
				t.Errorf("Newest(reversed) = %q, want %q", got, tc.want)
			}
		})
	}
}

func TestAdmits(t *testing.T) {
	p, err := Compile(&tagger.TagPolicy{Semver: ">=1.2.0 <2"})
	if err != nil {
		t.Fatal(err)
	}
	for tag, want := range map[string]bool{"1.3.1": true, "2.0.0": false, "latest": false, "1.2.0": true} {
		if got := p.Admits(tag); got != want {
			t.Errorf("Admits(%q) = %v, want %v", tag, got, want)
		}
	}
}

func TestCompileRefuses(t *testing.T) {
	for _, p := range []tagger.TagPolicy{{Semver: "<<1"}, {Order: "Newest"}, {Pattern: "(", Order: tagger.TagOrderAlphabetical}} {
		if _, err := Compile(&p); err == nil {
			t.Errorf("Compile(%+v) = nil error", p)
		}
	}
}

type listerFunc func(ctx context.Context, req importer.Request) ([]string, error)

func (f listerFunc) ListTags(ctx context.Context, req importer.Request) ([]string, error) {
	return f(ctx, req)
}

func TestChoose(t *testing.T) {
	var asked string
	l := listerFunc(func(ctx context.Context, req importer.Request) ([]string, error) {
		asked = req.From
		return []string{"1.2.0", "1.3.1", "2.0.0"}, nil
	})
	got, err := Choose(context.Background(), l, importer.Request{From: "registry.example.com/org/app"}, &tagger.TagPolicy{Semver: ">=1.2.0 <2"})
	if err != nil {
		t.Fatal(err)
	}
	if got != "registry.example.com/org/app:1.3.1" || asked != "registry.example.com/org/app" {
		t.Errorf("Choose = %q (listed %q)", got, asked)
	}

	_, err = Choose(context.Background(), l, importer.Request{From: "nginx"}, &tagger.TagPolicy{Semver: ">=3"})
	if err == nil || !importer.Permanent(err) || !strings.Contains(err.Error(), "no tag of docker.io/library/nginx matches the tag policy") {
		t.Errorf("no match: %v (permanent %v)", err, importer.Permanent(err))
	}

	transient := errors.New("connection reset")
	_, err = Choose(context.Background(), listerFunc(func(context.Context, importer.Request) ([]string, error) { return nil, transient }),
		importer.Request{From: "nginx"}, &tagger.TagPolicy{Semver: "^1"})
	if !errors.Is(err, transient) {
		t.Errorf("listing error: %v", err)
	}
}
