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

package registryhooks

import (
	"context"
	"crypto/rand"
	"encoding/base64"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sync"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/apimachinery/pkg/util/validation"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	corelisters "k8s.io/client-go/listers/core/v1"
	"k8s.io/client-go/tools/cache"
)

// Tokens keeps the webhook token of each namespace.
type Tokens interface {
	// Token returns the token of namespace, "" when it has none.
	Token(namespace string) (string, error)
	// Ensure returns the token of namespace, creating one when there is
	// none, or a new one when rotate is set.
	Ensure(ctx context.Context, namespace string, rotate bool) (string, error)
}

// newToken returns 32 random bytes, URL-safe base64 (43 characters).
func newToken() (string, error) {
	b := make([]byte, 32)
	if _, err := rand.Read(b); err != nil {
		return "", err
	}
	return base64.RawURLEncoding.EncodeToString(b), nil
}

// FileTokens keeps tokens in files, one per namespace (<Dir>/<namespace>,
// mode 0600): local mode's store.
type FileTokens struct {
	Dir string

	mu sync.Mutex
}

var _ Tokens = &FileTokens{}

func (f *FileTokens) path(namespace string) (string, error) {
	if errs := validation.IsDNS1123Label(namespace); len(errs) > 0 {
		return "", fmt.Errorf("invalid namespace %q", namespace)
	}
	return filepath.Join(f.Dir, namespace), nil
}

// Token implements Tokens.
func (f *FileTokens) Token(namespace string) (string, error) {
	p, err := f.path(namespace)
	if err != nil {
		return "", nil // no such namespace, no token
	}
	b, err := os.ReadFile(p)
	if errors.Is(err, os.ErrNotExist) {
		return "", nil
	}
	return string(b), err
}

// Ensure implements Tokens.
func (f *FileTokens) Ensure(ctx context.Context, namespace string, rotate bool) (string, error) {
	p, err := f.path(namespace)
	if err != nil {
		return "", err
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if !rotate {
		if t, err := f.Token(namespace); err != nil || t != "" {
			return t, err
		}
	}
	t, err := newToken()
	if err != nil {
		return "", err
	}
	if err := os.MkdirAll(f.Dir, 0o700); err != nil {
		return "", err
	}
	tmp, err := os.CreateTemp(f.Dir, "."+namespace+"-*")
	if err != nil {
		return "", err
	}
	defer os.Remove(tmp.Name())
	if _, err := tmp.WriteString(t); err != nil {
		tmp.Close()
		return "", err
	}
	if err := tmp.Close(); err != nil {
		return "", err
	}
	if err := os.Rename(tmp.Name(), p); err != nil {
		return "", err
	}
	return t, nil
}

// SecretName is the Secret that holds a namespace's token in a cluster.
const SecretName = "tagger-registry-hook"

// SecretKey is the key of the token in SecretName.
const SecretKey = "token"

// SecretTokens keeps tokens in the Secret SecretName of each namespace,
// read through an informer that watches only Secrets of that name.
type SecretTokens struct {
	client  kubernetes.Interface
	factory informers.SharedInformerFactory
	lister  corelisters.SecretLister
	synced  cache.InformerSynced
}

var _ Tokens = &SecretTokens{}

// NewSecretTokens returns the Secret store; Start starts its informer.
func NewSecretTokens(client kubernetes.Interface) *SecretTokens {
	f := informers.NewSharedInformerFactoryWithOptions(client, 0,
		informers.WithTweakListOptions(func(o *metav1.ListOptions) {
			o.FieldSelector = fields.OneTermEqualSelector("metadata.name", SecretName).String()
		}))
	secrets := f.Core().V1().Secrets()
	return &SecretTokens{client: client, factory: f, lister: secrets.Lister(), synced: secrets.Informer().HasSynced}
}

// Start starts the informer and waits for its cache.
func (s *SecretTokens) Start(ctx context.Context) error {
	s.factory.Start(ctx.Done())
	if !cache.WaitForCacheSync(ctx.Done(), s.synced) {
		return errors.New("registry hook Secrets did not sync")
	}
	return nil
}

// HasSynced tells whether the cache is filled.
func (s *SecretTokens) HasSynced() bool { return s.synced() }

// Token implements Tokens.
func (s *SecretTokens) Token(namespace string) (string, error) {
	sec, err := s.lister.Secrets(namespace).Get(SecretName)
	if apierrors.IsNotFound(err) {
		return "", nil
	}
	if err != nil {
		return "", err
	}
	return string(sec.Data[SecretKey]), nil
}

// Ensure implements Tokens. It reads the Secret from the API, not the
// cache, so a token created a moment ago is returned, not replaced.
func (s *SecretTokens) Ensure(ctx context.Context, namespace string, rotate bool) (string, error) {
	secrets := s.client.CoreV1().Secrets(namespace)
	sec, err := secrets.Get(ctx, SecretName, metav1.GetOptions{})
	switch {
	case apierrors.IsNotFound(err):
		t, err := newToken()
		if err != nil {
			return "", err
		}
		_, err = secrets.Create(ctx, &corev1.Secret{
			ObjectMeta: metav1.ObjectMeta{
				Name: SecretName, Namespace: namespace,
				Labels: map[string]string{"app.kubernetes.io/managed-by": "tagger"},
			},
			Type: corev1.SecretTypeOpaque,
			Data: map[string][]byte{SecretKey: []byte(t)},
		}, metav1.CreateOptions{})
		if apierrors.IsAlreadyExists(err) && !rotate {
			return s.Ensure(ctx, namespace, false) // created meanwhile: use it
		}
		if err != nil {
			return "", err
		}
		return t, nil
	case err != nil:
		return "", err
	}
	if t := string(sec.Data[SecretKey]); t != "" && !rotate {
		return t, nil
	}
	t, err := newToken()
	if err != nil {
		return "", err
	}
	sec = sec.DeepCopy()
	if sec.Data == nil {
		sec.Data = map[string][]byte{}
	}
	sec.Data[SecretKey] = []byte(t)
	if sec.Labels == nil {
		sec.Labels = map[string]string{}
	}
	sec.Labels["app.kubernetes.io/managed-by"] = "tagger"
	if _, err := secrets.Update(ctx, sec, metav1.UpdateOptions{}); err != nil {
		return "", err
	}
	return t, nil
}
