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

// Package imagecopytest makes OCI images and archives for tests and
// benchmarks of push and pull, and reads archives back.
package imagecopytest

import (
	"archive/tar"
	"crypto/rand"
	"encoding/json"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/random"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
	"github.com/google/go-containerregistry/pkg/v1/types"
	"github.com/opencontainers/go-digest"
)

// Image returns an OCI image of layers random layers of size bytes each,
// for platform ("linux/amd64").
func Image(layers int, size int64, platform v1.Platform) (v1.Image, error) {
	img := mutate.MediaType(empty.Image, types.OCIManifestSchema1)
	img = mutate.ConfigMediaType(img, types.OCIConfigJSON)
	for i := 0; i < layers; i++ {
		l, err := random.Layer(size, types.OCILayer)
		if err != nil {
			return nil, err
		}
		if img, err = mutate.AppendLayers(img, l); err != nil {
			return nil, err
		}
	}
	cf, err := img.ConfigFile()
	if err != nil {
		return nil, err
	}
	cf = cf.DeepCopy()
	cf.OS, cf.Architecture, cf.Variant = platform.OS, platform.Architecture, platform.Variant
	return mutate.ConfigFile(img, cf)
}

// BigImage returns an OCI image with one uncompressed layer of size random
// bytes, written to dir first so that it never sits in memory.
func BigImage(dir string, size int64) (v1.Image, error) {
	path := filepath.Join(dir, "layer.tar")
	f, err := os.Create(path)
	if err != nil {
		return nil, err
	}
	tw := tar.NewWriter(f)
	if err := tw.WriteHeader(&tar.Header{Name: "random.bin", Mode: 0o644, Size: size, Typeflag: tar.TypeReg}); err != nil {
		return nil, err
	}
	if _, err := io.CopyN(tw, rand.Reader, size); err != nil {
		return nil, err
	}
	if err := tw.Close(); err != nil {
		return nil, err
	}
	if err := f.Close(); err != nil {
		return nil, err
	}
	l, err := tarball.LayerFromFile(path, tarball.WithMediaType(types.OCIUncompressedLayer))
	if err != nil {
		return nil, err
	}
	img := mutate.MediaType(empty.Image, types.OCIManifestSchema1)
	img = mutate.ConfigMediaType(img, types.OCIConfigJSON)
	return mutate.AppendLayers(img, l)
}

// Index returns a two-platform OCI index (linux/amd64, linux/arm64).
func Index(layers int, size int64) (v1.ImageIndex, error) {
	idx := mutate.IndexMediaType(empty.Index, types.OCIImageIndex)
	for _, p := range []v1.Platform{{OS: "linux", Architecture: "amd64"}, {OS: "linux", Architecture: "arm64"}} {
		img, err := Image(layers, size, p)
		if err != nil {
			return nil, err
		}
		idx = mutate.AppendManifests(idx, mutate.IndexAddendum{Add: img, Descriptor: v1.Descriptor{Platform: &p}})
	}
	return idx, nil
}

// WriteOCIArchive writes img (a v1.Image or v1.ImageIndex) as an OCI
// archive at path and returns its digest.
func WriteOCIArchive(path string, img any) (v1.Hash, error) {
	dir, err := os.MkdirTemp(filepath.Dir(path), "layout-")
	if err != nil {
		return v1.Hash{}, err
	}
	defer os.RemoveAll(dir)
	d, err := WriteOCILayout(dir, img)
	if err != nil {
		return v1.Hash{}, err
	}
	return d, TarDir(path, dir)
}

// WriteOCILayout writes img as an OCI layout directory and returns its digest.
func WriteOCILayout(dir string, img any) (v1.Hash, error) {
	p, err := layout.Write(dir, empty.Index)
	if err != nil {
		return v1.Hash{}, err
	}
	switch img := img.(type) {
	case v1.Image:
		if err := p.AppendImage(img); err != nil {
			return v1.Hash{}, err
		}
		return img.Digest()
	case v1.ImageIndex:
		if err := p.AppendIndex(img); err != nil {
			return v1.Hash{}, err
		}
		return img.Digest()
	}
	return v1.Hash{}, fmt.Errorf("not an image: %T", img)
}

// TarDir writes the files under dir to a tar at path.
func TarDir(path, dir string) error {
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	defer f.Close()
	tw := tar.NewWriter(f)
	err = filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil || p == dir {
			return err
		}
		rel, _ := filepath.Rel(dir, p)
		info, err := d.Info()
		if err != nil {
			return err
		}
		h, err := tar.FileInfoHeader(info, "")
		if err != nil {
			return err
		}
		h.Name = filepath.ToSlash(rel)
		if err := tw.WriteHeader(h); err != nil {
			return err
		}
		if d.IsDir() {
			return nil
		}
		src, err := os.Open(p)
		if err != nil {
			return err
		}
		defer src.Close()
		_, err = io.Copy(tw, src)
		return err
	})
	if err != nil {
		return err
	}
	if err := tw.Close(); err != nil {
		return err
	}
	return f.Close()
}

// Archive is what an OCI archive holds.
type Archive struct {
	// Digest is the digest of the single image or index it holds.
	Digest string
	// Blobs maps each blob digest to its size.
	Blobs map[string]int64
}

// ReadOCIArchive reads index.json and the blob list of an OCI archive.
func ReadOCIArchive(path string) (*Archive, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	a := &Archive{Blobs: map[string]int64{}}
	tr := tar.NewReader(f)
	for {
		h, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			return nil, err
		}
		name := filepath.ToSlash(filepath.Clean(h.Name))
		switch {
		case name == "index.json":
			var idx struct {
				Manifests []struct {
					Digest string `json:"digest"`
				} `json:"manifests"`
			}
			if err := json.NewDecoder(tr).Decode(&idx); err != nil {
				return nil, err
			}
			if len(idx.Manifests) != 1 {
				return nil, fmt.Errorf("index.json lists %d manifests, want 1", len(idx.Manifests))
			}
			a.Digest = idx.Manifests[0].Digest
		case filepath.Dir(filepath.Dir(name)) == "blobs" && h.Typeflag == tar.TypeReg:
			a.Blobs[filepath.Base(filepath.Dir(name))+":"+filepath.Base(name)] = h.Size
		}
	}
	if a.Digest == "" {
		return nil, fmt.Errorf("%s has no index.json", path)
	}
	return a, nil
}

// SameOCIArchive returns an error unless the OCI archive got holds the same
// image (or index) as want, blob for blob.
func SameOCIArchive(want, got string) error {
	w, err := ReadOCIArchive(want)
	if err != nil {
		return err
	}
	g, err := ReadOCIArchive(got)
	if err != nil {
		return err
	}
	if g.Digest != w.Digest || len(g.Blobs) != len(w.Blobs) {
		return fmt.Errorf("%s holds %s (%d blobs), want %s (%d blobs)", got, g.Digest, len(g.Blobs), w.Digest, len(w.Blobs))
	}
	for b, size := range w.Blobs {
		if g.Blobs[b] != size {
			return fmt.Errorf("%s: blob %s has %d bytes, want %d", got, b, g.Blobs[b], size)
		}
	}
	return nil
}

// DockerArchiveConfigDigest returns the digest of the config of the single
// image in a docker archive ("docker save" format).
func DockerArchiveConfigDigest(path string) (string, error) {
	files := map[string][]byte{}
	f, err := os.Open(path)
	if err != nil {
		return "", err
	}
	defer f.Close()
	tr := tar.NewReader(f)
	for {
		h, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			return "", err
		}
		if h.Typeflag != tar.TypeReg || h.Size > 1<<20 {
			continue // layers
		}
		b, err := io.ReadAll(tr)
		if err != nil {
			return "", err
		}
		files[filepath.Clean(h.Name)] = b
	}
	var m []struct {
		Config string `json:"Config"`
	}
	if err := json.Unmarshal(files["manifest.json"], &m); err != nil || len(m) != 1 {
		return "", fmt.Errorf("%s: manifest.json: %v (%d images)", path, err, len(m))
	}
	cfg, ok := files[filepath.Clean(m[0].Config)]
	if !ok {
		return "", fmt.Errorf("%s: no config %s", path, m[0].Config)
	}
	return digest.FromBytes(cfg).String(), nil
}
