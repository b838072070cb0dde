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

// Package registryhook serves registryhooks, a create-only resource that
// is not stored: creating one returns the registry webhook URL of the
// namespace, creating its token when there is none.
package registryhook

import (
	"context"
	"fmt"
	"strings"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	genericapirequest "k8s.io/apiserver/pkg/endpoints/request"
	"k8s.io/apiserver/pkg/registry/rest"

	"tagger.dev/tagger/pkg/apis/tagger"
	"tagger.dev/tagger/pkg/webhook/registryhooks"
)

// REST implements the registryhooks resource.
type REST struct {
	tokens  registryhooks.Tokens
	baseURL func() string
}

var (
	_ rest.Storage              = &REST{}
	_ rest.Creater              = &REST{}
	_ rest.Scoper               = &REST{}
	_ rest.SingularNameProvider = &REST{}
)

// NewREST returns the registryhooks storage. baseURL returns the URL
// registries reach Tagger's secure port at ("https://tagger.example.com").
func NewREST(tokens registryhooks.Tokens, baseURL func() string) *REST {
	return &REST{tokens: tokens, baseURL: baseURL}
}

// New implements rest.Storage.
func (r *REST) New() runtime.Object { return &tagger.RegistryHook{} }

// Destroy implements rest.Storage.
func (r *REST) Destroy() {}

// NamespaceScoped implements rest.Scoper.
func (r *REST) NamespaceScoped() bool { return true }

// GetSingularName implements rest.SingularNameProvider.
func (r *REST) GetSingularName() string { return "registryhook" }

// Create implements rest.Creater: it returns the hook of the namespace,
// creating its token when there is none (or a new one with spec.rotate).
// A dry run creates nothing and returns no token.
func (r *REST) Create(ctx context.Context, obj runtime.Object, createValidation rest.ValidateObjectFunc, options *metav1.CreateOptions) (runtime.Object, error) {
	hook, ok := obj.(*tagger.RegistryHook)
	if !ok {
		return nil, apierrors.NewBadRequest(fmt.Sprintf("not a RegistryHook: %T", obj))
	}
	ns, ok := genericapirequest.NamespaceFrom(ctx)
	if !ok || ns == "" {
		return nil, apierrors.NewBadRequest("a registry hook belongs to a namespace")
	}
	if createValidation != nil {
		if err := createValidation(ctx, obj.DeepCopyObject()); err != nil {
			return nil, err
		}
	}
	out := &tagger.RegistryHook{
		ObjectMeta: metav1.ObjectMeta{Name: hook.Name, Namespace: ns, CreationTimestamp: metav1.Now()},
		Spec:       hook.Spec,
	}
	if out.Name == "" {
		out.Name = "registry-hook"
	}
	if len(options.DryRun) > 0 {
		return out, nil
	}
	token, err := r.tokens.Ensure(ctx, ns, hook.Spec.Rotate)
	if err != nil {
		if apierrors.IsForbidden(err) {
			return nil, apierrors.NewInternalError(fmt.Errorf("tagger-apiserver may not keep the Secret %s in %s: %w", registryhooks.SecretName, ns, err))
		}
		return nil, err
	}
	out.Status = tagger.RegistryHookStatus{URL: URL(r.baseURL(), ns, token), Token: token}
	return out, nil
}

// URL is the hook URL of namespace with token, under base.
func URL(base, namespace, token string) string {
	return strings.TrimSuffix(base, "/") + registryhooks.PathPrefix + namespace + "/" + token
}
