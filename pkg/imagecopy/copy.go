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

package imagecopy

import (
	"archive/tar"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"

	"github.com/opencontainers/go-digest"
	"go.podman.io/image/v5/copy"
	"go.podman.io/image/v5/docker"
	"go.podman.io/image/v5/manifest"
	"go.podman.io/image/v5/signature"
	"go.podman.io/image/v5/transports"
	"go.podman.io/image/v5/types"

	// The transports SOURCE and DEST may name.
	_ "go.podman.io/image/v5/directory"
	_ "go.podman.io/image/v5/docker/archive"
	_ "go.podman.io/image/v5/oci/archive"
	_ "go.podman.io/image/v5/oci/layout"
)

// Transports are the local transports push and pull accept.
var Transports = []string{"oci-archive", "docker-archive", "oci", "dir"}

// ParseReference parses a containers/image reference such as
// "oci-archive:app.tar" or "docker-archive:app.tar:app:v1". A bare path is
// accepted too: for a push, a directory is "oci:" and a file is an
// oci-archive or docker-archive as its content says; for a pull, a bare
// path is an oci-archive, which holds every kind of image.
func ParseReference(ref string, forPush bool) (types.ImageReference, error) {
	if name, within, ok := strings.Cut(ref, ":"); ok && isTransport(name) {
		t := transports.Get(name)
		if t == nil {
			return nil, fmt.Errorf("transport %q is not available in this build", name)
		}
		parsed, err := t.ParseReference(within)
		if err != nil {
			return nil, fmt.Errorf("invalid %s reference %q: %w", name, within, err)
		}
		return parsed, nil
	} else if ok && (name == "docker" || strings.Contains(name, ".") || name == "localhost") {
		return nil, fmt.Errorf("%q is a registry reference: push and pull move images between local files and the cluster; use one of %s", ref, strings.Join(Transports, ":, ")+":")
	}
	if !forPush {
		return ParseReference("oci-archive:"+ref, false)
	}
	fi, err := os.Stat(ref)
	if err != nil {
		return nil, fmt.Errorf("%q: %w (give a file or directory, or a reference such as oci-archive:app.tar)", ref, err)
	}
	if fi.IsDir() {
		return ParseReference("oci:"+ref, true)
	}
	kind, err := sniffArchive(ref)
	if err != nil {
		return nil, err
	}
	return ParseReference(kind+":"+ref, true)
}

func isTransport(name string) bool {
	for _, t := range Transports {
		if t == name {
			return true
		}
	}
	return false
}

// sniffArchive tells an OCI archive (oci-layout, index.json) from a docker
// archive (manifest.json) by its tar entries.
func sniffArchive(path string) (string, error) {
	f, err := os.Open(path)
	if err != nil {
		return "", err
	}
	defer f.Close()
	tr := tar.NewReader(f)
	docker := false
	for {
		h, err := tr.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return "", fmt.Errorf("%s is not a tar archive (%v): give oci-archive:, docker-archive: or oci: explicitly", path, err)
		}
		switch filepath.Clean(h.Name) {
		case "oci-layout", "index.json":
			return "oci-archive", nil
		case "manifest.json":
			docker = true
		}
	}
	if docker {
		return "docker-archive", nil
	}
	return "", fmt.Errorf("%s is neither an OCI archive nor a docker archive", path)
}

// hermetic returns a containers/image context that reads no configuration
// of the host; the relay, when given, is plain http on 127.0.0.1 and wants
// its own credentials.
func hermetic(relay *Relay) *types.SystemContext {
	sys := &types.SystemContext{
		SystemRegistriesConfPath:    os.DevNull,
		SystemRegistriesConfDirPath: "/nonexistent/tagger-hermetic",
		RegistriesDirPath:           "/nonexistent/tagger-hermetic",
		BlobInfoCacheDir:            "/dev/null/tagger-blob-info-cache",
	}
	if relay != nil {
		sys.DockerInsecureSkipTLSVerify = types.OptionalBoolTrue
		sys.DockerAuthConfig = &types.DockerAuthConfig{Username: relayUser, Password: relay.password}
		sys.DockerPerHostCertDirPath = "/nonexistent/tagger-hermetic"
	}
	return sys
}

// CopyOptions are common to push and pull.
type CopyOptions struct {
	// ReportWriter receives containers/image's progress; nil is quiet.
	ReportWriter io.Writer
	// Parallel is the number of blobs moved at once; 0 means
	// containers/image's default (6).
	Parallel int
	// ChunkSize overrides DefaultChunkSize for uploads; negative sends each
	// blob in one request.
	ChunkSize int64
}

// PushOptions say what to push where.
type PushOptions struct {
	Target
	CopyOptions
	// Source is the local image, a reference or a path (see ParseReference).
	Source string
	// Tag is the mirror tag the push moves; empty means "latest".
	Tag string
}

// PushResult is what a push recorded.
type PushResult struct {
	// Digest is the pushed manifest's (or index's) digest.
	Digest digest.Digest
	// ImageReference is the new generation's digest reference in the mirror.
	ImageReference string
}

// Push copies Source, every platform and digests unchanged, into the
// Image's mirror repository; the server records it as a new generation.
func Push(ctx context.Context, o PushOptions) (PushResult, error) {
	src, err := ParseReference(o.Source, true)
	if err != nil {
		return PushResult{}, err
	}
	tag := o.Tag
	if tag == "" {
		tag = "latest"
	}
	relay, err := StartRelay(o.Target, true)
	if err != nil {
		return PushResult{}, err
	}
	defer relay.Close()
	if o.ChunkSize != 0 {
		relay.ChunkSize = max(o.ChunkSize, 0)
	}
	dst, err := docker.ParseReference("//" + relay.Reference() + ":" + tag)
	if err != nil {
		return PushResult{}, err
	}
	// A docker archive holds uncompressed layers and no manifest of its
	// own: its digest is made by the copy, so there is none to preserve.
	preserve := src.Transport().Name() != "docker-archive"
	pushed, err := copyImage(ctx, dst, src, hermetic(nil), hermetic(relay), preserve, o.CopyOptions)
	if err != nil {
		return PushResult{}, relayError("pushing "+transports.ImageName(src), relay, err)
	}
	d, err := manifest.Digest(pushed)
	if err != nil {
		return PushResult{}, err
	}
	return PushResult{Digest: d}, nil
}

// PullOptions say what to pull where.
type PullOptions struct {
	Target
	CopyOptions
	// Digest is the generation's manifest digest.
	Digest digest.Digest
	// Dest is the local reference or path (see ParseReference).
	Dest string
}

// Pull copies the generation Digest of the Image, every platform and
// digests unchanged, to Dest. A multi-platform image needs an OCI
// destination (oci-archive:, oci:); docker archives hold one image.
func Pull(ctx context.Context, o PullOptions) error {
	if err := o.Digest.Validate(); err != nil {
		return fmt.Errorf("invalid digest %q: %w", o.Digest, err)
	}
	dst, err := ParseReference(o.Dest, false)
	if err != nil {
		return err
	}
	p, err := newPuller(o.Target)
	if err != nil {
		return err
	}
	src := pullReference{p: p, digest: o.Digest}
	oci := dst.Transport().Name() == "oci-archive" || dst.Transport().Name() == "oci"
	if !oci {
		is, err := src.NewImageSource(ctx, nil)
		if err != nil {
			return pullError(o.Digest, p, err)
		}
		_, mime, err := is.GetManifest(ctx, nil)
		_ = is.Close()
		if err != nil {
			return pullError(o.Digest, p, err)
		}
		if manifest.MIMETypeIsMultiImage(mime) {
			return fmt.Errorf("%s is a multi-platform image (an index): %s holds a single image; pull to oci-archive:FILE or oci:DIR instead", o.Digest, dst.Transport().Name())
		}
	}
	if _, err := copyImage(ctx, dst, src, hermetic(nil), hermetic(nil), oci, o.CopyOptions); err != nil {
		return pullError(o.Digest, p, err)
	}
	return nil
}

// pullError prefers the API server's own refusal, which says what to do,
// to the error containers/image made of it.
func pullError(d digest.Digest, p *puller, err error) error {
	if apiErr := p.Err(); apiErr != nil {
		return fmt.Errorf("pulling %s: %w", d, apiErr)
	}
	return fmt.Errorf("pulling %s: %w", d, err)
}

func copyImage(ctx context.Context, dst, src types.ImageReference, srcSys, dstSys *types.SystemContext, preserve bool, o CopyOptions) ([]byte, error) {
	policy, err := signature.NewPolicyContext(&signature.Policy{Default: signature.PolicyRequirements{signature.NewPRInsecureAcceptAnything()}})
	if err != nil {
		return nil, err
	}
	defer func() { _ = policy.Destroy() }()
	return copy.Image(ctx, policy, dst, src, &copy.Options{
		SourceCtx:            srcSys,
		DestinationCtx:       dstSys,
		ImageListSelection:   copy.CopyAllImages,
		PreserveDigests:      preserve,
		RemoveSignatures:     true,
		ReportWriter:         o.ReportWriter,
		MaxParallelDownloads: uint(max(o.Parallel, 0)),
	})
}

// relayError prefers the API server's own refusal, which says what to do,
// to the registry error containers/image made of it.
func relayError(what string, relay *Relay, err error) error {
	if apiErr := relay.Err(); apiErr != nil {
		return fmt.Errorf("%s: %w", what, apiErr)
	}
	return fmt.Errorf("%s: %w", what, err)
}
