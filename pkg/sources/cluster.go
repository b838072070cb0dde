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
package sources

import (
	"context"
	"fmt"
	"sort"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	corelisters "k8s.io/client-go/listers/core/v1"
	"k8s.io/client-go/tools/cache"
	"k8s.io/klog/v2"

	"tagger.dev/tagger/pkg/importer"
	"tagger.dev/tagger/pkg/importer/credentials"
)

// Cluster reads pull secrets and mirror configuration through informers, so
// an import never waits on, nor loads, the core API.
type Cluster struct {
	// Namespace is Tagger's own namespace, where the cluster-wide
	// mirror-registry-config lives.
	Namespace string

	factories   []informers.SharedInformerFactory
	pullSecrets []corelisters.SecretLister
	mirrors     corelisters.SecretLister
	hosting     corelisters.ConfigMapLister
	synced      []cache.InformerSynced
}

// NewCluster watches only what imports need: Secrets of the two pull-secret
// types, Secrets named mirror-registry-config and the one KEP-1755 ConfigMap.
func NewCluster(client kubernetes.Interface, namespace string) *Cluster {
	c := &Cluster{Namespace: namespace}
	filtered := func(namespace, selector string) informers.SharedInformerFactory {
		f := informers.NewSharedInformerFactoryWithOptions(client, 0,
			informers.WithNamespace(namespace),
			informers.WithTweakListOptions(func(o *metav1.ListOptions) { o.FieldSelector = selector }))
		c.factories = append(c.factories, f)
		return f
	}
	for _, t := range []corev1.SecretType{corev1.SecretTypeDockerConfigJson, corev1.SecretTypeDockercfg} {
		f := filtered(metav1.NamespaceAll, fields.OneTermEqualSelector("type", string(t)).String())
		c.pullSecrets = append(c.pullSecrets, f.Core().V1().Secrets().Lister())
		c.synced = append(c.synced, f.Core().V1().Secrets().Informer().HasSynced)
	}
	f := filtered(metav1.NamespaceAll, fields.OneTermEqualSelector("metadata.name", MirrorSecretName).String())
	c.mirrors = f.Core().V1().Secrets().Lister()
	c.synced = append(c.synced, f.Core().V1().Secrets().Informer().HasSynced)
	f = filtered(LocalRegistryHostingNamespace, fields.OneTermEqualSelector("metadata.name", LocalRegistryHostingName).String())
	c.hosting = f.Core().V1().ConfigMaps().Lister()
	c.synced = append(c.synced, f.Core().V1().ConfigMaps().Informer().HasSynced)
	return c
}

// Start starts the informers and waits for their caches.
func (c *Cluster) Start(ctx context.Context) error {
	for _, f := range c.factories {
		f.Start(ctx.Done())
	}
	if !cache.WaitForCacheSync(ctx.Done(), c.synced...) {
		return fmt.Errorf("secrets and configmaps caches did not sync")
	}
	return nil
}

// HasSynced tells whether the caches are filled; readiness waits for it.
func (c *Cluster) HasSynced() bool {
	for _, s := range c.synced {
		if !s() {
			return false
		}
	}
	return true
}

// Credentials implements imageimport.Sources. Only the namespace's own
// Secrets are read: a Secret never lends its credentials to another namespace.
func (c *Cluster) Credentials(namespace, from string) ([]importer.Credential, error) {
	var secrets []*corev1.Secret
	for _, l := range c.pullSecrets {
		s, err := l.Secrets(namespace).List(labels.Everything())
		if err != nil {
			return nil, err
		}
		secrets = append(secrets, s...)
	}
	// A stable order, so the same Secret wins every time.
	sort.Slice(secrets, func(i, j int) bool { return secrets[i].Name < secrets[j].Name })
	var configs []credentials.DockerConfig
	for _, s := range secrets {
		cfg, err := credentials.ParseSecret(string(s.Type), s.Data)
		if err != nil {
			klog.InfoS("Skipping unreadable pull secret", "secret", klog.KObj(s), "err", err)
			continue
		}
		configs = append(configs, cfg)
	}
	return credentials.Lookup(configs, from), nil
}

// Mirror implements imageimport.Sources.
func (c *Cluster) Mirror(ctx context.Context, namespace, name string) (*importer.Mirror, error) {
	for _, ns := range []string{namespace, c.Namespace} {
		s, err := c.mirrors.Secrets(ns).Get(MirrorSecretName)
		if apierrors.IsNotFound(err) {
			continue
		}
		if err != nil {
			return nil, err
		}
		cfg, err := MirrorConfigFromSecret(s.Data)
		if err != nil {
			return nil, fmt.Errorf("Secret %s/%s: %w", ns, MirrorSecretName, err)
		}
		return cfg.Mirror(namespace, name), nil
	}
	cm, err := c.hosting.ConfigMaps(LocalRegistryHostingNamespace).Get(LocalRegistryHostingName)
	if apierrors.IsNotFound(err) {
		return nil, ErrNoMirror
	}
	if err != nil {
		return nil, err
	}
	cfg, err := MirrorConfigFromLocalRegistryHosting(cm.Data)
	if err != nil {
		return nil, err
	}
	return cfg.Mirror(namespace, name), nil
}
