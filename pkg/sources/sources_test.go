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
	"errors"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/client-go/kubernetes/fake"

	"tagger.dev/tagger/pkg/importer"
)

func secret(ns, name string, typ corev1.SecretType, data map[string]string) *corev1.Secret {
	s := &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name}, Type: typ, Data: map[string][]byte{}}
	for k, v := range data {
		s.Data[k] = []byte(v)
	}
	return s
}

func pullSecret(ns, name, host, auth string) *corev1.Secret {
	return secret(ns, name, corev1.SecretTypeDockerConfigJson, map[string]string{
		corev1.DockerConfigJsonKey: `{"auths":{"` + host + `":{"auth":"` + auth + `"}}}`,
	})
}

func startCluster(t *testing.T, objs ...runtime.Object) *Cluster {
	t.Helper()
	c := NewCluster(fake.NewClientset(objs...), "tagger")
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	if err := c.Start(ctx); err != nil {
		t.Fatal(err)
	}
	return c
}

func TestClusterCredentialsStayInTheirNamespace(t *testing.T) {
	c := startCluster(t,
		pullSecret("team-a", "pull", "registry.example:5000", "YWxpY2U6c2VjcmV0"), // alice:secret
		pullSecret("team-b", "pull", "registry.example:5000", "Ym9iOmh1bnRlcjI="), // bob:hunter2
		secret("team-a", "dockercfg", corev1.SecretTypeDockercfg, map[string]string{
			corev1.DockerConfigKey: `{"https://index.docker.io/v1/":{"auth":"Y2Fyb2w6cHc="}}`, // carol:pw
		}),
		secret("team-a", "opaque", corev1.SecretTypeOpaque, map[string]string{"password": "never"}),
	)
	cases := map[string]struct {
		namespace, image string
		want             []importer.Credential
	}{
		"own secret":            {"team-a", "registry.example:5000/app:v1", []importer.Credential{{Username: "alice", Password: "secret"}}},
		"other namespace's":     {"team-b", "registry.example:5000/app:v1", []importer.Credential{{Username: "bob", Password: "hunter2"}}},
		"no secret there":       {"team-c", "registry.example:5000/app:v1", nil},
		"docker hub via alias":  {"team-a", "nginx", []importer.Credential{{Username: "carol", Password: "pw"}}},
		"host that matches not": {"team-a", "quay.example/app", nil},
	}
	for name, tc := range cases {
		t.Run(name, func(t *testing.T) {
			got, err := c.Credentials(tc.namespace, tc.image)
			if err != nil {
				t.Fatal(err)
			}
			if len(got) == 0 && len(tc.want) == 0 {
				return
			}
			if !reflect.DeepEqual(got, tc.want) {
				t.Fatalf("got %+v, want %+v", got, tc.want)
			}
		})
	}
}

func TestClusterMirrorLookupOrder(t *testing.T) {
	global := secret("tagger", MirrorSecretName, corev1.SecretTypeOpaque, map[string]string{
		"address": "https://mirror.example/", "username": "u", "password": "p", "insecure": "true",
	})
	perNamespace := secret("team-a", MirrorSecretName, corev1.SecretTypeOpaque, map[string]string{
		"address": "team-mirror.example:5000", "repository": "shared", "token": "t0k3n",
	})
	hosting := &corev1.ConfigMap{
		ObjectMeta: metav1.ObjectMeta{Namespace: LocalRegistryHostingNamespace, Name: LocalRegistryHostingName},
		Data:       map[string]string{"localRegistryHosting.v1": "host: localhost:5001\nhostFromClusterNetwork: kind-registry:5000\n"},
	}
	cases := map[string]struct {
		objs      []runtime.Object
		namespace string
		want      *importer.Mirror
		wantErr   error
	}{
		"namespace overrides global": {
			objs: []runtime.Object{global, perNamespace, hosting}, namespace: "team-a",
			want: &importer.Mirror{Repository: "team-mirror.example:5000/shared/team-a_app", Credential: &importer.Credential{Token: "t0k3n"}},
		},
		"global for other namespaces": {
			objs: []runtime.Object{global, perNamespace, hosting}, namespace: "team-b",
			want: &importer.Mirror{Repository: "mirror.example/team-b/app", Insecure: true, Credential: &importer.Credential{Username: "u", Password: "p"}},
		},
		"KEP-1755 ConfigMap last": {
			objs: []runtime.Object{hosting}, namespace: "team-b",
			want: &importer.Mirror{Repository: "kind-registry:5000/team-b/app", Insecure: true},
		},
		"nothing configured": {namespace: "team-b", wantErr: ErrNoMirror},
	}
	for name, tc := range cases {
		t.Run(name, func(t *testing.T) {
			c := startCluster(t, tc.objs...)
			got, err := c.Mirror(context.Background(), tc.namespace, "app")
			if !errors.Is(err, tc.wantErr) {
				t.Fatalf("error %v, want %v", err, tc.wantErr)
			}
			if !reflect.DeepEqual(got, tc.want) {
				t.Fatalf("got %+v, want %+v", got, tc.want)
			}
		})
	}
}

func TestMirrorConfigWithoutAddress(t *testing.T) {
	if _, err := MirrorConfigFromSecret(map[string][]byte{"username": []byte("u")}); err == nil {
		t.Fatal("a mirror config without address was accepted")
	}
	if _, err := MirrorConfigFromLocalRegistryHosting(map[string]string{"localRegistryHosting.v1": "help: x"}); err == nil {
		t.Fatal("a hosting ConfigMap without host was accepted")
	}
}

func TestLocalSources(t *testing.T) {
	authFile := filepath.Join(t.TempDir(), "auth.json")
	l := &Local{AuthFile: authFile}
	if got, err := l.Credentials("default", "127.0.0.1:5000/app"); err != nil || len(got) != 0 {
		t.Fatalf("missing auth file: %v %v", got, err)
	}
	// A login made while Tagger runs is seen by the next import.
	if err := os.WriteFile(authFile, []byte(`{"auths":{"127.0.0.1:5000":{"auth":"dTpw"}}}`), 0o600); err != nil {
		t.Fatal(err)
	}
	got, err := l.Credentials("default", "127.0.0.1:5000/app")
	if err != nil || !reflect.DeepEqual(got, []importer.Credential{{Username: "u", Password: "p"}}) {
		t.Fatalf("credentials %+v %v", got, err)
	}
	if _, err := l.Mirror(context.Background(), "default", "app"); !errors.Is(err, ErrNoMirror) || strings.Contains(err.Error(), "Secret") || !strings.Contains(err.Error(), "--local-registry-address") {
		t.Fatalf("no mirror: %v", err)
	}
	l.MirrorConfig = MirrorConfig{Address: "127.0.0.1:5000", Insecure: true}
	m, err := l.Mirror(context.Background(), "default", "app")
	if err != nil || m.Repository != "127.0.0.1:5000/default/app" || !m.Insecure || m.Credential != nil {
		t.Fatalf("mirror %+v %v", m, err)
	}
}
