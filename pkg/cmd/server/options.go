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

// Package server holds the command line of tagger-apiserver: its options,
// how they become a server configuration, and local mode.
package server

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"syscall"
	"time"

	"github.com/spf13/pflag"
	"k8s.io/apimachinery/pkg/api/resource"
	utilerrors "k8s.io/apimachinery/pkg/util/errors"
	genericoptions "k8s.io/apiserver/pkg/server/options"

	"tagger.dev/tagger/pkg/apis/tagger/v1beta1"
	"tagger.dev/tagger/pkg/apiserver/scheme"
	"tagger.dev/tagger/pkg/rollout"
	"tagger.dev/tagger/pkg/sources"
	"tagger.dev/tagger/pkg/webhook/podimages"
)

// etcdPrefix is where Tagger keeps its objects in etcd.
const etcdPrefix = "/registry/tagger.dev"

// Options are the flags of tagger-apiserver.
type Options struct {
	RecommendedOptions *genericoptions.RecommendedOptions

	// Local runs without a cluster: embedded etcd and registry, a local
	// token, a kubeconfig written under LocalDir.
	Local bool
	// LocalDir holds local mode's data (etcd, registry, certificates).
	LocalDir string
	// LocalRegistryAddress is where local mode serves its embedded mirror
	// registry; empty turns it off.
	LocalRegistryAddress string

	// LocalMirror is local mode's mirror: the embedded registry, unless
	// set otherwise before Config.
	LocalMirror sources.MirrorConfig

	// Namespace is Tagger's own namespace (the global mirror config lives there).
	Namespace string
	// AuthFile is a docker/containers auth file for sources (local mode).
	AuthFile string
	// AllowedRegistries and DeniedRegistries restrict import sources.
	AllowedRegistries []string
	DeniedRegistries  []string
	// ImportSyncTimeout bounds how long a create waits for its import.
	ImportSyncTimeout time.Duration
	// ImportTimeout bounds a whole import, background part included.
	ImportTimeout time.Duration
	// ImportIdentity names this server in the imports it runs; empty means
	// the host name (the pod name in a cluster), "local" in local mode.
	ImportIdentity string
	// ImportRenewInterval and ImportResumeAfter: how often a server renews
	// its claim on the imports it runs, and how old a claim must be before
	// another server takes the import over.
	ImportRenewInterval time.Duration
	ImportResumeAfter   time.Duration
	// MaxPushBytes bounds each blob and manifest pushed through images/push.
	MaxPushBytes resource.Quantity
	// MaxFinishedImports bounds the finished ImageImports kept per Image.
	MaxFinishedImports int
	// MinImportInterval is the shortest scheduled import interval accepted.
	MinImportInterval time.Duration
	// ChecksPerRegistry bounds the scheduled and webhook checks running at
	// once against one registry.
	ChecksPerRegistry int
	// RegistryHookURL is the URL registries reach this server at; empty
	// means https://tagger-apiserver.<namespace>.svc in a cluster and
	// https://127.0.0.1:<port> in local mode.
	RegistryHookURL string

	// EnablePodWebhook serves the pod admission webhook (cluster mode).
	EnablePodWebhook bool
	// PodWebhookAllowedNames are the common names of the client
	// certificates the pod webhook answers: kube-apiserver's.
	PodWebhookAllowedNames []string
	// EnableRollout runs the rollout controller (cluster mode).
	EnableRollout bool
	// LeaderElection is the Lease the rollout controller's replicas share;
	// its Namespace is Namespace.
	LeaderElection rollout.LeaderElection
}

// NewOptions returns the default options.
func NewOptions() *Options {
	o := &Options{
		RecommendedOptions: genericoptions.NewRecommendedOptions(etcdPrefix,
			scheme.Codecs.LegacyCodec(v1beta1.SchemeGroupVersion)),
		LocalDir:             ".tagger",
		LocalRegistryAddress: "127.0.0.1:5000",
		Namespace:            os.Getenv("POD_NAMESPACE"),
		ImportSyncTimeout:    33 * time.Second,
		ImportTimeout:        30 * time.Minute,
		ImportRenewInterval:  30 * time.Second,
		ImportResumeAfter:    2 * time.Minute,
		MaxPushBytes:         resource.MustParse("10Gi"),
		MaxFinishedImports:   100, // cleanup.DefaultMaxFinishedImports
		MinImportInterval:    time.Minute,
		ChecksPerRegistry:    4,
		LeaderElection: rollout.LeaderElection{
			Name:          "tagger-rollout",
			LeaseDuration: 15 * time.Second,
			RenewDeadline: 10 * time.Second,
			RetryPeriod:   2 * time.Second,
		},
	}
	if o.Namespace == "" {
		o.Namespace = "tagger"
	}
	o.PodWebhookAllowedNames = []string{podimages.DefaultCallerName}
	// JSON in etcd keeps the data readable with etcdctl; Tagger objects are small.
	o.RecommendedOptions.Etcd.DefaultStorageMediaType = "application/json"
	return o
}

// AddFlags adds the flags to fs.
func (o *Options) AddFlags(fs *pflag.FlagSet) {
	o.RecommendedOptions.AddFlags(fs)
	if f := fs.Lookup("secure-port"); f != nil {
		f.Usage += " With --local the default is 8443 (443 is taken to mean 8443)."
	}
	if f := fs.Lookup("bind-address"); f != nil {
		f.Usage += " With --local, always 127.0.0.1."
	}
	fs.BoolVar(&o.Local, "local", o.Local, "Run without a cluster: embedded etcd and mirror registry under --local-dir, local token authentication, a kubeconfig written to <local-dir>/kubeconfig, serving on 127.0.0.1.")
	fs.StringVar(&o.LocalDir, "local-dir", o.LocalDir, "Directory of local mode's data, kept across restarts.")
	fs.StringVar(&o.LocalRegistryAddress, "local-registry-address", o.LocalRegistryAddress, "Address of local mode's embedded mirror registry; empty disables it.")
	fs.StringVar(&o.Namespace, "namespace", o.Namespace, "Tagger's own namespace, where the cluster-wide mirror-registry-config Secret lives (default $POD_NAMESPACE).")
	fs.StringVar(&o.AuthFile, "auth-file", o.AuthFile, "A docker config.json or containers auth.json with credentials for source registries (for local mode, which has no Secrets).")
	fs.StringSliceVar(&o.AllowedRegistries, "allowed-registries", o.AllowedRegistries, "If set, the only source registries imports may use: host, host:port, *.domain, IP or CIDR.")
	fs.StringSliceVar(&o.DeniedRegistries, "denied-registries", o.DeniedRegistries, "Source registries imports may not use, besides link-local and metadata addresses, which are always refused.")
	fs.DurationVar(&o.ImportSyncTimeout, "import-sync-timeout", o.ImportSyncTimeout, "How long creating an ImageImport waits for its import before answering with it Progressing (the import goes on; \"kubectl wait\" follows it). It can shorten the wait, not lengthen it: k8s.io/apiserver ends every create at 34 s, so 33s is the most a create can wait.")
	fs.DurationVar(&o.ImportTimeout, "import-timeout", o.ImportTimeout, "Upper bound of one import, all attempts included.")
	fs.StringVar(&o.ImportIdentity, "import-identity", o.ImportIdentity, "Name of this server in the ImageImports it runs (replicas sharing an etcd need different ones); empty means the host name, \"local\" in local mode. A server restarting under the same name resumes its interrupted imports at once; others wait until the claim is --import-resume-after old.")
	fs.DurationVar(&o.ImportRenewInterval, "import-renew-interval", o.ImportRenewInterval, "How often a server renews its claim on each import it runs.")
	fs.DurationVar(&o.ImportResumeAfter, "import-resume-after", o.ImportResumeAfter, "How long a claim may go unrenewed (its server crashed) before another server resumes the import. Keep it several times --import-renew-interval.")
	fs.BoolVar(&o.EnablePodWebhook, "enable-pod-webhook", o.EnablePodWebhook, "Serve the pod admission webhook at "+podimages.Path+": pods of opted-in namespaces (label "+podimages.NamespaceLabel+"="+podimages.NamespaceLabelValue+") that name an Image get its current digest reference. Cluster mode only.")
	fs.StringSliceVar(&o.PodWebhookAllowedNames, "pod-webhook-allowed-names", o.PodWebhookAllowedNames, "Common names of the client certificates the pod webhook answers; the certificate must also verify against the client CAs of the server's authentication. kube-apiserver presents one when its --admission-control-config-file gives the webhook a kubeconfig (artifacts/kube-apiserver/). Every other caller is refused.")
	fs.BoolVar(&o.EnableRollout, "enable-rollout", o.EnableRollout, "Roll out Deployments, StatefulSets and DaemonSets annotated "+rollout.FollowAnnotation+`: "true" when the current generation of an Image their pods use changes; one replica at a time, elected through a Lease. Cluster mode only.`)
	fs.StringVar(&o.LeaderElection.Name, "leader-elect-resource-name", o.LeaderElection.Name, "Name of the coordination.k8s.io Lease, in --namespace, that elects the replica running the rollout controller.")
	fs.DurationVar(&o.LeaderElection.LeaseDuration, "leader-elect-lease-duration", o.LeaderElection.LeaseDuration, "How long other replicas wait before taking over a Lease that was not renewed.")
	fs.DurationVar(&o.LeaderElection.RenewDeadline, "leader-elect-renew-deadline", o.LeaderElection.RenewDeadline, "How long the leader tries to renew its Lease before giving up leadership.")
	fs.DurationVar(&o.LeaderElection.RetryPeriod, "leader-elect-retry-period", o.LeaderElection.RetryPeriod, "How often replicas try to acquire or renew the Lease.")
	fs.Var(&quantityValue{&o.MaxPushBytes}, "max-push-bytes", "Largest blob (layer, config) or manifest that images/push accepts, in bytes or with a suffix (512Mi, 10Gi); larger ones are refused with 413.")
	fs.IntVar(&o.MaxFinishedImports, "max-finished-imports-per-image", o.MaxFinishedImports, "How many finished ImageImports (imported or failed) are kept per Image; older ones are deleted, oldest first, never a running one. 0 or less keeps them all.")
	fs.DurationVar(&o.MinImportInterval, "min-import-interval", o.MinImportInterval, "Shortest spec.importPolicy.interval an Image may have; shorter ones are refused, and stored ones (from before a change of this flag) are checked at this interval.")
	fs.IntVar(&o.ChecksPerRegistry, "import-checks-per-registry", o.ChecksPerRegistry, "How many scheduled or webhook-triggered checks (manifest HEADs, tag lists) run at once against one registry.")
	fs.StringVar(&o.RegistryHookURL, "registry-hook-url", o.RegistryHookURL, "URL registries reach this server at, for the webhook URLs \"kubectl image hook-url\" prints (e.g. https://tagger.example.com, an Ingress to the tagger-apiserver Service); empty means https://tagger-apiserver.<namespace>.svc, or https://127.0.0.1:<port> with --local.")
}

// quantityValue is a pflag.Value for a resource.Quantity.
type quantityValue struct{ q *resource.Quantity }

func (v *quantityValue) String() string { return v.q.String() }
func (v *quantityValue) Type() string   { return "quantity" }
func (v *quantityValue) Set(s string) error {
	q, err := resource.ParseQuantity(s)
	if err != nil {
		return err
	}
	*v.q = q
	return nil
}

// Complete fills in what depends on other flags.
func (o *Options) Complete() error {
	if o.Local {
		if err := o.completeLocal(); err != nil {
			return err
		}
	}
	return o.listen()
}

// completeLocal sets what local mode needs instead of a cluster.
func (o *Options) completeLocal() error {
	dir, err := filepath.Abs(o.LocalDir)
	if err != nil {
		return err
	}
	o.LocalDir = dir
	ro := o.RecommendedOptions
	// Nothing of a cluster is there to delegate to.
	ro.Authentication = nil
	ro.Authorization = nil
	ro.CoreAPI = nil
	ro.Admission = nil
	ro.SecureServing.BindAddress = net.ParseIP("127.0.0.1")
	if ro.SecureServing.BindPort == 443 {
		ro.SecureServing.BindPort = 8443
	}
	ro.SecureServing.ServerCert.CertDirectory = filepath.Join(dir, "certs")
	// Priority and fairness reads its configuration from kube-apiserver.
	ro.Features.EnablePriorityAndFairness = false
	return nil
}

// listen opens the serving port now, before anything else starts (local
// mode's etcd and registry), so that a port in use is reported at once and
// names the flag to change. With --permit-port-sharing or
// --permit-address-sharing the generic server opens it later itself.
func (o *Options) listen() error {
	ss := o.RecommendedOptions.SecureServing
	if ss == nil || ss.Listener != nil || ss.BindPort <= 0 || ss.PermitPortSharing || ss.PermitAddressSharing {
		return nil
	}
	network := ss.BindNetwork
	if network == "" {
		network = "tcp"
	}
	addr := net.JoinHostPort(ss.BindAddress.String(), strconv.Itoa(ss.BindPort))
	ln, err := (&net.ListenConfig{}).Listen(context.Background(), network, addr)
	if err != nil {
		return portHint(err, addr, "--secure-port", o.Local)
	}
	ss.Listener = ln
	return nil
}

// portHint adds to an error listening on addr which flag chooses another
// address when the address is in use. The hint has no double quotes: klog
// would show them escaped.
func portHint(err error, addr, flag string, local bool) error {
	if !errors.Is(err, syscall.EADDRINUSE) {
		return fmt.Errorf("listening on %s: %w", addr, err)
	}
	hint := ""
	if local {
		next := addr
		if host, port, splitErr := net.SplitHostPort(addr); splitErr == nil {
			if p, convErr := strconv.Atoi(port); convErr == nil {
				next = strconv.Itoa(p + 1)
				if flag != "--secure-port" {
					next = net.JoinHostPort(host, next)
				}
			}
		}
		hint = fmt.Sprintf(", e.g. make run ARGS=%s=%s", flag, next)
	}
	return fmt.Errorf("%s is in use by another process (another tagger-apiserver?): choose another with %s%s", addr, flag, hint)
}

// Validate checks the options.
func (o *Options) Validate() error {
	var errs []error
	errs = append(errs, o.RecommendedOptions.Validate()...)
	if o.ImportRenewInterval <= 0 || o.ImportResumeAfter < 2*o.ImportRenewInterval {
		errs = append(errs, fmt.Errorf("--import-resume-after (%s) must be at least twice --import-renew-interval (%s)", o.ImportResumeAfter, o.ImportRenewInterval))
	}
	if o.ImportSyncTimeout <= 0 || o.ImportTimeout <= 0 {
		errs = append(errs, fmt.Errorf("--import-sync-timeout and --import-timeout must be positive"))
	}
	if o.EnablePodWebhook && len(o.PodWebhookAllowedNames) == 0 {
		errs = append(errs, fmt.Errorf("--enable-pod-webhook needs --pod-webhook-allowed-names: the common name of kube-apiserver's webhook client certificate"))
	}
	if o.Local && (o.EnablePodWebhook || o.EnableRollout) {
		errs = append(errs, fmt.Errorf("--enable-pod-webhook and --enable-rollout need a cluster (pods and workloads): not with --local"))
	}
	if le := o.LeaderElection; o.EnableRollout && (le.Name == "" || le.RetryPeriod <= 0 || le.RenewDeadline <= le.RetryPeriod || le.LeaseDuration <= le.RenewDeadline) {
		errs = append(errs, fmt.Errorf("leader election: need a --leader-elect-resource-name and 0 < --leader-elect-retry-period < --leader-elect-renew-deadline < --leader-elect-lease-duration"))
	}
	if o.MinImportInterval <= 0 || o.ChecksPerRegistry <= 0 {
		errs = append(errs, fmt.Errorf("--min-import-interval and --import-checks-per-registry must be positive"))
	}
	if o.MaxPushBytes.Value() <= 0 {
		errs = append(errs, fmt.Errorf("--max-push-bytes must be positive"))
	}
	return utilerrors.NewAggregate(errs)
}
