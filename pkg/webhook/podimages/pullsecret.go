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

package podimages

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"reflect"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	"tagger.dev/tagger/pkg/importer"
)

// ClusterPullSecrets implements PullSecrets with a kubernetes.io/dockerconfigjson
// Secret named PullSecretName in each namespace, labelled as Tagger's. It
// holds one entry per mirror host and follows changes of the mirror's
// credentials. A Secret of that name that Tagger does not manage is never
// overwritten.
type ClusterPullSecrets struct {
	Client kubernetes.Interface
}

type dockerConfigEntry struct {
	Username      string `json:"username,omitempty"`
	Password      string `json:"password,omitempty"`
	Auth          string `json:"auth,omitempty"`
	RegistryToken string `json:"registrytoken,omitempty"`
}

type dockerConfigJSON struct {
	Auths map[string]dockerConfigEntry `json:"auths"`
}

func entry(cred importer.Credential) dockerConfigEntry {
	e := dockerConfigEntry{RegistryToken: cred.Token}
	if cred.Username != "" || cred.Password != "" {
		e.Username, e.Password = cred.Username, cred.Password
		e.Auth = base64.StdEncoding.EncodeToString([]byte(cred.Username + ":" + cred.Password))
	}
	return e
}

// Ensure implements PullSecrets.
func (p *ClusterPullSecrets) Ensure(ctx context.Context, namespace, host string, cred importer.Credential) (string, error) {
	secrets := p.Client.CoreV1().Secrets(namespace)
	for attempt := 0; ; attempt++ {
		s, err := secrets.Get(ctx, PullSecretName, metav1.GetOptions{})
		if apierrors.IsNotFound(err) {
			b, _ := json.Marshal(dockerConfigJSON{Auths: map[string]dockerConfigEntry{host: entry(cred)}})
			_, err = secrets.Create(ctx, &corev1.Secret{
				ObjectMeta: metav1.ObjectMeta{Name: PullSecretName, Namespace: namespace,
					Labels: map[string]string{ManagedByLabel: managedByValue}},
				Type: corev1.SecretTypeDockerConfigJson,
				Data: map[string][]byte{corev1.DockerConfigJsonKey: b},
			}, metav1.CreateOptions{})
			if apierrors.IsAlreadyExists(err) && attempt < 3 {
				continue // a concurrent pod creation made it
			}
			return PullSecretName, err
		}
		if err != nil {
			return "", err
		}
		if s.Labels[ManagedByLabel] != managedByValue || s.Type != corev1.SecretTypeDockerConfigJson {
			return "", fmt.Errorf("Secret %s/%s exists and is not managed by Tagger (label %s=%s)", namespace, PullSecretName, ManagedByLabel, managedByValue)
		}
		var cfg dockerConfigJSON
		_ = json.Unmarshal(s.Data[corev1.DockerConfigJsonKey], &cfg)
		if cfg.Auths == nil {
			cfg.Auths = map[string]dockerConfigEntry{}
		}
		want := entry(cred)
		if reflect.DeepEqual(cfg.Auths[host], want) {
			return PullSecretName, nil
		}
		cfg.Auths[host] = want
		b, _ := json.Marshal(cfg)
		s = s.DeepCopy()
		if s.Data == nil {
			s.Data = map[string][]byte{}
		}
		s.Data[corev1.DockerConfigJsonKey] = b
		_, err = secrets.Update(ctx, s, metav1.UpdateOptions{})
		if apierrors.IsConflict(err) && attempt < 3 {
			continue
		}
		return PullSecretName, err
	}
}
