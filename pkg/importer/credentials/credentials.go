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

// Package credentials turns Kubernetes image pull Secrets and docker/containers
// auth files into importer.Credentials for one image, matching registry keys
// the way kubelet does.
package credentials

import (
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"path"
	"sort"
	"strings"

	"go.podman.io/image/v5/docker/reference"

	"tagger.dev/tagger/pkg/importer"
)

// Secret types and data keys understood by ParseSecret. They are the values of
// corev1.SecretTypeDockerConfigJson, corev1.SecretTypeDockercfg and their keys;
// repeated here so this package does not need k8s.io/api.
const (
	SecretTypeDockerConfigJSON = "kubernetes.io/dockerconfigjson"
	DockerConfigJSONKey        = ".dockerconfigjson"
	SecretTypeDockercfg        = "kubernetes.io/dockercfg"
	DockercfgKey               = ".dockercfg"
)

// DockerConfig maps registry keys ("registry.example.com",
// "https://index.docker.io/v1/", "registry.example.com/team") to credentials,
// as in the "auths" section of a docker config.json.
type DockerConfig map[string]DockerConfigEntry

// DockerConfigEntry is one entry of a DockerConfig.
type DockerConfigEntry struct {
	Username      string `json:"username,omitempty"`
	Password      string `json:"password,omitempty"`
	Auth          string `json:"auth,omitempty"`
	Email         string `json:"email,omitempty"`
	IdentityToken string `json:"identitytoken,omitempty"`
	RegistryToken string `json:"registrytoken,omitempty"`
}

// ParseDockerConfigJSON parses a docker config.json or containers auth.json
// document ({"auths": {...}}), the format of kubernetes.io/dockerconfigjson
// Secrets. Other top-level fields (credHelpers, credsStore...) are ignored:
// Tagger never runs helper programs.
func ParseDockerConfigJSON(data []byte) (DockerConfig, error) {
	var doc struct {
		Auths DockerConfig `json:"auths"`
	}
	if err := json.Unmarshal(data, &doc); err != nil {
		return nil, fmt.Errorf("parsing docker config.json: %w", err)
	}
	return doc.Auths, nil
}

// ParseDockercfg parses a legacy ~/.dockercfg document, the bare registry map
// stored in kubernetes.io/dockercfg Secrets.
func ParseDockercfg(data []byte) (DockerConfig, error) {
	var cfg DockerConfig
	if err := json.Unmarshal(data, &cfg); err != nil {
		return nil, fmt.Errorf("parsing .dockercfg: %w", err)
	}
	return cfg, nil
}

// ParseSecret parses the data of a Secret of type
// kubernetes.io/dockerconfigjson or kubernetes.io/dockercfg.
func ParseSecret(secretType string, data map[string][]byte) (DockerConfig, error) {
	switch secretType {
	case SecretTypeDockerConfigJSON:
		b, ok := data[DockerConfigJSONKey]
		if !ok {
			return nil, fmt.Errorf("secret of type %s has no %s key", secretType, DockerConfigJSONKey)
		}
		return ParseDockerConfigJSON(b)
	case SecretTypeDockercfg:
		b, ok := data[DockercfgKey]
		if !ok {
			return nil, fmt.Errorf("secret of type %s has no %s key", secretType, DockercfgKey)
		}
		return ParseDockercfg(b)
	default:
		return nil, fmt.Errorf("secret type %q is not %s or %s", secretType, SecretTypeDockerConfigJSON, SecretTypeDockercfg)
	}
}

// ReadAuthFile reads a docker config.json or containers auth.json file. A
// missing file is not an error: it yields no credentials, like `podman pull`
// before the first `podman login`.
func ReadAuthFile(file string) (DockerConfig, error) {
	data, err := os.ReadFile(file)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	cfg, err := ParseDockerConfigJSON(data)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", file, err)
	}
	return cfg, nil
}

// AuthFile returns a function suitable for importer.Options.DefaultCredentials
// that reads file on every call, so logins made while Tagger runs are seen.
// An unreadable file yields no credentials: the import then runs anonymously
// and fails with the registry's own error.
func AuthFile(file string) func(image string) []importer.Credential {
	return func(image string) []importer.Credential {
		cfg, err := ReadAuthFile(file)
		if err != nil || cfg == nil {
			return nil
		}
		return Lookup([]DockerConfig{cfg}, image)
	}
}

// Credential converts an entry: "auth" (base64 user:password) wins over the
// username and password fields, as in docker and kubelet; identitytoken, or
// failing that registrytoken, becomes Token.
func (e DockerConfigEntry) Credential() (importer.Credential, error) {
	c := importer.Credential{Username: e.Username, Password: e.Password}
	if e.Auth != "" {
		decoded, err := base64.StdEncoding.DecodeString(strings.TrimSpace(e.Auth))
		if err != nil {
			return importer.Credential{}, fmt.Errorf("decoding auth field: %w", err)
		}
		user, pass, ok := strings.Cut(string(decoded), ":")
		if !ok {
			return importer.Credential{}, errors.New("auth field is not base64 of username:password")
		}
		c.Username, c.Password = user, pass
	}
	switch {
	case e.IdentityToken != "":
		c.Token = e.IdentityToken
	case e.RegistryToken != "":
		c.Token = e.RegistryToken
	}
	return c, nil
}

// Lookup returns the credentials of configs that apply to image, most specific
// key first (a key with a repository path before a bare host, an exact host
// before a wildcard); among equally specific keys, configs keep their order.
// Entries that cannot be decoded or carry no secret are skipped. Duplicates
// are dropped so each credential is tried once.
func Lookup(configs []DockerConfig, image string) []importer.Credential {
	named, err := reference.ParseNormalizedNamed(strings.TrimSpace(image))
	if err != nil {
		return nil
	}
	host := canonicalHost(reference.Domain(named))
	repo := reference.Path(named)

	type match struct {
		cred        importer.Credential
		pathLen     int
		wildcard    bool
		order, rank int
	}
	var matches []match
	order := 0
	for _, cfg := range configs {
		// Map iteration order is random; sort keys so results are stable.
		keys := make([]string, 0, len(cfg))
		for k := range cfg {
			keys = append(keys, k)
		}
		sort.Strings(keys)
		for _, k := range keys {
			order++
			key, ok := parseKey(k)
			if !ok || !key.matches(host, repo) {
				continue
			}
			cred, err := cfg[k].Credential()
			if err != nil || (cred.Username == "" && cred.Password == "" && cred.Token == "") {
				continue
			}
			matches = append(matches, match{cred: cred, pathLen: len(key.path), wildcard: strings.Contains(key.host, "*"), order: order})
		}
	}
	sort.SliceStable(matches, func(i, j int) bool {
		a, b := matches[i], matches[j]
		if a.pathLen != b.pathLen {
			return a.pathLen > b.pathLen
		}
		if a.wildcard != b.wildcard {
			return !a.wildcard
		}
		return a.order < b.order
	})
	var out []importer.Credential
	seen := map[importer.Credential]bool{}
	for _, m := range matches {
		if !seen[m.cred] {
			seen[m.cred] = true
			out = append(out, m.cred)
		}
	}
	return out
}

// registryKey is a parsed DockerConfig key.
type registryKey struct {
	host string // canonical, may hold "*" labels; includes the port if any
	path string // repository prefix without leading or trailing slash
}

// parseKey accepts "host", "host:port", "host/path", with or without a
// scheme. Docker Hub's "/v1/" and any "/v2/" API path are not repository
// prefixes, so they are dropped.
func parseKey(k string) (registryKey, bool) {
	k = strings.TrimSpace(k)
	if i := strings.Index(k, "://"); i >= 0 {
		k = k[i+3:]
	}
	host, p, _ := strings.Cut(k, "/")
	if host == "" {
		return registryKey{}, false
	}
	p = strings.Trim(p, "/")
	if p == "v1" || p == "v2" || strings.HasPrefix(p, "v1/") || strings.HasPrefix(p, "v2/") {
		p = ""
	}
	return registryKey{host: canonicalHost(strings.ToLower(host)), path: p}, true
}

// matches reports whether the key applies to repo on host. Like kubelet, a
// "*" matches exactly one DNS label, ports must be equal, and a path must be
// a prefix of the repository on a "/" boundary.
func (k registryKey) matches(host, repo string) bool {
	if !hostMatches(k.host, host) {
		return false
	}
	if k.path == "" {
		return true
	}
	return repo == k.path || strings.HasPrefix(repo, k.path+"/")
}

func hostMatches(pattern, host string) bool {
	pName, pPort := splitPort(pattern)
	hName, hPort := splitPort(host)
	if pPort != hPort {
		return false
	}
	pLabels := strings.Split(pName, ".")
	hLabels := strings.Split(hName, ".")
	if len(pLabels) != len(hLabels) {
		return false
	}
	for i := range pLabels {
		if ok, err := path.Match(pLabels[i], hLabels[i]); err != nil || !ok {
			return false
		}
	}
	return true
}

func splitPort(hostport string) (string, string) {
	if h, p, err := net.SplitHostPort(hostport); err == nil {
		return h, p
	}
	return hostport, ""
}

// canonicalHost folds Docker Hub's many names into "docker.io", the domain
// image references normalize to.
func canonicalHost(h string) string {
	switch h {
	case "docker.io", "index.docker.io", "registry-1.docker.io", "registry.hub.docker.com":
		return "docker.io"
	}
	return h
}
