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

// Package e2e installs Tagger the way an administrator would — the artifacts/
// manifests through "kubectl apply -k", certificates from hack/gen-certs.sh —
// into a real kube-apiserver (with the kube-aggregator, RBAC and delegated
// authentication) and real etcd on 127.0.0.1, runs tagger-apiserver as a
// process under its own ServiceAccount, and drives it with the real kubectl.
// Registries on 127.0.0.1 stand in for quay.io and for the mirror.
//
// kube-apiserver, kube-controller-manager and etcd are built from the nested
// modules under tools/ once, into $XDG_CACHE_HOME/tagger-e2e (or
// ~/.cache/tagger-e2e). The first build takes minutes. With -short, or with
// TAGGER_E2E=skip in the environment, the cluster is not started and its
// tests are skipped. When the cluster cannot be built or started the suite
// fails, saying why and how to skip it: a "make test" that is green has run
// the end-to-end suite.
package e2e

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/sirupsen/logrus"
)

// Users in kube-apiserver's token file. admin is in system:masters; the
// others have no rights but those a test gives them.
var users = map[string]string{ // name -> groups
	"admin": "system:masters",
	"alice": "e2e",
	"bob":   "e2e",
	"carol": "e2e",
}

// taggerNamespace is Tagger's own namespace, as in artifacts/.
const taggerNamespace = "tagger"

// cl is the cluster every test shares; nil when it could not start.
var (
	cl       *cluster
	setupErr error
)

func TestMain(m *testing.M) {
	flag.Parse()
	// The in-process registries log every 404 through logrus at error level.
	logrus.SetOutput(io.Discard)
	if testing.Short() {
		os.Exit(m.Run())
	}
	if os.Getenv(skipEnv) == "skip" {
		setupErr = fmt.Errorf("%s=skip", skipEnv)
		fmt.Fprintf(os.Stderr, "e2e: SKIPPED: the end-to-end suite did not run (%s=skip); run it with \"make test-e2e\"\n", skipEnv)
		os.Exit(m.Run())
	}
	start := time.Now()
	var err error
	cl, err = startCluster()
	if err != nil {
		fmt.Fprintf(os.Stderr, "e2e: the cluster did not start: %v\n", err)
		if cl != nil {
			cl.dumpLogs(os.Stderr)
			cl.stop()
			fmt.Fprintf(os.Stderr, "e2e: logs and configuration kept in %s\n", cl.dir)
		}
		fmt.Fprintf(os.Stderr, "e2e: FAILED: the end-to-end suite could not start its cluster (above). It needs kubectl, openssl "+
			"and, the first time, the Go module proxy (it builds kube-apiserver, kube-controller-manager and etcd into %s). "+
			"To run the other tests without it: %s=skip make test\n", toolCacheForMessage(), skipEnv)
		os.Exit(1)
	} else {
		fmt.Fprintf(os.Stderr, "e2e: cluster up in %s (logs in %s)\n", time.Since(start).Round(time.Second), cl.dir)
	}
	code := m.Run()
	if cl != nil {
		if code != 0 {
			cl.dumpLogs(os.Stderr)
		}
		cl.stop()
		if code == 0 {
			_ = os.RemoveAll(cl.dir)
		} else {
			fmt.Fprintf(os.Stderr, "e2e: logs and configuration kept in %s\n", cl.dir)
		}
	}
	os.Exit(code)
}

// skipEnv, set to "skip", leaves the end-to-end suite out, loudly.
const skipEnv = "TAGGER_E2E"

// toolCacheForMessage is where the tools are cached, for messages.
func toolCacheForMessage() string {
	if dir, err := cacheRoot(); err == nil {
		return dir
	}
	return "$XDG_CACHE_HOME/tagger-e2e"
}

// needCluster skips t when the shared cluster is not there: with -short or
// TAGGER_E2E=skip (TestMain fails the suite when the cluster did not start).
func needCluster(t *testing.T) *cluster {
	t.Helper()
	if testing.Short() {
		t.Skip("end-to-end: needs a cluster (not with -short)")
	}
	if cl == nil {
		t.Skipf("end-to-end: no cluster: %v", setupErr)
	}
	return cl
}

// cluster is etcd, kube-apiserver, kube-controller-manager and tagger-apiserver
// on 127.0.0.1, with Tagger installed from artifacts/.
type cluster struct {
	dir        string // everything: certificates, kubeconfigs, logs, data
	kubeconfig string // users admin, alice, bob, carol; admin is current
	apiserver  string // https://127.0.0.1:port of kube-apiserver
	tagger     string // https://127.0.0.1:port of tagger-apiserver
	// taggerBin and taggerArgs start tagger-apiserver as the cluster runs
	// it, but for --secure-port, for tests that start more replicas.
	taggerBin  string
	taggerArgs []string
	pluginDir  string // built kubectl plugins, on kubectl's PATH
	plugins    []string
	pluginErr  error // why the plugins did not build; only their tests fail
	kubectl    string
	procs      []*proc
}

// proc is a process of the cluster, logging to <dir>/<name>.log.
type proc struct {
	name   string
	cmd    *exec.Cmd
	log    string
	exited chan struct{}
	err    error
}

func (c *cluster) start(name, bin string, args ...string) (*proc, error) {
	p := &proc{name: name, log: filepath.Join(c.dir, name+".log"), exited: make(chan struct{})}
	f, err := os.Create(p.log)
	if err != nil {
		return nil, err
	}
	p.cmd = exec.Command(bin, args...)
	p.cmd.Stdout, p.cmd.Stderr = f, f
	p.cmd.SysProcAttr = sysProcAttr()
	if err := p.cmd.Start(); err != nil {
		f.Close()
		return nil, err
	}
	c.procs = append(c.procs, p)
	go func() {
		p.err = p.cmd.Wait()
		f.Close()
		close(p.exited)
	}()
	return p, nil
}

// stop ends the processes, newest first.
func (c *cluster) stop() {
	for i := len(c.procs) - 1; i >= 0; i-- {
		p := c.procs[i]
		select {
		case <-p.exited:
			continue
		default:
		}
		_ = p.cmd.Process.Signal(os.Interrupt)
		select {
		case <-p.exited:
		case <-time.After(10 * time.Second):
			_ = p.cmd.Process.Kill()
			<-p.exited
		}
	}
}

// dumpLogs writes the end of every process's log to w.
func (c *cluster) dumpLogs(w io.Writer) {
	for _, p := range c.procs {
		b, _ := os.ReadFile(p.log)
		if len(b) > 20000 {
			b = b[len(b)-20000:]
		}
		fmt.Fprintf(w, "===== %s (%s) =====\n%s\n", p.name, p.log, b)
	}
}

// waitFor polls check until it succeeds, p exits, or timeout passes.
func waitFor(what string, timeout time.Duration, p *proc, check func() error) error {
	deadline := time.Now().Add(timeout)
	for {
		err := check()
		if err == nil {
			return nil
		}
		if p != nil {
			select {
			case <-p.exited:
				return fmt.Errorf("%s exited (%v) before %s", p.name, p.err, what)
			default:
			}
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%s: not after %s: %w", what, timeout, err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

func freePort() (int, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port, nil
}

func startCluster() (*cluster, error) {
	kubectl, err := exec.LookPath("/usr/bin/kubectl")
	if err != nil {
		if kubectl, err = exec.LookPath("kubectl"); err != nil {
			return nil, fmt.Errorf("kubectl is needed: %w", err)
		}
	}
	if _, err := exec.LookPath("openssl"); err != nil {
		return nil, fmt.Errorf("openssl is needed by hack/gen-certs.sh: %w", err)
	}
	logf := func(format string, args ...any) { fmt.Fprintf(os.Stderr, "e2e: "+format+"\n", args...) }

	dir, err := os.MkdirTemp("", "tagger-e2e-")
	if err != nil {
		return nil, err
	}
	c := &cluster{dir: dir, kubectl: kubectl, pluginDir: filepath.Join(dir, "bin")}
	for _, d := range []string{c.pluginDir, filepath.Join(dir, "home"), filepath.Join(dir, "pki")} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			return c, err
		}
	}

	// Binaries: the cached ones first (slow only the first time), then ours.
	k8s, err := kubernetesTools.build(logf)
	if err != nil {
		return c, err
	}
	etcdBins, err := etcdTool.build(logf)
	if err != nil {
		return c, err
	}
	taggerBin, err := buildTagger(c.pluginDir)
	if err != nil {
		return c, err
	}
	c.plugins, c.pluginErr = buildPlugins(c.pluginDir)

	// etcd, shared by kube-apiserver (/registry) and Tagger (/registry/tagger.dev).
	clientPort, err := freePort()
	if err != nil {
		return c, err
	}
	peerPort, err := freePort()
	if err != nil {
		return c, err
	}
	etcdURL := fmt.Sprintf("http://127.0.0.1:%d", clientPort)
	peerURL := fmt.Sprintf("http://127.0.0.1:%d", peerPort)
	etcd, err := c.start("etcd", etcdBins["etcd"],
		"--name=e2e", "--data-dir="+filepath.Join(dir, "etcd"),
		"--listen-client-urls="+etcdURL, "--advertise-client-urls="+etcdURL,
		"--listen-peer-urls="+peerURL, "--initial-advertise-peer-urls="+peerURL,
		"--initial-cluster=e2e="+peerURL, "--unsafe-no-fsync", "--log-level=warn")
	if err != nil {
		return c, err
	}
	if err := waitFor("etcd healthy", 30*time.Second, etcd, func() error {
		resp, err := http.Get(etcdURL + "/health")
		if err != nil {
			return err
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		if !bytes.Contains(b, []byte(`"health":"true"`)) {
			return fmt.Errorf("%s", b)
		}
		return nil
	}); err != nil {
		return c, err
	}

	// kube-apiserver with the aggregator reaching loopback (../shared/INFRA.md).
	pki := filepath.Join(dir, "pki")
	clusterCA, err := newCA(pki, "cluster-ca")
	if err != nil {
		return c, err
	}
	servingCert, servingKey, err := clusterCA.issue(pki, "kube-apiserver", "kube-apiserver", nil,
		"127.0.0.1", "localhost", "kubernetes.default.svc")
	if err != nil {
		return c, err
	}
	frontProxyCA, err := newCA(pki, "front-proxy-ca")
	if err != nil {
		return c, err
	}
	proxyCert, proxyKey, err := frontProxyCA.issue(pki, "front-proxy-client", "front-proxy-client", nil)
	if err != nil {
		return c, err
	}
	saKey, err := newCA(pki, "service-account") // only its key is used
	if err != nil {
		return c, err
	}
	saKeyFile := filepath.Join(pki, "service-account.key")
	if err := writeKey(saKeyFile, saKey.key); err != nil {
		return c, err
	}
	var tokens, kubeconfigUsers strings.Builder
	for name, groups := range users {
		fmt.Fprintf(&tokens, "%s-token,%s,%s-uid,%q\n", name, name, name, groups)
		fmt.Fprintf(&kubeconfigUsers, "- name: %s\n  user:\n    token: %s-token\n", name, name)
	}
	tokenFile := filepath.Join(pki, "tokens.csv")
	if err := os.WriteFile(tokenFile, []byte(tokens.String()), 0o600); err != nil {
		return c, err
	}
	apiPort, err := freePort()
	if err != nil {
		return c, err
	}
	admissionConfig, err := webhookAdmissionConfig(pki, clusterCA)
	if err != nil {
		return c, err
	}
	c.apiserver = fmt.Sprintf("https://127.0.0.1:%d", apiPort)
	kas, err := c.start("kube-apiserver", k8s["kube-apiserver"],
		"--etcd-servers="+etcdURL,
		"--bind-address=127.0.0.1", fmt.Sprintf("--secure-port=%d", apiPort),
		"--advertise-address=127.0.0.1", "--endpoint-reconciler-type=none",
		"--cert-dir="+filepath.Join(dir, "kube-apiserver-certs"),
		"--tls-cert-file="+servingCert, "--tls-private-key-file="+servingKey,
		"--client-ca-file="+clusterCA.certFile,
		"--token-auth-file="+tokenFile,
		"--authorization-mode=Node,RBAC",
		"--service-account-issuer=https://kubernetes.default.svc",
		"--service-account-key-file="+saKeyFile, "--service-account-signing-key-file="+saKeyFile,
		"--service-cluster-ip-range=10.0.0.0/24",
		"--disable-admission-plugins=ServiceAccount",
		// Its client certificate for Tagger's pod webhook (artifacts/kube-apiserver/).
		"--admission-control-config-file="+admissionConfig,
		"--requestheader-client-ca-file="+frontProxyCA.certFile,
		"--requestheader-allowed-names=front-proxy-client",
		"--requestheader-username-headers=X-Remote-User",
		"--requestheader-group-headers=X-Remote-Group",
		"--requestheader-uid-headers=X-Remote-Uid",
		"--requestheader-extra-headers-prefix=X-Remote-Extra-",
		"--proxy-client-cert-file="+proxyCert, "--proxy-client-key-file="+proxyKey,
		"--enable-aggregator-routing=false",
		"--profiling=false")
	if err != nil {
		return c, err
	}
	c.kubeconfig = filepath.Join(dir, "kubeconfig")
	kubeconfig := fmt.Sprintf(`apiVersion: v1
kind: Config
clusters:
- name: e2e
  cluster:
    server: %s
    certificate-authority: %s
contexts:
- name: e2e
  context:
    cluster: e2e
    user: admin
current-context: e2e
users:
%s`, c.apiserver, clusterCA.certFile, kubeconfigUsers.String())
	if err := os.WriteFile(c.kubeconfig, []byte(kubeconfig), 0o600); err != nil {
		return c, err
	}
	pool := x509.NewCertPool()
	pool.AddCert(clusterCA.cert)
	client := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}}}
	if err := waitFor("kube-apiserver ready", 90*time.Second, kas, func() error {
		req, _ := http.NewRequest(http.MethodGet, c.apiserver+"/readyz", nil)
		req.Header.Set("Authorization", "Bearer admin-token")
		resp, err := client.Do(req)
		if err != nil {
			return err
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		if resp.StatusCode != http.StatusOK {
			return fmt.Errorf("readyz %d: %s", resp.StatusCode, b)
		}
		return nil
	}); err != nil {
		return c, err
	}

	// kube-controller-manager for one controller: the one that aggregates
	// ClusterRoles (Tagger's roles into admin, edit and view).
	if _, err := c.start("kube-controller-manager", k8s["kube-controller-manager"],
		"--kubeconfig="+c.kubeconfig, "--controllers=clusterrole-aggregation",
		"--leader-elect=false", "--secure-port=0", "--use-service-account-credentials=false"); err != nil {
		return c, err
	}

	// Install Tagger from artifacts/, as an administrator would.
	taggerPort, err := freePort()
	if err != nil {
		return c, err
	}
	if err := c.install(taggerPort); err != nil {
		return c, err
	}

	// tagger-apiserver under its own ServiceAccount, with the rights the
	// artifacts give it and nothing else.
	token, err := c.kubectlAs("admin", "", "create", "token", "tagger-apiserver", "-n", taggerNamespace, "--duration=24h")
	if err != nil {
		return c, err
	}
	saKubeconfig := filepath.Join(dir, "tagger-apiserver.kubeconfig")
	if err := os.WriteFile(saKubeconfig, []byte(fmt.Sprintf(`apiVersion: v1
kind: Config
clusters:
- name: e2e
  cluster:
    server: %s
    certificate-authority: %s
contexts:
- name: e2e
  context:
    cluster: e2e
    user: tagger-apiserver
current-context: e2e
users:
- name: tagger-apiserver
  user:
    token: %s
`, c.apiserver, clusterCA.certFile, strings.TrimSpace(token))), 0o600); err != nil {
		return c, err
	}
	certs := filepath.Join(dir, "install", "artifacts", "certs")
	c.tagger = fmt.Sprintf("https://127.0.0.1:%d", taggerPort)
	c.taggerBin = taggerBin
	c.taggerArgs = []string{
		"--etcd-servers=" + etcdURL,
		"--bind-address=127.0.0.1",
		"--tls-cert-file=" + filepath.Join(certs, "tls.crt"),
		"--tls-private-key-file=" + filepath.Join(certs, "tls.key"),
		"--cert-dir=" + filepath.Join(dir, "tagger-certs"),
		"--kubeconfig=" + saKubeconfig,
		"--authentication-kubeconfig=" + saKubeconfig,
		"--authorization-kubeconfig=" + saKubeconfig,
		"--namespace=" + taggerNamespace,
		// Failing imports answer after this long (then retry in the
		// background); successful ones take milliseconds on loopback.
		"--import-sync-timeout=8s",
		"-v=2",
	}
	tagger, err := c.start("tagger-apiserver", taggerBin, append([]string{fmt.Sprintf("--secure-port=%d", taggerPort)}, c.taggerArgs...)...)
	if err != nil {
		return c, err
	}
	if err := waitFor("APIService v1beta1.tagger.dev Available", 90*time.Second, tagger, func() error {
		out, err := c.kubectlAs("admin", "", "get", "apiservice", "v1beta1.tagger.dev",
			"-o", `jsonpath={.status.conditions[?(@.type=="Available")].status}`)
		if err != nil {
			return err
		}
		if out != "True" {
			msg, _ := c.kubectlAs("admin", "", "get", "apiservice", "v1beta1.tagger.dev",
				"-o", `jsonpath={.status.conditions[?(@.type=="Available")].message}`)
			return errors.New("Available=" + out + ": " + msg)
		}
		return nil
	}); err != nil {
		return c, err
	}
	// Discovery through the aggregator, as kubectl will need it.
	if err := waitFor("tagger.dev in discovery", 30*time.Second, tagger, func() error {
		_, err := c.kubectlAs("admin", "", "get", "--raw", "/apis/tagger.dev/v1beta1")
		return err
	}); err != nil {
		return c, err
	}
	return c, nil
}

// install applies artifacts/ with certificates from hack/gen-certs.sh,
// through an overlay that changes only what loopback needs: the Service
// becomes an ExternalName for localhost, and the APIService names the port
// tagger-apiserver listens on.
func (c *cluster) install(taggerPort int) error {
	base := filepath.Join(c.dir, "install", "artifacts")
	if err := copyArtifacts("../../artifacts", base); err != nil {
		return err
	}
	if out, err := exec.Command("../../hack/gen-certs.sh", "-o", filepath.Join(base, "certs")).CombinedOutput(); err != nil {
		return fmt.Errorf("hack/gen-certs.sh: %v\n%s", err, out)
	}
	overlay := filepath.Join(c.dir, "install", "loopback")
	if err := os.MkdirAll(overlay, 0o755); err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(overlay, "kustomization.yaml"), []byte(fmt.Sprintf(loopbackOverlay, taggerPort)), 0o644); err != nil {
		return err
	}
	_, err := c.kubectlAs("admin", "", "apply", "-k", overlay)
	return err
}

// loopbackOverlay adapts artifacts/ to a cluster without nodes: Tagger runs
// as a process on 127.0.0.1, so its Service points at localhost (the
// aggregator then dials localhost:<APIService port>, checking the certificate
// for tagger-apiserver.tagger.svc against the caBundle).
const loopbackOverlay = `apiVersion: kustomize.config.k8s.io/v1beta1
kind: Kustomization
resources:
- ../artifacts
patches:
- target:
    kind: Service
    name: tagger-apiserver
  patch: |-
    apiVersion: v1
    kind: Service
    metadata:
      name: tagger-apiserver
      namespace: tagger
    spec:
      type: ExternalName
      externalName: localhost
      selector: null
- target:
    kind: APIService
    name: v1beta1.tagger.dev
  patch: |-
    - op: replace
      path: /spec/service/port
      value: %d
`

// copyArtifacts copies the manifests (not certs/) to dst.
func copyArtifacts(src, dst string) error {
	if err := os.MkdirAll(dst, 0o755); err != nil {
		return err
	}
	entries, err := os.ReadDir(src)
	if err != nil {
		return err
	}
	for _, e := range entries {
		if e.IsDir() || !strings.HasSuffix(e.Name(), ".yaml") {
			continue
		}
		b, err := os.ReadFile(filepath.Join(src, e.Name()))
		if err != nil {
			return err
		}
		if err := os.WriteFile(filepath.Join(dst, e.Name()), b, 0o644); err != nil {
			return err
		}
	}
	return nil
}

// kubectlAs runs kubectl as user (a name from users) and returns stdout;
// the error carries stderr.
func (c *cluster) kubectlAs(user, stdin string, args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	stdout, stderr, err := c.run(ctx, user, stdin, args...)
	if err != nil {
		return stdout, fmt.Errorf("kubectl --user=%s %s: %w\n%s", user, strings.Join(args, " "), err, stderr)
	}
	return stdout, nil
}

// run runs kubectl under ctx with a home and discovery cache of the
// cluster's own, the built plugins on PATH.
func (c *cluster) run(ctx context.Context, user, stdin string, args ...string) (string, string, error) {
	cmd := c.command(ctx, user, args...)
	cmd.Stdin = strings.NewReader(stdin)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	return stdout.String(), stderr.String(), err
}

func (c *cluster) command(ctx context.Context, user string, args ...string) *exec.Cmd {
	// --user goes last: kubectl refuses flags placed before a plugin's name.
	cmd := exec.CommandContext(ctx, c.kubectl, append(append([]string{}, args...), "--user="+user)...)
	cmd.Env = append(os.Environ(),
		"KUBECONFIG="+c.kubeconfig,
		"HOME="+filepath.Join(c.dir, "home"),
		"KUBECACHEDIR="+filepath.Join(c.dir, "home", "kubecache-"+user),
		"PATH="+c.pluginDir+string(os.PathListSeparator)+os.Getenv("PATH"))
	return cmd
}
