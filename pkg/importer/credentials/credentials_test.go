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

package credentials

import (
	"encoding/base64"
	"os"
	"path/filepath"
	"reflect"
	"testing"

	"tagger.dev/tagger/pkg/importer"
)

func b64(s string) string { return base64.StdEncoding.EncodeToString([]byte(s)) }

func TestParseSecret(t *testing.T) {
	jsonDoc := `{"auths":{"registry.example.com":{"auth":"` + b64("q:qpass") + `"}},"credHelpers":{"helper.example.com":"gcloud"}}`
	cfgDoc := `{"https://index.docker.io/v1/":{"username":"d","password":"dpass","email":"d@example.com"}}`
	for _, tc := range []struct {
		name    string
		typ     string
		data    map[string][]byte
		want    DockerConfig
		wantErr bool
	}{
		{name: "dockerconfigjson", typ: SecretTypeDockerConfigJSON, data: map[string][]byte{DockerConfigJSONKey: []byte(jsonDoc)},
			want: DockerConfig{"registry.example.com": {Auth: b64("q:qpass")}}},
		{name: "dockercfg", typ: SecretTypeDockercfg, data: map[string][]byte{DockercfgKey: []byte(cfgDoc)},
			want: DockerConfig{"https://index.docker.io/v1/": {Username: "d", Password: "dpass", Email: "d@example.com"}}},
		{name: "wrong key", typ: SecretTypeDockerConfigJSON, data: map[string][]byte{DockercfgKey: []byte(cfgDoc)}, wantErr: true},
		{name: "wrong type", typ: "Opaque", data: map[string][]byte{DockerConfigJSONKey: []byte(jsonDoc)}, wantErr: true},
		{name: "bad json", typ: SecretTypeDockercfg, data: map[string][]byte{DockercfgKey: []byte("{")}, wantErr: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := ParseSecret(tc.typ, tc.data)
			if (err != nil) != tc.wantErr {
				t.Fatalf("err = %v, wantErr %v", err, tc.wantErr)
			}
			if !tc.wantErr && !reflect.DeepEqual(got, tc.want) {
				t.Errorf("got %#v, want %#v", got, tc.want)
			}
		})
	}
}

func TestEntryCredential(t *testing.T) {
	for _, tc := range []struct {
		name    string
		entry   DockerConfigEntry
		want    importer.Credential
		wantErr bool
	}{
		{name: "auth", entry: DockerConfigEntry{Auth: b64("u:p")}, want: importer.Credential{Username: "u", Password: "p"}},
		{name: "auth with colon in password", entry: DockerConfigEntry{Auth: b64("u:p:q")}, want: importer.Credential{Username: "u", Password: "p:q"}},
		{name: "auth wins over fields", entry: DockerConfigEntry{Auth: b64("u:p"), Username: "x", Password: "y"}, want: importer.Credential{Username: "u", Password: "p"}},
		{name: "fields", entry: DockerConfigEntry{Username: "x", Password: "y"}, want: importer.Credential{Username: "x", Password: "y"}},
		{name: "identity token", entry: DockerConfigEntry{Auth: b64("<token>:"), IdentityToken: "idt"}, want: importer.Credential{Username: "<token>", Token: "idt"}},
		{name: "registry token", entry: DockerConfigEntry{RegistryToken: "rt"}, want: importer.Credential{Token: "rt"}},
		{name: "bad base64", entry: DockerConfigEntry{Auth: "%%%"}, wantErr: true},
		{name: "no colon", entry: DockerConfigEntry{Auth: b64("nocolon")}, wantErr: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := tc.entry.Credential()
			if (err != nil) != tc.wantErr {
				t.Fatalf("err = %v, wantErr %v", err, tc.wantErr)
			}
			if got != tc.want {
				t.Errorf("got %+v, want %+v", got, tc.want)
			}
		})
	}
}

func TestLookup(t *testing.T) {
	cred := func(u string) importer.Credential { return importer.Credential{Username: u, Password: u + "-pw"} }
	entry := func(u string) DockerConfigEntry { return DockerConfigEntry{Auth: b64(u + ":" + u + "-pw")} }
	for _, tc := range []struct {
		name    string
		configs []DockerConfig
		image   string
		want    []importer.Credential
	}{
		{name: "docker hub v1 key for short name", configs: []DockerConfig{{"https://index.docker.io/v1/": entry("hub")}}, image: "nginx", want: []importer.Credential{cred("hub")}},
		{name: "docker.io key", configs: []DockerConfig{{"docker.io": entry("hub")}}, image: "docker.io/library/nginx:1", want: []importer.Credential{cred("hub")}},
		{name: "registry-1 alias", configs: []DockerConfig{{"registry-1.docker.io": entry("hub")}}, image: "user/app", want: []importer.Credential{cred("hub")}},
		{name: "index.docker.io image", configs: []DockerConfig{{"docker.io": entry("hub")}}, image: "index.docker.io/user/app", want: []importer.Credential{cred("hub")}},
		{name: "hub key does not match another registry", configs: []DockerConfig{{"docker.io": entry("hub")}}, image: "registry.example.com/org/app", want: nil},
		{name: "scheme ignored", configs: []DockerConfig{{"https://registry.example.com": entry("q")}}, image: "registry.example.com/org/app", want: []importer.Credential{cred("q")}},
		{name: "v2 path ignored", configs: []DockerConfig{{"https://registry.example.com/v2/": entry("q")}}, image: "registry.example.com/org/app", want: []importer.Credential{cred("q")}},
		{name: "host case-insensitive", configs: []DockerConfig{{"Registry.Example.COM": entry("q")}}, image: "registry.example.com/org/app", want: []importer.Credential{cred("q")}},
		{name: "port must match", configs: []DockerConfig{{"reg:5000": entry("a"), "reg:6000": entry("b"), "reg": entry("c")}}, image: "reg:5000/app", want: []importer.Credential{cred("a")}},
		{name: "path prefix", configs: []DockerConfig{{"registry.example.com/org": entry("org"), "registry.example.com/other": entry("other")}}, image: "registry.example.com/org/app", want: []importer.Credential{cred("org")}},
		{name: "path prefix on segment boundary", configs: []DockerConfig{{"registry.example.com/org": entry("org")}}, image: "registry.example.com/organization/app", want: nil},
		{name: "most specific first", configs: []DockerConfig{{"registry.example.com": entry("host"), "registry.example.com/org": entry("org"), "registry.example.com/org/app": entry("app")}}, image: "registry.example.com/org/app:v1",
			want: []importer.Credential{cred("app"), cred("org"), cred("host")}},
		{name: "wildcard", configs: []DockerConfig{{"*.example.com": entry("wild"), "a.example.com": entry("exact")}}, image: "a.example.com/app",
			want: []importer.Credential{cred("exact"), cred("wild")}},
		{name: "wildcard one label", configs: []DockerConfig{{"*.example.com": entry("wild")}}, image: "a.b.example.com/app", want: nil},
		{name: "wildcard not apex", configs: []DockerConfig{{"*.example.com": entry("wild")}}, image: "example.com/app", want: nil},
		{name: "configs in order, duplicates once", configs: []DockerConfig{{"registry.example.com": entry("first")}, {"registry.example.com": entry("second"), "https://registry.example.com": entry("first")}}, image: "registry.example.com/x",
			want: []importer.Credential{cred("first"), cred("second")}},
		{name: "undecodable and empty entries skipped", configs: []DockerConfig{{"registry.example.com": {Auth: "%%%"}, "https://registry.example.com/": {Email: "x@y"}, "registry.example.com/x": entry("ok")}}, image: "registry.example.com/x/y",
			want: []importer.Credential{cred("ok")}},
		{name: "digest reference", configs: []DockerConfig{{"registry.example.com": entry("q")}}, image: "registry.example.com/x@sha256:" + "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef", want: []importer.Credential{cred("q")}},
		{name: "invalid image", configs: []DockerConfig{{"registry.example.com": entry("q")}}, image: "Not Valid", want: nil},
		{name: "loopback with port", configs: []DockerConfig{{"http://127.0.0.1:5000": entry("l")}}, image: "127.0.0.1:5000/app", want: []importer.Credential{cred("l")}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := Lookup(tc.configs, tc.image); !reflect.DeepEqual(got, tc.want) {
				t.Errorf("Lookup(%s) = %+v, want %+v", tc.image, got, tc.want)
			}
		})
	}
}

func TestAuthFile(t *testing.T) {
	dir := t.TempDir()
	file := filepath.Join(dir, "auth.json")
	lookup := AuthFile(file)
	if got := lookup("registry.example.com/x"); got != nil {
		t.Errorf("missing file: %+v", got)
	}
	if err := os.WriteFile(file, []byte(`{"auths":{"registry.example.com":{"auth":"`+b64("u:p")+`"}}}`), 0o600); err != nil {
		t.Fatal(err)
	}
	if got := lookup("registry.example.com/x"); !reflect.DeepEqual(got, []importer.Credential{{Username: "u", Password: "p"}}) {
		t.Errorf("got %+v", got)
	}
	if err := os.WriteFile(file, []byte(`not json`), 0o600); err != nil {
		t.Fatal(err)
	}
	if got := lookup("registry.example.com/x"); got != nil {
		t.Errorf("broken file: %+v", got)
	}
	if _, err := ReadAuthFile(file); err == nil {
		t.Error("ReadAuthFile of a broken file: no error")
	}
}
