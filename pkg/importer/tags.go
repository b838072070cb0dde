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

package importer

import (
	"context"
	"fmt"

	"go.podman.io/image/v5/docker"
	"go.podman.io/image/v5/docker/reference"
)

// MaxTags bounds how many tags ListTags returns: a repository with more is
// refused rather than read without end.
const MaxTags = 100000

// ListTags returns the tags of the repository req.From names (its tag or
// digest, if any, is ignored), following the registry's pagination of
// /v2/<name>/tags/list. Like Import, it checks the source policy first,
// makes every connection through the egress guard and tries each
// credential in turn, then anonymous access; req.Mirror is ignored.
// Errors are classified by Permanent and described by Reason.
func (i *Importer) ListTags(ctx context.Context, req Request) ([]string, error) {
	named, err := parse(req.From)
	if err != nil {
		return nil, err
	}
	repo := reference.TrimNamed(named)
	candidates := make([]*Credential, 0, len(req.Credentials)+1)
	for n := range req.Credentials {
		candidates = append(candidates, &req.Credentials[n])
	}
	if i.opts.DefaultCredentials != nil {
		for _, c := range i.opts.DefaultCredentials(named.String()) {
			candidates = append(candidates, &c)
		}
	}
	candidates = append(candidates, nil) // anonymous
	var secrets []string
	for _, c := range candidates {
		secrets = append(secrets, c.Secrets()...)
	}
	op := "listing the tags of " + repo.Name()
	fail := func(err error) ([]string, error) {
		return nil, &importError{op: op, err: err, secrets: secrets}
	}
	if err := i.opts.Policy.CheckContext(ctx, repo.Name()); err != nil {
		return fail(err)
	}
	guard, err := i.startGuard()
	if err != nil {
		return fail(err)
	}
	s, err := i.newSession(guard, "", false)
	if err != nil {
		return fail(err)
	}
	defer s.Close()
	ref, err := docker.NewReference(reference.TagNameOnly(repo))
	if err != nil {
		return fail(NewPermanent(err))
	}
	var firstErr error
	for n, cred := range candidates {
		tags, err := docker.GetRepositoryTags(ctx, i.systemContext(req.Insecure, cred, s), ref)
		if err == nil {
			if len(tags) > MaxTags {
				return fail(NewPermanent(fmt.Errorf("the repository has %d tags, more than the %d a tag policy reads", len(tags), MaxTags)))
			}
			return tags, nil
		}
		err = s.explain(err)
		if firstErr == nil {
			firstErr = err
		}
		if ctx.Err() != nil || !isAuthError(err) {
			return fail(err)
		}
		if n == len(candidates)-1 && len(candidates) > 1 {
			return fail(fmt.Errorf("none of %d credentials nor anonymous access was accepted: %w", len(candidates)-1, firstErr))
		}
	}
	return fail(firstErr)
}
