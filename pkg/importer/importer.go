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
	"errors"
	"fmt"
	"os"
	"strings"
	"time"

	"github.com/opencontainers/go-digest"
	"go.podman.io/image/v5/copy"
	"go.podman.io/image/v5/docker"
	"go.podman.io/image/v5/docker/reference"
	"go.podman.io/image/v5/manifest"
	"go.podman.io/image/v5/signature"
	"go.podman.io/image/v5/types"
	"k8s.io/klog/v2"
)

// DefaultParallelCopies is the number of blobs copied at once per image when
// Options.ParallelCopies is 0; it is containers/image's own default.
const DefaultParallelCopies = 6

// Tagger's behaviour must depend only on its API objects and Options, not on
// containers/image configuration lying around the host (registries.conf can
// redirect or block registries, registries.d adds signature stores, certs.d
// adds CAs). emptyFile stands for an empty registries.conf; noSuchPath for
// directories that must not exist.
const (
	emptyFile  = os.DevNull
	noSuchPath = "/nonexistent/tagger-hermetic"
)

// Options configures an Importer. The zero value is usable.
type Options struct {
	// Policy restricts the source registries.
	Policy Policy
	// Logger is used for progress messages; the zero value means
	// klog.FromContext of each Import's context.
	Logger klog.Logger
	// ParallelCopies is the number of blobs copied at once when mirroring;
	// 0 means DefaultParallelCopies.
	ParallelCopies int
	// DefaultCredentials, when set, returns credentials for an image that
	// are tried after Request.Credentials and before anonymous access. Local
	// mode sets it to credentials.AuthFile(path). No other ambient credential
	// (~/.docker/config.json, $REGISTRY_AUTH_FILE, helpers) is ever read.
	DefaultCredentials func(image string) []Credential
	// CertDir holds extra CA certificates per registry, laid out like
	// /etc/containers/certs.d: "<CertDir>/<host[:port]>/*.crt". Empty means
	// only the system roots are trusted.
	CertDir string
	// UserAgent is sent to registries; empty means containers/image's.
	UserAgent string
	// BlobInfoCacheDir is where containers/image may keep its SQLite blob
	// info cache, which lets later copies mount blobs across repositories.
	// Empty means an in-memory cache per copy; builds without cgo always
	// end up with that, as they cannot open SQLite.
	BlobInfoCacheDir string
}

// Importer implements Interface with containers/image.
type Importer struct {
	opts Options
}

var _ Interface = &Importer{}

// New returns an Importer.
func New(opts Options) *Importer {
	if opts.ParallelCopies <= 0 {
		opts.ParallelCopies = DefaultParallelCopies
	}
	if opts.BlobInfoCacheDir == "" {
		// containers/image falls back to memory when it cannot create the
		// directory; a path under a regular file guarantees that without
		// touching the host's /var/lib/containers.
		opts.BlobInfoCacheDir = "/dev/null/tagger-blob-info-cache"
	}
	return &Importer{opts: opts}
}

// Import implements Interface. It resolves req.From to a digest with a
// manifest HEAD request, trying each credential in turn, and, when req.Mirror
// is set, copies every platform of the image into the mirror without
// changing its digest.
func (i *Importer) Import(ctx context.Context, req Request) (Result, error) {
	logger := i.opts.Logger
	if logger.GetSink() == nil {
		logger = klog.FromContext(ctx)
	}
	named, err := parse(req.From)
	if err != nil {
		return Result{}, err
	}
	from := named.String()
	if err := i.opts.Policy.CheckContext(ctx, from); err != nil {
		return Result{}, err
	}

	candidates := make([]*Credential, 0, len(req.Credentials)+1)
	for n := range req.Credentials {
		candidates = append(candidates, &req.Credentials[n])
	}
	if i.opts.DefaultCredentials != nil {
		for _, c := range i.opts.DefaultCredentials(from) {
			candidates = append(candidates, &c)
		}
	}
	candidates = append(candidates, nil) // anonymous

	start := time.Now()
	var (
		srcSys   *types.SystemContext
		srcCred  *Credential
		dgst     digest.Digest
		firstErr error
	)
	for n, cred := range candidates {
		sys := i.systemContext(req.Insecure, cred)
		d, err := resolve(ctx, sys, named)
		if err == nil {
			srcSys, srcCred, dgst = sys, cred, d
			break
		}
		err = redact(err, secrets(cred)...)
		if firstErr == nil {
			// When credentials were given, the registry's reaction to
			// the first one says more than its answer to anonymous access.
			firstErr = err
		}
		if ctx.Err() != nil || !isAuthError(err) {
			return Result{}, fmt.Errorf("resolving %s: %w", from, err)
		}
		if n == len(candidates)-1 {
			if len(candidates) > 1 {
				return Result{}, fmt.Errorf("resolving %s: none of %d credentials nor anonymous access was accepted: %w", from, len(candidates)-1, firstErr)
			}
			return Result{}, fmt.Errorf("resolving %s: %w", from, err)
		}
		logger.V(4).Info("Registry refused credential, trying the next", "image", from, "credential", n, "reason", err.Error())
	}
	repo := reference.TrimNamed(named)
	res := Result{From: from, Digest: dgst.String(), ImageReference: repo.Name() + "@" + dgst.String()}
	logger.V(2).Info("Resolved image", "image", from, "digest", res.Digest, "duration", time.Since(start))
	if req.Mirror == nil {
		return res, nil
	}

	start = time.Now()
	mirrored, err := i.mirror(ctx, srcSys, repo, dgst, req.Mirror)
	if err != nil {
		return Result{}, redact(err, secrets(srcCred, req.Mirror.Credential)...)
	}
	res.ImageReference = mirrored
	logger.V(2).Info("Mirrored image", "image", from, "mirror", mirrored, "duration", time.Since(start))
	return res, nil
}

// systemContext returns a containers/image context that uses exactly cred
// (nil: anonymous) and no configuration from the host.
func (i *Importer) systemContext(insecure bool, cred *Credential) *types.SystemContext {
	sys := &types.SystemContext{
		SystemRegistriesConfPath:    emptyFile,
		SystemRegistriesConfDirPath: noSuchPath,
		RegistriesDirPath:           noSuchPath,
		DockerPerHostCertDirPath:    noSuchPath,
		BlobInfoCacheDir:            i.opts.BlobInfoCacheDir,
		DockerRegistryUserAgent:     i.opts.UserAgent,
		// A non-nil DockerAuthConfig keeps containers/image from reading
		// auth files and credential helpers.
		DockerAuthConfig:            &types.DockerAuthConfig{},
		DockerInsecureSkipTLSVerify: types.OptionalBoolFalse,
	}
	if i.opts.CertDir != "" {
		sys.DockerPerHostCertDirPath = i.opts.CertDir
	}
	if insecure {
		sys.DockerInsecureSkipTLSVerify = types.OptionalBoolTrue
	}
	if cred != nil {
		if cred.Token != "" {
			sys.DockerBearerRegistryToken = cred.Token
		} else {
			sys.DockerAuthConfig = &types.DockerAuthConfig{Username: cred.Username, Password: cred.Password}
		}
	}
	return sys
}

// resolve returns the digest of the manifest (or index) named refers to.
func resolve(ctx context.Context, sys *types.SystemContext, named reference.Named) (digest.Digest, error) {
	lookup := named
	canonical, pinned := named.(reference.Canonical)
	if pinned {
		// containers/image refuses tag+digest; the digest is what counts.
		lookup, _ = reference.WithDigest(reference.TrimNamed(named), canonical.Digest())
	}
	ref, err := docker.NewReference(lookup)
	if err != nil {
		return "", err
	}
	d, err := docker.GetDigest(ctx, sys, ref)
	switch {
	case err == nil:
	case errors.Is(err, digest.ErrDigestInvalidFormat) || errors.Is(err, digest.ErrDigestUnsupported):
		// The HEAD worked but carried no usable Docker-Content-Digest.
		d, err = getDigest(ctx, sys, ref)
	case ctx.Err() == nil && !isAuthError(err) && strings.Contains(err.Error(), "StatusCode: "):
		// containers/image's text for a 4xx without a body, which a HEAD
		// answer always is: a GET brings the registry's explanation
		// ("manifest unknown", "name invalid"...).
		d, err = getDigest(ctx, sys, ref)
	}
	if err != nil {
		return "", err
	}
	if pinned && d != canonical.Digest() {
		return "", fmt.Errorf("registry answered digest %s for %s", d, lookup)
	}
	return d, nil
}

// getDigest fetches the manifest and digests it.
func getDigest(ctx context.Context, sys *types.SystemContext, ref types.ImageReference) (digest.Digest, error) {
	src, err := ref.NewImageSource(ctx, sys)
	if err != nil {
		return "", err
	}
	defer src.Close()
	b, _, err := src.GetManifest(ctx, nil)
	if err != nil {
		return "", err
	}
	return manifest.Digest(b)
}

// mirror copies repo@dgst, every platform, to m.Repository and returns the
// mirror's digest reference.
func (i *Importer) mirror(ctx context.Context, srcSys *types.SystemContext, repo reference.Named, dgst digest.Digest, m *Mirror) (string, error) {
	dst, err := reference.ParseNormalizedNamed(m.Repository)
	if err != nil {
		return "", fmt.Errorf("invalid mirror repository %q: %w", m.Repository, err)
	}
	if !reference.IsNameOnly(dst) {
		return "", fmt.Errorf("invalid mirror repository %q: it must have neither tag nor digest", m.Repository)
	}
	// Pushing under a tag (which also stores the manifest by digest) keeps
	// registry garbage collection from deleting the mirrored generation.
	dstTagged, err := reference.WithTag(dst, MirrorTag(dgst.String()))
	if err != nil {
		return "", err
	}
	dstDigested, err := reference.WithDigest(dst, dgst)
	if err != nil {
		return "", err
	}
	srcDigested, err := reference.WithDigest(repo, dgst)
	if err != nil {
		return "", err
	}
	srcRef, err := docker.NewReference(srcDigested)
	if err != nil {
		return "", err
	}
	dstRef, err := docker.NewReference(dstTagged)
	if err != nil {
		return "", err
	}
	dstSys := i.systemContext(m.Insecure, m.Credential)

	// Signature verification is the admission side's business; the copy
	// itself must not depend on /etc/containers/policy.json.
	policyCtx, err := signature.NewPolicyContext(&signature.Policy{Default: signature.PolicyRequirements{signature.NewPRInsecureAcceptAnything()}})
	if err != nil {
		return "", err
	}
	defer func() { _ = policyCtx.Destroy() }()

	pushed, err := copy.Image(ctx, policyCtx, dstRef, srcRef, &copy.Options{
		SourceCtx:            srcSys,
		DestinationCtx:       dstSys,
		ImageListSelection:   copy.CopyAllImages,
		PreserveDigests:      true,
		MaxParallelDownloads: uint(i.opts.ParallelCopies),
		// Signatures are not part of the digest, and most registries
		// cannot store containers/image's lookaside ones.
		RemoveSignatures: true,
	})
	if err != nil {
		return "", fmt.Errorf("mirroring %s to %s: %w", srcDigested, dstTagged, err)
	}
	got, err := manifest.Digest(pushed)
	if err != nil {
		return "", fmt.Errorf("mirroring %s to %s: %w", srcDigested, dstTagged, err)
	}
	if got != dgst {
		return "", fmt.Errorf("mirroring %s to %s: the mirror received a manifest with digest %s, refusing to use a rewritten image", srcDigested, dstTagged, got)
	}
	// Ask the mirror itself, so a registry that rewrote what it stored is
	// caught too.
	check, err := docker.NewReference(dstDigested)
	if err != nil {
		return "", err
	}
	if _, err := docker.GetDigest(ctx, dstSys, check); err != nil {
		return "", fmt.Errorf("verifying mirrored %s: %w", dstDigested, err)
	}
	return dstDigested.String(), nil
}
