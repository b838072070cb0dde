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
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/remote/transport"
)

// MirrorTagPrefix starts every tag Tagger pushes to keep a generation from
// registry garbage collection (see MirrorTag).
const MirrorTagPrefix = "tagger-sha256-"

// MirrorTags returns the tags of the mirror repository m.Repository; a
// repository that does not exist has none. Like imports, every connection
// goes through the egress guard (the mirror's own host is allowed, the deny
// list and metadata networks are not).
func (i *Importer) MirrorTags(ctx context.Context, m *Mirror) ([]string, error) {
	var tags []string
	err := i.withMirror(ctx, m, func(repo name.Repository, opts []remote.Option) error {
		var err error
		tags, err = remote.List(repo, opts...)
		if isStatus(err, http.StatusNotFound) {
			tags, err = nil, nil
		}
		return err
	})
	return tags, err
}

// MirrorTagDigest returns the digest the tag of the mirror repository names.
func (i *Importer) MirrorTagDigest(ctx context.Context, m *Mirror, tag string) (string, error) {
	var dgst string
	err := i.withMirror(ctx, m, func(repo name.Repository, opts []remote.Option) error {
		desc, err := remote.Head(repo.Tag(tag), opts...)
		if err != nil {
			return err
		}
		dgst = desc.Digest.String()
		return nil
	})
	return dgst, err
}

// DeleteMirrorTag removes tag from the mirror repository, leaving the
// manifest to the registry's garbage collection (DELETE
// /v2/<name>/manifests/<tag>, OCI distribution 1.1). A tag that is already
// gone is not an error. A registry that cannot delete tags (distribution
// 2.x, which wants a digest) gets the manifest deleted by digest instead,
// but only when dgst is set and no tag of the repository other than tag
// names it; otherwise the error says the registry cannot delete tags.
func (i *Importer) DeleteMirrorTag(ctx context.Context, m *Mirror, tag, dgst string) error {
	return i.withMirror(ctx, m, func(repo name.Repository, opts []remote.Option) error {
		err := remote.Delete(repo.Tag(tag), opts...)
		if err == nil || isStatus(err, http.StatusNotFound) {
			return nil
		}
		if !isStatus(err, http.StatusMethodNotAllowed, http.StatusBadRequest) || dgst == "" {
			return err
		}
		// No tag deletion: delete the manifest if tag is all that names it.
		tags, lerr := remote.List(repo, opts...)
		if lerr != nil {
			return lerr
		}
		for _, other := range tags {
			if other == tag {
				continue
			}
			if other == MirrorTag(dgst) {
				return fmt.Errorf("the registry cannot delete tags, and %s also names %s: %w", other, dgst, err)
			}
			if strings.HasPrefix(other, MirrorTagPrefix) {
				continue // names another digest
			}
			desc, herr := remote.Head(repo.Tag(other), opts...)
			if herr != nil {
				return herr
			}
			if desc.Digest.String() == dgst {
				return fmt.Errorf("the registry cannot delete tags, and tag %s also names %s: %w", other, dgst, err)
			}
		}
		derr := remote.Delete(repo.Digest(dgst), opts...)
		if derr == nil || isStatus(derr, http.StatusNotFound) {
			return nil
		}
		return derr
	})
}

// withMirror runs f with the options that reach m's repository through a
// guard session, and describes its error as imports do.
func (i *Importer) withMirror(ctx context.Context, m *Mirror, f func(name.Repository, []remote.Option) error) error {
	var nameOpts []name.Option
	if m.Insecure {
		nameOpts = append(nameOpts, name.Insecure)
	}
	repo, err := name.NewRepository(m.Repository, nameOpts...)
	if err != nil {
		return NewPermanent(fmt.Errorf("invalid mirror repository %q: %w", m.Repository, err))
	}
	op := "cleaning up the mirror tags of " + m.Repository
	fail := func(err error) error {
		return &importError{op: op, err: err, secrets: m.Credential.Secrets()}
	}
	guard, err := i.startGuard()
	if err != nil {
		return fail(err)
	}
	s, err := i.newSession(guard, repo.RegistryStr(), m.Insecure)
	if err != nil {
		return fail(err)
	}
	defer s.Close()
	tlsConfig := &tls.Config{MinVersion: tls.VersionTLS12, InsecureSkipVerify: m.Insecure} //nolint:gosec // the mirror configuration asks for it
	if pool, err := i.certPool(repo.RegistryStr()); err != nil {
		return fail(err)
	} else if pool != nil {
		tlsConfig.RootCAs = pool
	}
	rt := &http.Transport{
		Proxy:               func(r *http.Request) (*url.URL, error) { return s.proxy(r.URL) },
		TLSClientConfig:     tlsConfig,
		TLSHandshakeTimeout: 10 * time.Second,
		IdleConnTimeout:     30 * time.Second,
	}
	defer rt.CloseIdleConnections()
	auth := authn.Anonymous
	if c := m.Credential; c != nil {
		auth = authn.FromConfig(authn.AuthConfig{Username: c.Username, Password: c.Password, RegistryToken: c.Token})
	}
	opts := []remote.Option{
		remote.WithContext(ctx),
		remote.WithTransport(rt),
		remote.WithAuth(auth),
		// The caller retries with its own backoff.
		remote.WithRetryBackoff(remote.Backoff{Duration: time.Second, Factor: 1, Steps: 1}),
	}
	if i.opts.UserAgent != "" {
		opts = append(opts, remote.WithUserAgent(i.opts.UserAgent))
	}
	if err := f(repo, opts); err != nil {
		return fail(s.explain(err))
	}
	return nil
}

// certPool adds the CA certificates of CertDir/<host> to the system's, as
// containers/image does for imports; nil when there are none.
func (i *Importer) certPool(host string) (*x509.CertPool, error) {
	if i.opts.CertDir == "" {
		return nil, nil
	}
	files, _ := filepath.Glob(filepath.Join(i.opts.CertDir, host, "*.crt"))
	if len(files) == 0 {
		return nil, nil
	}
	pool, err := x509.SystemCertPool()
	if err != nil {
		pool = x509.NewCertPool()
	}
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			return nil, err
		}
		pool.AppendCertsFromPEM(b)
	}
	return pool, nil
}

// isStatus reports whether err is a registry answer with one of codes.
func isStatus(err error, codes ...int) bool {
	var te *transport.Error
	if !errors.As(err, &te) {
		return false
	}
	for _, c := range codes {
		if te.StatusCode == c {
			return true
		}
	}
	return false
}
