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
	"net"
	"net/netip"
	"net/url"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/opencontainers/go-digest"
	"go.podman.io/image/v5/copy"
	"go.podman.io/image/v5/docker"
	"go.podman.io/image/v5/docker/reference"
	"go.podman.io/image/v5/manifest"
	"go.podman.io/image/v5/signature"
	"go.podman.io/image/v5/types"
	"k8s.io/klog/v2"

	"tagger.dev/tagger/pkg/egress"
	"tagger.dev/tagger/pkg/redact"
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
	// UserAgent is sent to registries; empty means DefaultUserAgent.
	UserAgent string
	// BlobCacheRecords bounds each mirror's blob-info cache, which lets
	// an import mount blobs the mirror holds in other repositories instead
	// of uploading them (see blobcache.go): after this many records it
	// starts over. 0 means DefaultBlobCacheRecords; negative disables
	// cross-repository mounts.
	BlobCacheRecords int
	// NoAuthCache turns off the quick resolve: every resolve pings the
	// registry and asks for a token again, as containers/image alone does.
	// For comparisons; servers leave it false.
	NoAuthCache bool
}

// blobInfoCacheDir keeps containers/image's per-copy cache in memory: it
// falls back to memory when it cannot create the directory, and a path
// under a regular file guarantees that without touching the host's
// /var/lib/containers.
const blobInfoCacheDir = "/dev/null/tagger-blob-info-cache"

// DefaultUserAgent names Tagger to registries on every request, the
// containers/image copy's and the quick resolve's alike, so a registry's
// logs (and rate limits) can tell Tagger apart.
const DefaultUserAgent = "tagger-apiserver (go.podman.io/image/v5)"

// Importer implements Interface with containers/image.
//
// Every connection an import makes, to the source, the mirror, token
// servers, blob redirects or anything else containers/image opens, goes
// through an in-process egress guard (package egress) that resolves the
// name, checks the addresses with Options.Policy and dials only a checked
// address. containers/image is given the guard as its proxy, so the
// environment's HTTP_PROXY/HTTPS_PROXY/NO_PROXY are never used.
type Importer struct {
	opts Options

	blobs *blobCaches // nil: no lasting blob-info cache
	auth  *authCache  // nil: no quick resolve

	mu     sync.Mutex
	guard  *egress.Guard
	closed bool
}

var _ Interface = &Importer{}

// New returns an Importer. Its egress guard starts with the first import;
// Close stops it.
func New(opts Options) *Importer {
	if opts.UserAgent == "" {
		opts.UserAgent = DefaultUserAgent
	}
	if opts.ParallelCopies <= 0 {
		opts.ParallelCopies = DefaultParallelCopies
	}
	i := &Importer{opts: opts}
	if opts.BlobCacheRecords >= 0 {
		i.blobs = &blobCaches{limit: opts.BlobCacheRecords}
	}
	if !opts.NoAuthCache {
		i.auth = newAuthCache()
	}
	return i
}

// Close stops the egress guard, which ends the connections of imports still
// running (they fail). Imports after Close fail. It is safe to call more
// than once.
func (i *Importer) Close() error {
	i.mu.Lock()
	g := i.guard
	i.closed, i.guard = true, nil
	i.mu.Unlock()
	if g != nil {
		return g.Close()
	}
	return nil
}

// errClosed is returned by Import after Close. It is transient: another
// server (or this one, restarted) can run the import.
var errClosed = errors.New("the importer is shut down")

func (i *Importer) startGuard() (*egress.Guard, error) {
	i.mu.Lock()
	defer i.mu.Unlock()
	if i.closed {
		return nil, errClosed
	}
	if i.guard == nil {
		g, err := egress.New(egress.Options{LookupIP: i.opts.Policy.LookupIP})
		if err != nil {
			return nil, err
		}
		i.guard = g
	}
	return i.guard, nil
}

// MaxRepositoryLength is the longest repository name, registry host
// included ("registry.example.com/ns/app"), that the reference grammar of
// distribution, and so containers/image and registries, accept.
const MaxRepositoryLength = reference.NameTotalLengthMax

// ValidateMirrorRepository returns a permanent error when repo cannot be
// a mirror repository: it must be a repository name without tag or digest,
// at most MaxRepositoryLength characters long.
func ValidateMirrorRepository(repo string) error {
	if len(repo) > MaxRepositoryLength {
		return NewPermanent(fmt.Errorf("mirror repository name is %d characters long, registries accept at most %d (registry host included): use a shorter Image name or mirror repository prefix", len(repo), MaxRepositoryLength))
	}
	dst, err := reference.ParseNormalizedNamed(repo)
	if err != nil {
		return NewPermanent(fmt.Errorf("invalid mirror repository %q: %w", repo, err))
	}
	if !reference.IsNameOnly(dst) {
		return NewPermanent(fmt.Errorf("invalid mirror repository %q: it must have neither tag nor digest", repo))
	}
	return nil
}

// Import implements Interface. It resolves req.From to a digest with a
// manifest HEAD request, trying each credential in turn, and, when req.Mirror
// is set, copies every platform of the image into the mirror without
// changing its digest.
//
// Errors are classified by Permanent and described for status by Reason;
// their text never carries the request's secrets.
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
	var secrets []string
	for _, c := range candidates {
		secrets = append(secrets, c.Secrets()...)
	}
	if req.Mirror != nil {
		secrets = append(secrets, req.Mirror.Credential.Secrets()...)
	}
	fail := func(op string, err error) (Result, error) {
		return Result{}, &importError{op: op, err: err, secrets: secrets}
	}
	resolving := "resolving " + from

	if err := i.opts.Policy.CheckContext(ctx, from); err != nil {
		return fail(resolving, err)
	}
	if req.Mirror != nil {
		if err := ValidateMirrorRepository(req.Mirror.Repository); err != nil {
			return fail("mirroring "+from, err)
		}
	}
	guard, err := i.startGuard()
	if err != nil {
		return fail(resolving, err)
	}
	src, err := i.newSession(guard, "", false)
	if err != nil {
		return fail(resolving, err)
	}
	defer src.Close()

	start := time.Now()
	var (
		srcSys   *types.SystemContext
		dgst     digest.Digest
		firstErr error
	)
	quick := i.newQuickClient(src, req.Insecure, registryHost(named))
	defer quick.close()
	for n, cred := range candidates {
		sys := i.systemContext(req.Insecure, cred, src)
		d, verdict := i.quickResolve(ctx, quick, req.Insecure, cred, named)
		switch verdict {
		case quickResolved:
			srcSys, dgst = sys, d
		case quickMismatch:
			return fail(resolving, pinMismatch(named, d))
		}
		if srcSys != nil {
			break
		}
		// A registry that answered the quick HEAD is not asked again: a
		// GET brings its explanation.
		d, err := resolve(ctx, sys, named, verdict == quickAnswered)
		if err == nil {
			srcSys, dgst = sys, d
			break
		}
		err = src.explain(err)
		if firstErr == nil {
			// When credentials were given, the registry's reaction to
			// the first one says more than its answer to anonymous access.
			firstErr = err
		}
		if ctx.Err() != nil || !isAuthError(err) {
			return fail(resolving, err)
		}
		if n == len(candidates)-1 {
			if len(candidates) > 1 {
				return fail(resolving, fmt.Errorf("none of %d credentials nor anonymous access was accepted: %w", len(candidates)-1, firstErr))
			}
			return fail(resolving, err)
		}
		logger.V(4).Info("Registry refused credential, trying the next", "image", from, "credential", n, "reason", redact.Error(err, secrets...))
	}
	resolvedAt := time.Now()
	repo := reference.TrimNamed(named)
	res := Result{From: from, Digest: dgst.String(), ImageReference: repo.Name() + "@" + dgst.String(), ResolvedAt: resolvedAt}
	logger.V(2).Info("Resolved image", "image", from, "digest", res.Digest, "duration", resolvedAt.Sub(start))
	if req.Mirror == nil {
		return res, nil
	}

	start = time.Now()
	mirrored, op, err := i.mirror(ctx, guard, srcSys, src, repo, dgst, req.Mirror, &res.MirroredBytes)
	if err != nil {
		return fail(op, err)
	}
	res.ImageReference = mirrored
	logger.V(2).Info("Mirrored image", "image", from, "mirror", mirrored, "duration", time.Since(start))
	return res, nil
}

// session is one import's (or one mirror's) access to the egress guard,
// with the URLs containers/image asked it to reach, to explain refusals.
type session struct {
	*egress.Session
	mu   sync.Mutex
	urls map[string]string // host:port -> last URL, without query
}

// newSession opens a guard session checking connections with the policy.
// mirrorHost, when set, is the configured mirror ("host[:port]"), which
// the allow list does not apply to.
func (i *Importer) newSession(g *egress.Guard, mirrorHost string, insecure bool) (*session, error) {
	s := &session{urls: map[string]string{}}
	policy := i.opts.Policy
	own := ownHost(mirrorHost, insecure)
	es, err := g.NewSession(func(host string, port int, addrs []netip.Addr) error {
		err := policy.checkConn(host, port, addrs, own(host, port))
		var pe *PolicyError
		if errors.As(err, &pe) {
			pe.URL = s.url(host, port)
		}
		return err
	})
	if err != nil {
		return nil, err
	}
	s.Session = es
	return s, nil
}

// ownHost returns whether a connection goes to the mirror's own host:port.
// A mirror without port is reached on 443, or 80 when insecure; a mirror
// named docker.io is served by registry-1.docker.io.
func ownHost(mirror string, insecure bool) func(string, int) bool {
	if mirror == "" {
		return func(string, int) bool { return false }
	}
	host, port := strings.ToLower(mirror), ""
	if h, p, err := net.SplitHostPort(mirror); err == nil {
		host, port = strings.ToLower(h), p
	}
	if host == "docker.io" {
		host = "registry-1.docker.io"
	}
	return func(h string, p int) bool {
		if !strings.EqualFold(strings.Trim(h, "[]"), strings.Trim(host, "[]")) {
			return false
		}
		if port != "" {
			return port == strconv.Itoa(p)
		}
		return p == 443 || (insecure && p == 80)
	}
}

// proxy is the SystemContext's DockerProxy: every request goes through the
// session, whatever the environment says.
func (s *session) proxy(u *url.URL) (*url.URL, error) {
	hostport := u.Host
	if u.Port() == "" {
		port := "443"
		if u.Scheme == "http" {
			port = "80"
		}
		hostport = net.JoinHostPort(u.Hostname(), port)
	}
	clean := url.URL{Scheme: u.Scheme, Host: u.Host, Path: u.Path}
	s.mu.Lock()
	s.urls[strings.ToLower(hostport)] = clean.String()
	s.mu.Unlock()
	return s.URL(), nil
}

func (s *session) url(host string, port int) string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.urls[strings.ToLower(net.JoinHostPort(host, strconv.Itoa(port)))]
}

// explain replaces containers/image's error for a connection the guard
// refused or could not make by the guard's own: the policy's refusal, or
// the real lookup or dial error (containers/image only sees a SOCKS reply
// code).
func (s *session) explain(err error) error {
	if err == nil {
		return nil
	}
	if d := s.Denied(); d != nil {
		return d
	}
	if m := socksTargetRE.FindStringSubmatch(err.Error()); m != nil {
		if f := s.Failure(m[1]); f != nil {
			return f
		}
	}
	return err
}

// systemContext returns a containers/image context that uses exactly cred
// (nil: anonymous), connects only through the guard session s, and uses no
// configuration from the host.
func (i *Importer) systemContext(insecure bool, cred *Credential, s *session) *types.SystemContext {
	sys := &types.SystemContext{
		SystemRegistriesConfPath:    emptyFile,
		SystemRegistriesConfDirPath: noSuchPath,
		RegistriesDirPath:           noSuchPath,
		DockerPerHostCertDirPath:    noSuchPath,
		BlobInfoCacheDir:            blobInfoCacheDir,
		DockerRegistryUserAgent:     i.opts.UserAgent,
		// A non-nil DockerAuthConfig keeps containers/image from reading
		// auth files and credential helpers.
		DockerAuthConfig:            &types.DockerAuthConfig{},
		DockerInsecureSkipTLSVerify: types.OptionalBoolFalse,
		// Every request, of every client containers/image makes for this
		// context, goes through the egress guard; this replaces the
		// environment's HTTP_PROXY/HTTPS_PROXY/NO_PROXY, which are never
		// honoured.
		DockerProxy: s.proxy,
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
// headDone says a manifest HEAD was answered already (not with a usable
// digest): only the GET is left to do.
func resolve(ctx context.Context, sys *types.SystemContext, named reference.Named, headDone bool) (digest.Digest, error) {
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
	var d digest.Digest
	if headDone {
		d, err = getDigest(ctx, sys, ref)
	} else {
		d, err = docker.GetDigest(ctx, sys, ref)
	}
	switch {
	case err == nil || headDone:
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
		return "", pinMismatch(named, d)
	}
	return d, nil
}

// pinMismatch is the error for a registry that answered digest d for a
// reference pinned to another.
func pinMismatch(named reference.Named, d digest.Digest) error {
	lookup := named
	if canonical, ok := named.(reference.Canonical); ok {
		lookup, _ = reference.WithDigest(reference.TrimNamed(named), canonical.Digest())
	}
	return NewPermanent(fmt.Errorf("registry answered digest %s for %s", d, lookup))
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
// mirror's digest reference, or the failed step and its error. It adds the
// blob bytes it copied (not those the mirror had) to copied.
func (i *Importer) mirror(ctx context.Context, guard *egress.Guard, srcSys *types.SystemContext, src *session, repo reference.Named, dgst digest.Digest, m *Mirror, copied *int64) (string, string, error) {
	op := "mirroring " + repo.Name() + "@" + dgst.String() + " to " + m.Repository
	dst, err := reference.ParseNormalizedNamed(m.Repository)
	if err != nil {
		return "", op, NewPermanent(fmt.Errorf("invalid mirror repository %q: %w", m.Repository, err))
	}
	// Pushing under a tag (which also stores the manifest by digest) keeps
	// registry garbage collection from deleting the mirrored generation.
	dstTagged, err := reference.WithTag(dst, MirrorTag(dgst.String()))
	if err != nil {
		return "", op, NewPermanent(err)
	}
	dstDigested, err := reference.WithDigest(dst, dgst)
	if err != nil {
		return "", op, NewPermanent(err)
	}
	srcDigested, err := reference.WithDigest(repo, dgst)
	if err != nil {
		return "", op, NewPermanent(err)
	}
	op = "mirroring " + srcDigested.String() + " to " + dstTagged.String()
	srcRef, err := docker.NewReference(srcDigested)
	if err != nil {
		return "", op, NewPermanent(err)
	}
	var dstRef types.ImageReference
	dstRef, err = docker.NewReference(dstTagged)
	if err != nil {
		return "", op, NewPermanent(err)
	}
	if i.blobs != nil {
		// Blobs the mirror holds in other repositories are mounted, not
		// uploaded: this copy read the manifest from the source with the
		// importing namespace's credentials.
		dstRef = cachedDestination{ImageReference: dstRef, cache: i.blobs.forMirror(reference.Domain(dst), m.Credential)}
	}
	// The mirror's own host:port is allowed even when the allow list does
	// not name it (it is the configured mirror); the deny list and the
	// always-denied networks still apply to it, and the whole policy to
	// every other host it sends the client to.
	dstSession, err := i.newSession(guard, reference.Domain(dst), m.Insecure)
	if err != nil {
		return "", op, err
	}
	defer dstSession.Close()
	dstSys := i.systemContext(m.Insecure, m.Credential, dstSession)
	explain := func(err error) error {
		if d := src.Denied(); d != nil {
			return d
		}
		return src.explain(dstSession.explain(err))
	}

	// Signature verification is the admission side's business; the copy
	// itself must not depend on /etc/containers/policy.json.
	policyCtx, err := signature.NewPolicyContext(&signature.Policy{Default: signature.PolicyRequirements{signature.NewPRInsecureAcceptAnything()}})
	if err != nil {
		return "", op, err
	}
	defer func() { _ = policyCtx.Destroy() }()

	progress := make(chan types.ProgressProperties, 16)
	counted := make(chan struct{})
	go func() {
		defer close(counted)
		for p := range progress {
			if p.Event == types.ProgressEventDone {
				*copied += int64(p.Offset)
			}
		}
	}()
	pushed, err := copy.Image(ctx, policyCtx, dstRef, srcRef, &copy.Options{
		Progress:             progress,
		ProgressInterval:     time.Hour, // only the Done events are used
		SourceCtx:            srcSys,
		DestinationCtx:       dstSys,
		ImageListSelection:   copy.CopyAllImages,
		PreserveDigests:      true,
		MaxParallelDownloads: uint(i.opts.ParallelCopies),
		// Signatures are not part of the digest, and most registries
		// cannot store containers/image's lookaside ones.
		RemoveSignatures: true,
	})
	close(progress)
	<-counted
	if err != nil {
		return "", op, explain(err)
	}
	got, err := manifest.Digest(pushed)
	if err != nil {
		return "", op, err
	}
	if got != dgst {
		return "", op, NewPermanent(fmt.Errorf("the mirror received a manifest with digest %s, refusing to use a rewritten image", got))
	}
	// Ask the mirror itself, so a registry that rewrote what it stored is
	// caught too. The quick client sends only the manifest HEAD when it
	// knows the mirror's ping (and token) already, where containers/image
	// would ping again (twice for an insecure mirror: https, then http).
	verifying := "verifying mirrored " + dstDigested.String()
	q := i.newQuickClient(dstSession, m.Insecure, registryHost(dst))
	defer q.close()
	switch got, verdict := i.quickResolve(ctx, q, m.Insecure, m.Credential, dstDigested); verdict {
	case quickResolved:
		return dstDigested.String(), "", nil
	case quickMismatch:
		return "", verifying, NewPermanent(fmt.Errorf("the mirror serves digest %s, refusing to use a rewritten image", got))
	}
	check, err := docker.NewReference(dstDigested)
	if err != nil {
		return "", op, NewPermanent(err)
	}
	if got, err := docker.GetDigest(ctx, dstSys, check); err != nil {
		return "", verifying, explain(err)
	} else if got != "" && got != dgst {
		return "", verifying, NewPermanent(fmt.Errorf("the mirror serves digest %s, refusing to use a rewritten image", got))
	}
	return dstDigested.String(), "", nil
}
