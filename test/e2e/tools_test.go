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

package e2e

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"strings"
	"syscall"
	"time"
)

// tool is a binary built from one of the nested modules under tools/.
type tool struct {
	// name names the cache directory, with the version: <name>-<version>.
	name string
	// module is the nested module's directory, relative to this package.
	module string
	// versionOf is the module whose version names the cache directory.
	versionOf string
	// pkgs are the commands to build: binary name to import path.
	pkgs map[string]string
	// ldflags are extra linker flags; %s is replaced by the version.
	ldflags string
}

var (
	kubernetesTools = tool{
		name:      "kubernetes",
		module:    "tools/kube-apiserver",
		versionOf: "k8s.io/kubernetes",
		pkgs: map[string]string{
			"kube-apiserver":          "k8s.io/kubernetes/cmd/kube-apiserver",
			"kube-controller-manager": "k8s.io/kubernetes/cmd/kube-controller-manager",
		},
		ldflags: "-X k8s.io/component-base/version.gitVersion=%[1]s -X k8s.io/component-base/version.gitMajor=%[2]s -X k8s.io/component-base/version.gitMinor=%[3]s",
	}
	etcdTool = tool{
		name:      "etcd",
		module:    "tools/etcd",
		versionOf: "go.etcd.io/etcd/server/v3",
		pkgs:      map[string]string{"etcd": "."},
	}
)

// cacheRoot is where built tools are kept across runs: $XDG_CACHE_HOME or
// ~/.cache, then tagger-e2e.
func cacheRoot() (string, error) {
	dir, err := os.UserCacheDir()
	if err != nil {
		return "", err
	}
	return filepath.Join(dir, "tagger-e2e"), nil
}

// build returns the paths of t's binaries, building them into the cache
// unless a build from the same go.mod, go.sum and Go version is there.
// Concurrent test runs wait for each other through a lock file.
func (t tool) build(logf func(string, ...any)) (map[string]string, error) {
	root, err := cacheRoot()
	if err != nil {
		return nil, err
	}
	modDir, err := filepath.Abs(t.module)
	if err != nil {
		return nil, err
	}
	gomod, err := os.ReadFile(filepath.Join(modDir, "go.mod"))
	if err != nil {
		return nil, err
	}
	gosum, err := os.ReadFile(filepath.Join(modDir, "go.sum"))
	if err != nil {
		return nil, err
	}
	m := regexp.MustCompile(`(?m)^\s*(?:require\s+)?` + regexp.QuoteMeta(t.versionOf) + `\s+(v\S+)`).FindSubmatch(gomod)
	if m == nil {
		return nil, fmt.Errorf("%s/go.mod does not require %s", t.module, t.versionOf)
	}
	version := string(m[1])
	sum := sha256.Sum256([]byte(fmt.Sprint(string(gomod), string(gosum), runtime.Version(), t.pkgs, t.ldflags)))
	stamp := hex.EncodeToString(sum[:])

	dir := filepath.Join(root, t.name+"-"+version)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, err
	}
	lock, err := os.OpenFile(filepath.Join(dir, ".lock"), os.O_CREATE|os.O_RDWR, 0o644)
	if err != nil {
		return nil, err
	}
	defer lock.Close()
	if err := syscall.Flock(int(lock.Fd()), syscall.LOCK_EX); err != nil {
		return nil, err
	}
	defer syscall.Flock(int(lock.Fd()), syscall.LOCK_UN) //nolint:errcheck

	bins := map[string]string{}
	for name := range t.pkgs {
		bins[name] = filepath.Join(dir, name)
	}
	if old, err := os.ReadFile(filepath.Join(dir, ".stamp")); err == nil && strings.TrimSpace(string(old)) == stamp {
		ok := true
		for _, b := range bins {
			if _, err := os.Stat(b); err != nil {
				ok = false
			}
		}
		if ok {
			return bins, nil
		}
	}
	_ = os.Remove(filepath.Join(dir, ".stamp"))

	ldflags := "-s -w"
	if t.ldflags != "" {
		major, minor, _ := strings.Cut(strings.TrimPrefix(version, "v"), ".")
		minor, _, _ = strings.Cut(minor, ".")
		ldflags += " " + fmt.Sprintf(t.ldflags, version, major, minor)
	}
	for name, p := range t.pkgs {
		start := time.Now()
		logf("building %s %s into %s (the first build takes minutes)", p, version, dir)
		tmp := filepath.Join(dir, "."+name+".tmp")
		cmd := exec.Command("nice", "-n", "10", "go", "build", "-trimpath", "-ldflags", ldflags, "-o", tmp, p)
		cmd.Dir = modDir
		// The root module's GOFLAGS (its build tags) do not concern these
		// modules; their go.sum is complete, so -mod=readonly holds.
		cmd.Env = append(os.Environ(), "GOFLAGS=-buildvcs=false -mod=readonly", "CGO_ENABLED=0", "GOWORK=off")
		out, err := cmd.CombinedOutput()
		if err != nil {
			return nil, fmt.Errorf("building %s in %s: %v\n%s", p, t.module, err, out)
		}
		if err := os.Rename(tmp, filepath.Join(dir, name)); err != nil {
			return nil, err
		}
		logf("built %s in %s", name, time.Since(start).Round(time.Second))
	}
	if err := os.WriteFile(filepath.Join(dir, ".stamp"), []byte(stamp+"\n"), 0o644); err != nil {
		return nil, err
	}
	return bins, nil
}

// buildTagger builds tagger-apiserver from this repository into dir.
func buildTagger(dir string) (string, error) {
	bin := filepath.Join(dir, "tagger-apiserver")
	cmd := exec.Command("go", "build", "-tags=containers_image_openpgp", "-o", bin, "tagger.dev/tagger/cmd/tagger-apiserver")
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("building tagger-apiserver: %v\n%s", err, out)
	}
	return bin, nil
}

// buildPlugins builds the kubectl plugins of this repository (cmd/kubectl-*)
// into dir, which kubectl then finds on PATH. There may be none yet.
func buildPlugins(dir string) ([]string, error) {
	matches, err := filepath.Glob("../../cmd/kubectl-*")
	if err != nil {
		return nil, err
	}
	var built []string
	for _, m := range matches {
		if fi, err := os.Stat(m); err != nil || !fi.IsDir() {
			continue
		}
		name := filepath.Base(m)
		cmd := exec.Command("go", "build", "-tags=containers_image_openpgp", "-o", filepath.Join(dir, name), "tagger.dev/tagger/cmd/"+name)
		cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
		if out, err := cmd.CombinedOutput(); err != nil {
			return nil, fmt.Errorf("building %s: %v\n%s", name, err, out)
		}
		built = append(built, name)
	}
	return built, nil
}
