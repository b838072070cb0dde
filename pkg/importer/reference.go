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
	"fmt"
	"strings"

	"go.podman.io/image/v5/docker/reference"
)

// Normalize returns the fully qualified form of an image reference:
// "nginx" becomes "docker.io/library/nginx:latest", a missing tag becomes
// ":latest", and a digest reference is kept as written.
func Normalize(ref string) (string, error) {
	named, err := parse(ref)
	if err != nil {
		return "", err
	}
	return named.String(), nil
}

// parse normalizes ref; the result is tagged, digested, or both.
func parse(ref string) (reference.Named, error) {
	named, err := reference.ParseNormalizedNamed(strings.TrimSpace(ref))
	if err != nil {
		return nil, NewPermanent(fmt.Errorf("invalid image reference %q: %w", ref, err))
	}
	return reference.TagNameOnly(named), nil
}

// MirrorTag returns the tag a mirrored image is also pushed under so that
// registry garbage collection, which deletes untagged manifests, keeps it:
// "tagger-sha256-<hex>" for "sha256:<hex>". The prefix matters: a bare
// "sha256-<hex>" is the OCI referrers fallback tag, which signing and SBOM
// tools overwrite with their own index.
func MirrorTag(digest string) string {
	return "tagger-" + strings.Replace(digest, ":", "-", 1)
}
