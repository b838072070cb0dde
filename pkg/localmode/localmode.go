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
// Package localmode runs what a cluster would otherwise provide, so Tagger
// can be tried on one machine: an embedded etcd, a bearer token for the
// local user and a kubeconfig that points kubectl at the server.
package localmode

import (
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"time"

	"go.etcd.io/etcd/server/v3/embed"
	"k8s.io/apiserver/pkg/authentication/authenticator"
	"k8s.io/apiserver/pkg/authentication/authenticatorfactory"
	"k8s.io/apiserver/pkg/authentication/user"
	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"
)

// LocalUser is the user a local-mode token authenticates as.
const LocalUser = "tagger-local-admin"

// Etcd is an embedded etcd server.
type Etcd struct {
	server *embed.Etcd
}

// StartEtcd starts etcd with its data under dir, listening on a free
// loopback port. The data is kept across restarts.
func StartEtcd(dir string) (*Etcd, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, err
	}
	cfg := embed.NewConfig()
	cfg.Name = "tagger"
	cfg.Dir = dir
	cfg.Logger = "zap"
	cfg.LogLevel = "error"
	client, _ := url.Parse("http://127.0.0.1:0")
	peer, _ := url.Parse("http://127.0.0.1:0")
	cfg.ListenClientUrls = []url.URL{*client}
	cfg.AdvertiseClientUrls = []url.URL{*client}
	cfg.ListenPeerUrls = []url.URL{*peer}
	cfg.AdvertisePeerUrls = []url.URL{*peer}
	cfg.InitialCluster = cfg.InitialClusterFromName(cfg.Name)
	server, err := embed.StartEtcd(cfg)
	if err != nil {
		return nil, fmt.Errorf("starting embedded etcd in %s: %w", dir, err)
	}
	select {
	case <-server.Server.ReadyNotify():
	case err := <-server.Err():
		server.Close()
		return nil, fmt.Errorf("embedded etcd: %w", err)
	case <-time.After(60 * time.Second):
		server.Close()
		return nil, errors.New("embedded etcd did not become ready in 60s")
	}
	return &Etcd{server: server}, nil
}

// Endpoint returns the client URL of the embedded etcd.
func (e *Etcd) Endpoint() string {
	return "http://" + e.server.Clients[0].Addr().String()
}

// Close stops etcd.
func (e *Etcd) Close() { e.server.Close() }

// Token returns the local user's bearer token, kept in file so that a
// kubeconfig written earlier keeps working; a new one is made when missing.
func Token(file string) (string, error) {
	if data, err := os.ReadFile(file); err == nil && len(strings.TrimSpace(string(data))) > 0 {
		return strings.TrimSpace(string(data)), nil
	} else if err != nil && !os.IsNotExist(err) {
		return "", err
	}
	buf := make([]byte, 32)
	if _, err := rand.Read(buf); err != nil {
		return "", err
	}
	token := hex.EncodeToString(buf)
	if err := os.MkdirAll(filepath.Dir(file), 0o700); err != nil {
		return "", err
	}
	return token, os.WriteFile(file, []byte(token+"\n"), 0o600)
}

// Authenticator accepts the local token as a cluster administrator.
func Authenticator(token string, audiences authenticator.Audiences) authenticator.Request {
	return authenticatorfactory.NewFromTokens(map[string]*user.DefaultInfo{
		token: {Name: LocalUser, Groups: []string{user.SystemPrivilegedGroup, user.AllAuthenticated}},
	}, audiences)
}

// WriteKubeconfig writes a kubeconfig for server, trusting caFile and
// authenticating with token, with "tagger-local" as its current context.
func WriteKubeconfig(path, server, caFile, token string) error {
	ca, err := os.ReadFile(caFile)
	if err != nil {
		return err
	}
	cfg := clientcmdapi.NewConfig()
	cfg.Clusters["tagger-local"] = &clientcmdapi.Cluster{Server: server, CertificateAuthorityData: ca}
	cfg.AuthInfos["tagger-local"] = &clientcmdapi.AuthInfo{Token: token}
	cfg.Contexts["tagger-local"] = &clientcmdapi.Context{Cluster: "tagger-local", AuthInfo: "tagger-local", Namespace: "default"}
	cfg.CurrentContext = "tagger-local"
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return err
	}
	return clientcmd.WriteToFile(*cfg, path)
}
