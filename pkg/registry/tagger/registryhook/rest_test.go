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

package registryhook

import (
	"context"
	"os"
	"path/filepath"
	"testing"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	genericapirequest "k8s.io/apiserver/pkg/endpoints/request"

	"tagger.dev/tagger/pkg/apis/tagger"
	"tagger.dev/tagger/pkg/webhook/registryhooks"
)

func create(t *testing.T, r *REST, ns string, hook *tagger.RegistryHook, opts *metav1.CreateOptions) (*tagger.RegistryHook, error) {
	t.Helper()
	ctx := context.Background()
	if ns != "" {
		ctx = genericapirequest.WithNamespace(ctx, ns)
	}
	obj, err := r.Create(ctx, hook, nil, opts)
	if err != nil {
		return nil, err
	}
	return obj.(*tagger.RegistryHook), nil
}

func TestCreate(t *testing.T) {
	dir := t.TempDir()
	r := NewREST(&registryhooks.FileTokens{Dir: dir}, func() string { return "https://tagger.example.com/" })

	// A dry run creates no token.
	dry, err := create(t, r, "shop", &tagger.RegistryHook{}, &metav1.CreateOptions{DryRun: []string{metav1.DryRunAll}})
	if err != nil || dry.Status.Token != "" {
		t.Fatalf("dry run: %+v %v", dry, err)
	}
	if _, err := os.Stat(filepath.Join(dir, "shop")); !os.IsNotExist(err) {
		t.Fatalf("a dry run wrote a token: %v", err)
	}

	first, err := create(t, r, "shop", &tagger.RegistryHook{}, &metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if first.Namespace != "shop" || first.Name != "registry-hook" || len(first.Status.Token) != 43 ||
		first.Status.URL != "https://tagger.example.com/webhooks/tagger.dev/registry/shop/"+first.Status.Token {
		t.Fatalf("hook %+v", first)
	}
	again, _ := create(t, r, "shop", &tagger.RegistryHook{}, &metav1.CreateOptions{})
	if again.Status.Token != first.Status.Token {
		t.Errorf("a second create changed the token")
	}
	rotated, _ := create(t, r, "shop", &tagger.RegistryHook{Spec: tagger.RegistryHookSpec{Rotate: true}}, &metav1.CreateOptions{})
	if rotated.Status.Token == first.Status.Token {
		t.Errorf("rotate kept the token")
	}
	if _, err := create(t, r, "", &tagger.RegistryHook{}, &metav1.CreateOptions{}); !apierrors.IsBadRequest(err) {
		t.Errorf("without a namespace: %v", err)
	}
}

func TestCreateRunsAdmission(t *testing.T) {
	r := NewREST(&registryhooks.FileTokens{Dir: t.TempDir()}, func() string { return "https://x" })
	refuse := func(context.Context, runtime.Object) error {
		return apierrors.NewForbidden(tagger.Resource("registryhooks"), "", nil)
	}
	ctx := genericapirequest.WithNamespace(context.Background(), "shop")
	if _, err := r.Create(ctx, &tagger.RegistryHook{}, refuse, &metav1.CreateOptions{}); !apierrors.IsForbidden(err) {
		t.Errorf("admission refusal: %v", err)
	}
}
