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
	"slices"
	"sort"
	"strings"
	"sync/atomic"
	"time"

	"go.etcd.io/etcd/server/v3/embed"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"k8s.io/apiserver/pkg/authentication/authenticator"
	"k8s.io/apiserver/pkg/authentication/authenticatorfactory"
	"k8s.io/apiserver/pkg/authentication/user"
	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"
	"k8s.io/klog/v2"
)

// LocalUser is the user a local-mode token authenticates as.
const LocalUser = "tagger-local-admin"

// Etcd is an embedded etcd server.
type Etcd struct {
	server   *embed.Etcd
	stopping *atomic.Bool
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
	stopping := &atomic.Bool{}
	cfg.ZapLoggerBuilder = embed.NewZapLoggerBuilder(zap.New(&etcdLogCore{stopping: stopping}, zap.AddCaller()))
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
		stopping.Store(true)
		server.Close()
		return nil, fmt.Errorf("embedded etcd: %w", err)
	case <-time.After(60 * time.Second):
		stopping.Store(true)
		server.Close()
		return nil, errors.New("embedded etcd did not become ready in 60s")
	}
	return &Etcd{server: server, stopping: stopping}, nil
}

// Endpoint returns the client URL of the embedded etcd.
func (e *Etcd) Endpoint() string {
	return "http://" + e.server.Clients[0].Addr().String()
}

// Close stops etcd.
func (e *Etcd) Close() {
	e.stopping.Store(true)
	e.server.Close()
}

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

// etcdLogCore logs the embedded etcd's errors through klog, like the rest
// of the server, without the stack traces etcd's own logger adds, and
// without the errors every shutdown causes: each of etcd's serving
// goroutines reports its listener closing as "setting up serving from
// embedded etcd failed" ("http: Server closed", "use of closed network
// connection", "grpc: the server has been stopped"), which on Ctrl-C printed
// a screen of stack traces.
type etcdLogCore struct {
	fields []zapcore.Field
	// stopping is set once Close has begun.
	stopping *atomic.Bool
}

func (c *etcdLogCore) Enabled(l zapcore.Level) bool { return l >= zapcore.ErrorLevel }

func (c *etcdLogCore) With(fields []zapcore.Field) zapcore.Core {
	return &etcdLogCore{fields: append(slices.Clone(c.fields), fields...), stopping: c.stopping}
}

func (c *etcdLogCore) Check(e zapcore.Entry, ce *zapcore.CheckedEntry) *zapcore.CheckedEntry {
	if c.Enabled(e.Level) {
		return ce.AddCore(e, c)
	}
	return ce
}

func (c *etcdLogCore) Write(e zapcore.Entry, fields []zapcore.Field) error {
	enc := zapcore.NewMapObjectEncoder()
	for _, f := range append(slices.Clone(c.fields), fields...) {
		f.AddTo(enc)
	}
	var err error
	if msg, ok := enc.Fields["error"].(string); ok {
		err = errors.New(msg)
		delete(enc.Fields, "error")
		delete(enc.Fields, "errorVerbose")
	}
	if isShutdownNoise(e.Message, err, c.stopping != nil && c.stopping.Load()) {
		return nil
	}
	keys := make([]string, 0, len(enc.Fields))
	for k := range enc.Fields {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	kv := make([]any, 0, 2+2*len(keys))
	if e.Caller.Defined {
		kv = append(kv, "caller", e.Caller.TrimmedPath())
	}
	for _, k := range keys {
		kv = append(kv, k, enc.Fields[k])
	}
	klog.ErrorS(err, "Embedded etcd: "+e.Message, kv...)
	return nil
}

func (c *etcdLogCore) Sync() error {
	klog.Flush()
	return nil
}

// isShutdownNoise tells whether an etcd log message is one of those its
// serving goroutines write when their listeners close: any of them once
// Close has begun, and those naming a closed server or listener.
func isShutdownNoise(msg string, err error, stopping bool) bool {
	if msg != "setting up serving from embedded etcd failed." {
		return false
	}
	if stopping || err == nil {
		return true
	}
	for _, closed := range []string{"server closed", "Server closed", "use of closed network connection", "server has been stopped"} {
		if strings.Contains(err.Error(), closed) {
			return true
		}
	}
	return false
}
