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

// Package importer resolves image tags to digests and copies images into a
// mirror registry. It is the only place that talks to registries; the API
// server calls it through Interface so that registry storage can be tested
// without a registry.
package importer

import (
	"context"
	"time"
)

// Credential is one set of registry credentials. Token, when set, is sent as a
// bearer token instead of username/password.
type Credential struct {
	Username string
	Password string
	Token    string
}

// Secrets returns what of c must never be shown, for redact.Message: the
// password, the token, the "user:password" pair (whose base64 form is a
// basic-auth header) and the user name. nil for a nil c.
func (c *Credential) Secrets() []string {
	if c == nil {
		return nil
	}
	var out []string
	for _, s := range []string{c.Password, c.Token, c.Username} {
		if s != "" {
			out = append(out, s)
		}
	}
	if c.Password != "" {
		out = append(out, c.Username+":"+c.Password)
	}
	return out
}

// Mirror says where, and how, an imported image is copied.
type Mirror struct {
	// Repository is the destination repository without tag or digest, e.g.
	// "registry.example.com/ns/app".
	Repository string
	// Insecure skips TLS verification and allows plain http for the mirror.
	Insecure bool
	// Credential authenticates against the mirror; nil means anonymous.
	Credential *Credential
}

// Request describes one import attempt.
type Request struct {
	// From is the source reference as the user wrote it ("nginx",
	// "quay.io/org/app:latest", "host/repo@sha256:...").
	From string
	// Insecure skips TLS verification and allows plain http for the source.
	Insecure bool
	// Credentials are tried in order against the source, then anonymous.
	Credentials []Credential
	// Mirror, when not nil, copies the image (every platform) into the mirror.
	Mirror *Mirror
}

// Result is the outcome of a successful import.
type Result struct {
	// From is the normalized source reference ("docker.io/library/nginx:latest").
	From string
	// Digest is the manifest (or manifest list) digest, "sha256:...".
	Digest string
	// ImageReference is the digest reference consumers should use: the
	// source's "repo@digest", or the mirror's when the image was mirrored.
	ImageReference string
	// ResolvedAt is when the source registry answered with Digest (right
	// after the manifest HEAD or GET that produced it), not when the mirror
	// copy ended. Generations are ordered by it: of two imports of one tag,
	// the one that saw the tag later is newer, however long each copy took.
	ResolvedAt time.Time
	// MirroredBytes is how many blob bytes the mirror copy transferred
	// (blobs the mirror had already are not counted).
	MirroredBytes int64
}

// Interface imports one image. Implementations must honour ctx cancellation
// and return errors whose text is the registry's own explanation; Permanent
// and RetryAfter classify them and Reason describes them for status.
type Interface interface {
	Import(ctx context.Context, req Request) (Result, error)
}

// Func adapts a function to Interface.
type Func func(ctx context.Context, req Request) (Result, error)

// Import implements Interface.
func (f Func) Import(ctx context.Context, req Request) (Result, error) { return f(ctx, req) }
