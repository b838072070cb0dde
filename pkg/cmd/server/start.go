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

package server

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"path/filepath"
	"syscall"
	"time"

	"github.com/spf13/cobra"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apiserver/pkg/authentication/request/anonymous"
	"k8s.io/apiserver/pkg/authentication/request/union"
	"k8s.io/apiserver/pkg/authentication/user"
	"k8s.io/apiserver/pkg/authorization/authorizerfactory"
	"k8s.io/apiserver/pkg/authorization/path"
	authzunion "k8s.io/apiserver/pkg/authorization/union"
	openapinamer "k8s.io/apiserver/pkg/endpoints/openapi"
	genericapiserver "k8s.io/apiserver/pkg/server"
	"k8s.io/apiserver/pkg/server/healthz"
	utilcompatibility "k8s.io/apiserver/pkg/util/compatibility"
	"k8s.io/client-go/kubernetes"
	clientgoscheme "k8s.io/client-go/kubernetes/scheme"
	typedcorev1 "k8s.io/client-go/kubernetes/typed/core/v1"
	"k8s.io/client-go/tools/record"
	cliflag "k8s.io/component-base/cli/flag"
	"k8s.io/klog/v2"

	"tagger.dev/tagger/pkg/apiserver"
	"tagger.dev/tagger/pkg/apiserver/scheme"
	generatedopenapi "tagger.dev/tagger/pkg/generated/openapi"
	"tagger.dev/tagger/pkg/importer"
	"tagger.dev/tagger/pkg/localmode"
	"tagger.dev/tagger/pkg/localregistry"
	"tagger.dev/tagger/pkg/rollout"
	"tagger.dev/tagger/pkg/sources"
	"tagger.dev/tagger/pkg/webhook/podimages"
	"tagger.dev/tagger/pkg/webhook/registryhooks"
)

// NewCommand returns the tagger-apiserver command.
func NewCommand(ctx context.Context) *cobra.Command {
	o := NewOptions()
	cmd := &cobra.Command{
		Use:   "tagger-apiserver",
		Short: "Serves the tagger.dev API: Images pinned to digests, imported and mirrored on request",
		Long: `tagger-apiserver serves the tagger.dev API group as an aggregated API server.

In a cluster it stores objects in etcd and delegates authentication and
authorization to kube-apiserver. With --local it runs on this machine alone:
an embedded etcd and mirror registry under --local-dir, and a kubeconfig in
<local-dir>/kubeconfig for kubectl.`,
		SilenceUsage: true,
		RunE: func(cmd *cobra.Command, args []string) error {
			return o.Run(cmd.Context())
		},
	}
	cmd.SetContext(ctx)
	fs := cmd.Flags()
	o.AddFlags(fs)
	fs.SetNormalizeFunc(cliflag.WordSepNormalizeFunc)
	return cmd
}

// Run starts the server (and in local mode what it needs) and serves until
// ctx ends.
func (o *Options) Run(ctx context.Context) error {
	if err := o.Complete(); err != nil {
		return err
	}
	var local *localDeps
	if o.Local {
		var err error
		if local, err = o.startLocal(ctx); err != nil {
			return err
		}
		defer local.close()
	}
	if err := o.Validate(); err != nil {
		return err
	}
	cfg, err := o.Config()
	if err != nil {
		return err
	}
	server, err := cfg.Complete().New()
	if err != nil {
		return err
	}
	if o.Local {
		if err := o.WriteKubeconfig(); err != nil {
			return err
		}
	}
	return server.Run(ctx)
}

// localDeps are what local mode runs in place of a cluster.
type localDeps struct {
	etcd     *localmode.Etcd
	registry *localregistry.Registry
}

func (l *localDeps) close() {
	if l.registry != nil {
		_ = l.registry.Close()
	}
	l.etcd.Close()
}

func (o *Options) startLocal(ctx context.Context) (*localDeps, error) {
	etcd, err := localmode.StartEtcd(filepath.Join(o.LocalDir, "etcd"))
	if err != nil {
		return nil, err
	}
	l := &localDeps{etcd: etcd}
	o.RecommendedOptions.Etcd.StorageConfig.Transport.ServerList = []string{etcd.Endpoint()}
	if o.LocalRegistryAddress != "" {
		l.registry, err = localregistry.New(ctx, localregistry.Options{
			Dir:  filepath.Join(o.LocalDir, "registry"),
			Addr: o.LocalRegistryAddress,
		})
		if err != nil {
			l.close()
			if errors.Is(err, syscall.EADDRINUSE) {
				return nil, fmt.Errorf("embedded registry: %w", portHint(err, o.LocalRegistryAddress, "--local-registry-address", true))
			}
			return nil, fmt.Errorf("embedded registry on %s: %w (set --local-registry-address to another address, or empty to disable it)", o.LocalRegistryAddress, err)
		}
		klog.InfoS("Embedded mirror registry serving", "address", l.registry.Addr())
		o.LocalMirror = sources.MirrorConfig{Address: l.registry.Addr(), Insecure: true}
	}
	return l, nil
}

// WriteKubeconfig writes local mode's kubeconfig to <local-dir>/kubeconfig.
func (o *Options) WriteKubeconfig() error {
	token, err := localmode.Token(o.tokenFile())
	if err != nil {
		return err
	}
	ss := o.RecommendedOptions.SecureServing
	addr := ss.Listener.Addr().(*net.TCPAddr)
	server := fmt.Sprintf("https://127.0.0.1:%d", addr.Port)
	path := filepath.Join(o.LocalDir, "kubeconfig")
	if err := localmode.WriteKubeconfig(path, server, ss.ServerCert.CertKey.CertFile, token); err != nil {
		return err
	}
	klog.InfoS("Local mode ready: use kubectl --kubeconfig "+path, "server", server)
	return nil
}

func (o *Options) tokenFile() string { return filepath.Join(o.LocalDir, "token") }

// Config turns completed and validated options into a server configuration.
func (o *Options) Config() (*apiserver.Config, error) {
	ro := o.RecommendedOptions
	if err := ro.SecureServing.MaybeDefaultWithSelfSignedCerts("localhost",
		[]string{"tagger-apiserver." + o.Namespace + ".svc"}, []net.IP{net.ParseIP("127.0.0.1")}); err != nil {
		return nil, fmt.Errorf("creating self-signed certificates: %w", err)
	}

	gc := genericapiserver.NewRecommendedConfig(scheme.Codecs)
	gc.EffectiveVersion = utilcompatibility.DefaultBuildEffectiveVersion()
	namer := openapinamer.NewDefinitionNamer(scheme.Scheme)
	gc.OpenAPIConfig = genericapiserver.DefaultOpenAPIConfig(generatedopenapi.GetOpenAPIDefinitions, namer)
	gc.OpenAPIConfig.Info.Title = "Tagger"
	gc.OpenAPIV3Config = genericapiserver.DefaultOpenAPIV3Config(generatedopenapi.GetOpenAPIDefinitions, namer)
	gc.OpenAPIV3Config.Info.Title = "Tagger"
	if o.EnablePodWebhook && ro.Authorization != nil {
		// RBAC does not decide who calls the webhook: the handler answers
		// only kube-apiserver's client certificate (--pod-webhook-allowed-names)
		// and refuses everyone else before reading a byte.
		ro.Authorization = ro.Authorization.WithAlwaysAllowPaths(podimages.Path)
	}
	if err := ro.ApplyTo(gc); err != nil {
		return nil, err
	}

	policy := importer.Policy{Allow: o.AllowedRegistries, Deny: o.DeniedRegistries}
	extra := apiserver.ExtraConfig{
		Importer:     importer.New(importer.Options{Policy: policy}),
		Policy:       policy,
		MaxPushBytes: o.MaxPushBytes.Value(),
		Cleanup:      apiserver.CleanupOptions{MaxFinishedImports: o.MaxFinishedImports},
		ImportOptions: apiserver.ImportOptions{
			Identity:      o.ImportIdentity,
			SyncTimeout:   o.ImportSyncTimeout,
			Timeout:       o.ImportTimeout,
			RenewInterval: o.ImportRenewInterval,
			ResumeAfter:   o.ImportResumeAfter,
		},
		Checks: apiserver.CheckOptions{
			MinInterval: o.MinImportInterval,
			PerRegistry: o.ChecksPerRegistry,
			HookBaseURL: o.hookBaseURL,
		},
	}
	broadcaster := record.NewBroadcaster()
	broadcaster.StartStructuredLogging(2)
	extra.Recorder = broadcaster.NewRecorder(clientgoscheme.Scheme, corev1.EventSource{Component: "tagger-apiserver"})

	if o.Local {
		token, err := localmode.Token(o.tokenFile())
		if err != nil {
			return nil, err
		}
		gc.Authentication.Authenticator = union.New(
			localmode.Authenticator(token, gc.Authentication.APIAudiences),
			anonymous.NewAuthenticator(nil))
		health, err := path.NewAuthorizer([]string{"/healthz", "/healthz/*", "/livez", "/livez/*", "/readyz", "/readyz/*"})
		if err != nil {
			return nil, err
		}
		gc.Authorization.Authorizer, err = authzunion.New(
			authzunion.NamedAuthorizer{AuthorizerName: "health", Authorizer: health},
			authzunion.NamedAuthorizer{AuthorizerName: "local-admin", Authorizer: authorizerfactory.NewPrivilegedGroups(user.SystemPrivilegedGroup)})
		if err != nil {
			return nil, err
		}
		extra.Sources = &sources.Local{AuthFile: o.AuthFile, MirrorConfig: o.LocalMirror}
		extra.Checks.HookTokens = &registryhooks.FileTokens{Dir: filepath.Join(o.LocalDir, "registry-hooks")}
		if extra.ImportOptions.Identity == "" {
			// The only server of its etcd: after a restart it resumes
			// what it ran at once.
			extra.ImportOptions.Identity = "local"
		}
		return &apiserver.Config{GenericConfig: gc, ExtraConfig: extra}, nil
	}

	if gc.ClientConfig == nil {
		return nil, fmt.Errorf("no cluster to read Secrets from: run in a cluster, give --kubeconfig, or use --local")
	}
	client, err := kubernetes.NewForConfig(gc.ClientConfig)
	if err != nil {
		return nil, err
	}
	broadcaster.StartRecordingToSink(&typedcorev1.EventSinkImpl{Interface: client.CoreV1().Events("")})
	cluster := sources.NewCluster(client, o.Namespace)
	extra.Sources = cluster
	gc.AddPostStartHookOrDie("tagger-sources-informers", func(hookCtx genericapiserver.PostStartHookContext) error {
		go func() {
			if err := cluster.Start(hookCtx); err != nil {
				klog.ErrorS(err, "Secrets informers did not start")
			}
		}()
		return nil
	})
	hookTokens := registryhooks.NewSecretTokens(client)
	extra.Checks.HookTokens = hookTokens
	gc.AddPostStartHookOrDie("tagger-registry-hook-tokens", func(hookCtx genericapiserver.PostStartHookContext) error {
		go func() {
			if err := hookTokens.Start(hookCtx); err != nil {
				klog.ErrorS(err, "Registry hook Secrets informer did not start")
			}
		}()
		return nil
	})
	gc.AddReadyzChecks(healthz.NamedCheck("tagger-sources-synced", func(*http.Request) error {
		if !cluster.HasSynced() {
			return fmt.Errorf("secrets and configmaps not synced yet")
		}
		return nil
	}))
	if o.EnablePodWebhook {
		extra.PodWebhook, err = o.podWebhook(gc, client)
		if err != nil {
			return nil, err
		}
	}
	if o.EnableRollout {
		le := o.LeaderElection
		le.Namespace = o.Namespace
		gc.AddPostStartHookOrDie("tagger-rollout", func(hookCtx genericapiserver.PostStartHookContext) error {
			tagger, err := apiserver.LoopbackClient(hookCtx.LoopbackClientConfig)
			if err != nil {
				return err
			}
			go func() {
				err := rollout.RunWithLeaderElection(hookCtx, client, le, rollout.Identity(), func(ctx context.Context) {
					if err := rollout.New(client, tagger, 10*time.Minute).Run(ctx); err != nil {
						klog.ErrorS(err, "Rollout controller stopped")
					}
				})
				if err != nil {
					klog.ErrorS(err, "Rollout leader election stopped")
				}
			}()
			return nil
		})
	}
	return &apiserver.Config{GenericConfig: gc, ExtraConfig: extra}, nil
}

// podWebhook builds the pod webhook: namespaces from the generic server's
// informers (a live read for one created a moment ago), pull Secrets written
// with the server's own identity.
func (o *Options) podWebhook(gc *genericapiserver.RecommendedConfig, client kubernetes.Interface) (*podimages.Handler, error) {
	if gc.SharedInformerFactory == nil {
		return nil, fmt.Errorf("--enable-pod-webhook needs the core API (--kubeconfig or in-cluster)")
	}
	namespaces := gc.SharedInformerFactory.Core().V1().Namespaces()
	_ = namespaces.Informer() // registered before the factory starts
	lister := namespaces.Lister()
	if gc.SecureServing == nil || gc.SecureServing.ClientCA == nil {
		return nil, fmt.Errorf("--enable-pod-webhook needs client certificate authentication (a client CA from --client-ca-file or kube-system/extension-apiserver-authentication): the webhook answers only kube-apiserver's client certificate")
	}
	return &podimages.Handler{
		Callers:     &podimages.Callers{CA: gc.SecureServing.ClientCA, Names: o.PodWebhookAllowedNames},
		PullSecrets: &podimages.ClusterPullSecrets{Client: client},
		OptedIn: func(name string) (bool, error) {
			ns, err := lister.Get(name)
			if apierrors.IsNotFound(err) {
				ns, err = client.CoreV1().Namespaces().Get(context.TODO(), name, metav1.GetOptions{})
			}
			if apierrors.IsNotFound(err) {
				return false, nil
			}
			if err != nil {
				return false, err
			}
			return ns.Labels[podimages.NamespaceLabel] == podimages.NamespaceLabelValue, nil
		},
	}, nil
}

// hookBaseURL is the URL registries reach this server at: --registry-hook-url,
// else the in-cluster Service, else (local mode) the loopback port.
func (o *Options) hookBaseURL() string {
	if o.RegistryHookURL != "" {
		return o.RegistryHookURL
	}
	if o.Local {
		if ln := o.RecommendedOptions.SecureServing.Listener; ln != nil {
			if addr, ok := ln.Addr().(*net.TCPAddr); ok {
				return fmt.Sprintf("https://127.0.0.1:%d", addr.Port)
			}
		}
		return fmt.Sprintf("https://127.0.0.1:%d", o.RecommendedOptions.SecureServing.BindPort)
	}
	return "https://tagger-apiserver." + o.Namespace + ".svc"
}
