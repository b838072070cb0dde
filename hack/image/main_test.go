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

package main

import (
	"archive/tar"
	"io"
	"os"
	"path/filepath"
	"testing"

	"github.com/google/go-containerregistry/pkg/v1/mutate"
)

// The image holds the binary, CA certificates, a nonroot user and /tmp,
// and runs the binary as 65532.
func TestImage(t *testing.T) {
	dir := t.TempDir()
	bin, cas := filepath.Join(dir, "tagger-apiserver"), filepath.Join(dir, "ca.crt")
	if err := os.WriteFile(bin, []byte("binary"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(cas, []byte("certificates"), 0o644); err != nil {
		t.Fatal(err)
	}
	img, err := Image(bin, cas, "arm64")
	if err != nil {
		t.Fatal(err)
	}
	cfg, err := img.ConfigFile()
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Architecture != "arm64" || cfg.OS != "linux" || cfg.Config.User != "65532:65532" || len(cfg.Config.Entrypoint) != 1 || cfg.Config.Entrypoint[0] != "/usr/local/bin/tagger-apiserver" {
		t.Errorf("config %+v", cfg)
	}
	files := map[string]string{}
	tr := tar.NewReader(mutate.Extract(img))
	for {
		h, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(tr)
		files[h.Name] = string(b)
	}
	for name, want := range map[string]string{"usr/local/bin/tagger-apiserver": "binary", "etc/ssl/certs/ca-certificates.crt": "certificates", "etc/passwd": "root:x:0:0:root:/root:/sbin/nologin\nnonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin\n"} {
		if got, ok := files[name]; !ok || got != want {
			t.Errorf("%s: %q %v", name, got, ok)
		}
	}
	if _, ok := files["tmp"]; !ok {
		if _, ok := files["tmp/"]; !ok {
			t.Errorf("no /tmp in %v", files)
		}
	}
	d1, _ := img.Digest()
	again, _ := Image(bin, cas, "arm64")
	if d2, _ := again.Digest(); d1 != d2 {
		t.Errorf("not reproducible: %s, then %s", d1, d2)
	}
}
