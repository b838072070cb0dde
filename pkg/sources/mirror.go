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
// Package sources tells an import which credentials to present to a source
// registry and where to mirror: from Secrets and ConfigMaps in a cluster,
// from files and the embedded registry in local mode.
package sources

import (
	"fmt"
	"strings"

	"sigs.k8s.io/yaml"

	"tagger.dev/tagger/pkg/importer"
)

const (
	// MirrorSecretName is the Secret that configures the mirror registry,
	// looked up in the import's namespace and then in Tagger's own.
	MirrorSecretName = "mirror-registry-config"
	// LocalRegistryHostingNamespace and LocalRegistryHostingName locate the
	// KEP-1755 ConfigMap that local clusters (kind, minikube, k3d) publish.
	LocalRegistryHostingNamespace = "kube-public"
	LocalRegistryHostingName      = "local-registry-hosting"
	localRegistryHostingKey       = "localRegistryHosting.v1"
)

// RepositorySeparator joins namespace and Image name into one repository
// path component when the mirror config names a repository: "_" occurs in
// neither, so the join is one to one.
const RepositorySeparator = "_"

// ErrNoMirror explains how to configure a mirror.
var ErrNoMirror = fmt.Errorf("no mirror registry is configured: create the Secret %q (keys: address, username, password, token, insecure, repository) in this namespace or in Tagger's namespace, or publish the %s/%s ConfigMap",
	MirrorSecretName, LocalRegistryHostingNamespace, LocalRegistryHostingName)

// MirrorConfig is the content of a mirror-registry-config Secret.
type MirrorConfig struct {
	Address    string
	Username   string
	Password   string
	Token      string
	Insecure   bool
	Repository string
}

// MirrorConfigFromSecret reads the Secret's keys.
func MirrorConfigFromSecret(data map[string][]byte) (MirrorConfig, error) {
	get := func(k string) string { return strings.TrimSpace(string(data[k])) }
	cfg := MirrorConfig{
		Address:    get("address"),
		Username:   get("username"),
		Password:   get("password"),
		Token:      get("token"),
		Insecure:   strings.EqualFold(get("insecure"), "true"),
		Repository: strings.Trim(get("repository"), "/"),
	}
	if cfg.Address == "" {
		return cfg, fmt.Errorf("Secret %s has no \"address\"", MirrorSecretName)
	}
	return cfg, nil
}

// MirrorConfigFromLocalRegistryHosting reads the KEP-1755 ConfigMap data.
// Tagger copies through the cluster network, so hostFromClusterNetwork wins
// over host. Such registries are plain http, hence insecure.
func MirrorConfigFromLocalRegistryHosting(data map[string]string) (MirrorConfig, error) {
	var lrh struct {
		Host                   string `json:"host"`
		HostFromClusterNetwork string `json:"hostFromClusterNetwork"`
	}
	if err := yaml.Unmarshal([]byte(data[localRegistryHostingKey]), &lrh); err != nil {
		return MirrorConfig{}, fmt.Errorf("ConfigMap %s/%s: %w", LocalRegistryHostingNamespace, LocalRegistryHostingName, err)
	}
	host := lrh.HostFromClusterNetwork
	if host == "" {
		host = lrh.Host
	}
	if host == "" {
		return MirrorConfig{}, fmt.Errorf("ConfigMap %s/%s names no host", LocalRegistryHostingNamespace, LocalRegistryHostingName)
	}
	return MirrorConfig{Address: host, Insecure: true}, nil
}

// Mirror returns where the Image namespace/name goes in this mirror:
// "<address>/<namespace>/<name>", or "<address>/<repository>/<namespace>_<name>"
// for registries that give one repository (a Docker Hub or Quay
// organization, say).
//
// The mapping is one to one, so that no two tenants share a repository:
// namespaces are DNS labels and Image names DNS subdomains, neither holds a
// "/" or a "_", so the first "/" (or "_") after the prefix is where the
// namespace ends.
//
// Migration: before, the repository layout was "<namespace>-<name>", where
// "team/x-app" and "team-x/app" met. Generations recorded then keep their
// references, and pods keep pulling them; new imports and pushes go to
// "<namespace>_<name>". To pull old generations through images/pull,
// copy each old repository to its new name first (for example
// "crane cp <address>/<repository>/<namespace>-<name>:<tag>
// <address>/<repository>/<namespace>_<name>:<tag>" for its tagger-sha256-*
// tags), or import them again with mirroring.
func (c MirrorConfig) Mirror(namespace, name string) *importer.Mirror {
	address := c.Address
	for _, scheme := range []string{"https://", "http://"} {
		address = strings.TrimPrefix(address, scheme)
	}
	address = strings.TrimRight(address, "/")
	repo := address + "/" + namespace + "/" + name
	if c.Repository != "" {
		repo = address + "/" + c.Repository + "/" + namespace + RepositorySeparator + name
	}
	m := &importer.Mirror{Repository: repo, Insecure: c.Insecure}
	if c.Username != "" || c.Password != "" || c.Token != "" {
		m.Credential = &importer.Credential{Username: c.Username, Password: c.Password, Token: c.Token}
	}
	return m
}
