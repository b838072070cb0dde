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

// Command image builds Tagger's server image without a container daemon:
// a static tagger-apiserver (built by "make image") and the CA certificates
// of this machine on an empty base, running as the nonroot user 65532, the
// same layout as the Containerfile. It writes a docker-archive (load it with
// "podman load", or copy it with "skopeo copy docker-archive:FILE docker://...")
// and, with --push, pushes it to a registry with the credentials of
// ~/.docker/config.json.
//
//	go run ./hack/image --binary bin/linux_amd64/tagger-apiserver --tag quay.io/tagger/tagger-apiserver:0.1.0 --out bin/tagger-apiserver.tar [--push]
package main

import (
	"archive/tar"
	"bytes"
	"flag"
	"fmt"
	"io"
	"os"
	"runtime"
	"time"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
)

func main() {
	binary := flag.String("binary", "", "the static tagger-apiserver to put into the image")
	tag := flag.String("tag", "quay.io/tagger/tagger-apiserver:0.1.0", "the image's name and tag")
	out := flag.String("out", "", "write a docker-archive here")
	push := flag.Bool("push", false, "push to the registry of --tag")
	insecure := flag.Bool("insecure", false, "the registry of --tag speaks plain http")
	arch := flag.String("arch", runtime.GOARCH, "the binary's architecture")
	cas := flag.String("ca-certificates", "/etc/ssl/certs/ca-certificates.crt", "CA bundle for the image's /etc/ssl/certs")
	flag.Parse()
	if err := build(*binary, *tag, *out, *push, *insecure, *arch, *cas); err != nil {
		fmt.Fprintln(os.Stderr, "image:", err)
		os.Exit(1)
	}
}

func build(binary, tag, out string, push, insecure bool, arch, cas string) error {
	if binary == "" || (out == "" && !push) {
		return fmt.Errorf("need --binary, and --out or --push")
	}
	var opts []name.Option
	if insecure {
		opts = append(opts, name.Insecure)
	}
	ref, err := name.NewTag(tag, opts...)
	if err != nil {
		return err
	}
	img, err := Image(binary, cas, arch)
	if err != nil {
		return err
	}
	if out != "" {
		if err := tarball.WriteToFile(out, ref, img); err != nil {
			return err
		}
		fmt.Println("wrote", out)
	}
	if push {
		if err := remote.Write(ref, img, remote.WithAuthFromKeychain(authn.DefaultKeychain)); err != nil {
			return err
		}
		d, _ := img.Digest()
		fmt.Printf("pushed %s@%s\n", ref.Context(), d)
	}
	return nil
}

// Image returns the image: one layer with /usr/local/bin/tagger-apiserver,
// /etc/ssl/certs/ca-certificates.crt, /etc/passwd naming nonroot, and /tmp.
func Image(binary, cas, arch string) (v1.Image, error) {
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	epoch := time.Unix(0, 0)
	dir := func(name string, mode int64) error {
		return tw.WriteHeader(&tar.Header{Typeflag: tar.TypeDir, Name: name, Mode: mode, ModTime: epoch})
	}
	file := func(name string, mode int64, uid int, content io.Reader, size int64) error {
		if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeReg, Name: name, Mode: mode, Size: size, Uid: uid, Gid: uid, ModTime: epoch}); err != nil {
			return err
		}
		_, err := io.Copy(tw, content)
		return err
	}
	for _, d := range []string{"etc/", "etc/ssl/", "etc/ssl/certs/", "usr/", "usr/local/", "usr/local/bin/"} {
		if err := dir(d, 0o755); err != nil {
			return nil, err
		}
	}
	if err := dir("tmp/", 0o1777); err != nil {
		return nil, err
	}
	passwd := "root:x:0:0:root:/root:/sbin/nologin\nnonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin\n"
	if err := file("etc/passwd", 0o644, 0, bytes.NewBufferString(passwd), int64(len(passwd))); err != nil {
		return nil, err
	}
	for _, f := range []struct{ src, dst string }{{cas, "etc/ssl/certs/ca-certificates.crt"}, {binary, "usr/local/bin/tagger-apiserver"}} {
		fh, err := os.Open(f.src)
		if err != nil {
			return nil, err
		}
		st, err := fh.Stat()
		if err != nil {
			fh.Close()
			return nil, err
		}
		err = file(f.dst, 0o755, 0, fh, st.Size())
		fh.Close()
		if err != nil {
			return nil, err
		}
	}
	if err := tw.Close(); err != nil {
		return nil, err
	}
	b := buf.Bytes()
	layer, err := tarball.LayerFromOpener(func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(b)), nil })
	if err != nil {
		return nil, err
	}
	img, err := mutate.AppendLayers(empty.Image, layer)
	if err != nil {
		return nil, err
	}
	cfg, err := img.ConfigFile()
	if err != nil {
		return nil, err
	}
	cfg = cfg.DeepCopy()
	cfg.OS, cfg.Architecture = "linux", arch
	cfg.Created = v1.Time{Time: epoch}
	cfg.Config.Entrypoint = []string{"/usr/local/bin/tagger-apiserver"}
	cfg.Config.User = "65532:65532"
	cfg.Config.Env = []string{"TMPDIR=/tmp", "SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt"}
	cfg.Config.ExposedPorts = map[string]struct{}{"8443/tcp": {}}
	return mutate.ConfigFile(img, cfg)
}
