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

// Package tagpolicy chooses a tag among a repository's tags with a
// tagger.TagPolicy: the tags the pattern matches are reduced to the part
// the extract template names, and the highest by semver range or order
// wins, as Flux's ImagePolicy does.
package tagpolicy

import (
	"cmp"
	"context"
	"fmt"
	"regexp"
	"strconv"
	"strings"

	"github.com/Masterminds/semver/v3"
	"go.podman.io/image/v5/docker/reference"

	"tagger.dev/tagger/pkg/apis/tagger"
	"tagger.dev/tagger/pkg/importer"
)

// Policy is a compiled tag policy.
type Policy struct {
	spec    tagger.TagPolicy
	semver  *semver.Constraints
	pattern *regexp.Regexp
}

// Compile compiles p. Validation refuses the policies it cannot compile.
func Compile(p *tagger.TagPolicy) (*Policy, error) {
	c := &Policy{spec: *p}
	var err error
	if p.Semver != "" {
		if c.semver, err = semver.NewConstraint(p.Semver); err != nil {
			return nil, fmt.Errorf("tag policy semver %q: %w", p.Semver, err)
		}
	} else if p.Order != tagger.TagOrderAlphabetical && p.Order != tagger.TagOrderNumerical {
		return nil, fmt.Errorf("tag policy: order %q is neither %s nor %s", p.Order, tagger.TagOrderAlphabetical, tagger.TagOrderNumerical)
	}
	if p.Pattern != "" {
		if c.pattern, err = regexp.Compile(p.Pattern); err != nil {
			return nil, fmt.Errorf("tag policy pattern %q: %w", p.Pattern, err)
		}
	}
	return c, nil
}

// String describes the policy for messages.
func (p *Policy) String() string {
	var parts []string
	if p.spec.Pattern != "" {
		parts = append(parts, fmt.Sprintf("pattern %q", p.spec.Pattern))
	}
	if p.spec.Extract != "" {
		parts = append(parts, fmt.Sprintf("extract %q", p.spec.Extract))
	}
	if p.spec.Semver != "" {
		parts = append(parts, fmt.Sprintf("semver %q", p.spec.Semver))
	} else {
		parts = append(parts, "order "+string(p.spec.Order))
	}
	return strings.Join(parts, ", ")
}

// candidate is an admitted tag and what it is compared by.
type candidate struct {
	tag     string
	version *semver.Version
	number  float64
	value   string
}

// admit returns how tag compares, or false when the policy ignores it.
func (p *Policy) admit(tag string) (candidate, bool) {
	c := candidate{tag: tag, value: tag}
	if p.pattern != nil {
		m := p.pattern.FindStringSubmatchIndex(tag)
		if m == nil {
			return c, false
		}
		if p.spec.Extract != "" {
			c.value = string(p.pattern.ExpandString(nil, p.spec.Extract, tag, m))
		}
	}
	switch {
	case p.semver != nil:
		v, err := semver.NewVersion(c.value)
		if err != nil || !p.semver.Check(v) {
			return c, false
		}
		c.version = v
	case p.spec.Order == tagger.TagOrderNumerical:
		n, err := strconv.ParseFloat(c.value, 64)
		if err != nil {
			return c, false
		}
		c.number = n
	}
	return c, true
}

// Admits tells whether the policy could choose tag (a registry webhook
// for a tag the policy ignores needs no check).
func (p *Policy) Admits(tag string) bool {
	_, ok := p.admit(tag)
	return ok
}

// compare orders two admitted candidates; equal values are ordered by tag,
// so the choice does not depend on the registry's order.
func (p *Policy) compare(a, b candidate) int {
	var c int
	switch {
	case p.semver != nil:
		c = a.version.Compare(b.version)
	case p.spec.Order == tagger.TagOrderNumerical:
		c = cmp.Compare(a.number, b.number)
	default:
		c = strings.Compare(a.value, b.value)
	}
	if c == 0 {
		c = strings.Compare(a.tag, b.tag)
	}
	return c
}

// Newest returns the highest tag the policy admits, or false when it admits
// none.
func (p *Policy) Newest(tags []string) (string, bool) {
	var best candidate
	found := false
	for _, t := range tags {
		c, ok := p.admit(t)
		if !ok {
			continue
		}
		if !found || p.compare(c, best) > 0 {
			best, found = c, true
		}
	}
	return best.tag, found
}

// Lister lists the tags of the repository a request names, with its
// credentials and source policy; *importer.Importer implements it.
type Lister interface {
	ListTags(ctx context.Context, req importer.Request) ([]string, error)
}

// Choose lists the tags of the repository req.From names and returns the
// reference of the one tp chooses ("host/repo:tag"). No tag admitted is a
// permanent error saying so.
func Choose(ctx context.Context, l Lister, req importer.Request, tp *tagger.TagPolicy) (string, error) {
	policy, err := Compile(tp)
	if err != nil {
		return "", importer.NewPermanent(err)
	}
	named, err := reference.ParseNormalizedNamed(req.From)
	if err != nil {
		return "", importer.NewPermanent(fmt.Errorf("invalid image reference %q: %w", req.From, err))
	}
	repo := reference.TrimNamed(named)
	req.From = repo.String()
	tags, err := l.ListTags(ctx, req)
	if err != nil {
		return "", err
	}
	tag, ok := policy.Newest(tags)
	if !ok {
		return "", importer.NewPermanent(fmt.Errorf("no tag of %s matches the tag policy (%s; %d tags listed)", repo.Name(), policy, len(tags)))
	}
	tagged, err := reference.WithTag(repo, tag)
	if err != nil {
		return "", importer.NewPermanent(err)
	}
	return tagged.String(), nil
}
