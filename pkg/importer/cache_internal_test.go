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

package importer

import (
	"fmt"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"
	"go.podman.io/image/v5/pkg/blobinfocache/memory"
)

func TestBlobCachesAreBounded(t *testing.T) {
	b := &blobCaches{limit: 3}
	c := b.forMirror("mirror.example", nil)
	first := c.get()
	c.get()
	c.get()
	if c.get() == first {
		t.Error("the cache did not start over after 3 records")
	}
	if b.forMirror("MIRROR.example", nil) != c {
		t.Error("host names are not case-insensitive")
	}
	if b.forMirror("mirror.example", &Credential{Username: "u", Password: "p"}) == c {
		t.Error("another credential shares the cache")
	}
	for n := 0; n < 2*maxBlobCaches; n++ {
		b.forMirror(fmt.Sprintf("m%d.example", n), nil)
	}
	if len(b.caches) > maxBlobCaches {
		t.Errorf("%d caches kept, at most %d", len(b.caches), maxBlobCaches)
	}
	if !seedCompression(memory.New(), digest.Digest("sha256:"+fmt.Sprintf("%064d", 1))) {
		t.Error("containers/image's in-memory cache no longer takes compression data: mounts are off")
	}
}

func TestAuthCacheLifetimes(t *testing.T) {
	now := time.Unix(1_000_000, 0)
	a := newAuthCache()
	a.now = func() time.Time { return now }
	k := tokenKey{realm: "https://auth.example/token", service: "s", scope: "repository:a:pull", cred: credentialKey(&Credential{Username: "u", Password: "p"})}
	a.setToken(k, "t", now.Add(time.Minute))
	if tok, ok := a.token(k); !ok || tok != "t" {
		t.Fatal("token not cached")
	}
	other := k
	other.cred = credentialKey(&Credential{Username: "u", Password: "q"})
	if _, ok := a.token(other); ok {
		t.Error("another credential's token served")
	}
	if credentialKey(nil) == credentialKey(&Credential{}) {
		t.Error("anonymous and an empty credential share a key")
	}
	now = now.Add(time.Minute)
	if _, ok := a.token(k); ok {
		t.Error("expired token served")
	}
	pk := pingKey{host: "r.example"}
	a.setPing(pk, pingEntry{scheme: "https"})
	now = now.Add(pingLifetime + time.Second)
	if _, ok := a.ping(pk); ok {
		t.Error("expired ping served")
	}
	for n := 0; n < 2*maxAuthEntries; n++ {
		a.setToken(tokenKey{realm: fmt.Sprint(n)}, "t", now.Add(time.Hour))
		a.setPing(pingKey{host: fmt.Sprint(n)}, pingEntry{})
	}
	if len(a.tokens) > maxAuthEntries || len(a.pings) > maxAuthEntries {
		t.Errorf("%d tokens and %d pings kept, at most %d", len(a.tokens), len(a.pings), maxAuthEntries)
	}
}

func TestParseChallenge(t *testing.T) {
	c, ok := parseChallenge(`Bearer realm="https://auth.example/token",service="registry.example",scope="repository:a/b:pull,push"`)
	if !ok || c.scheme != "bearer" || c.params["realm"] != "https://auth.example/token" || c.params["service"] != "registry.example" || c.params["scope"] != "repository:a/b:pull,push" {
		t.Errorf("parsed %+v, %v", c, ok)
	}
	if c, ok := parseChallenge(`Basic realm=registry`); !ok || c.scheme != "basic" || c.params["realm"] != "registry" {
		t.Errorf("parsed %+v, %v", c, ok)
	}
	if _, ok := parseChallenge(`Bearer realm="unterminated`); ok {
		t.Error("unterminated quote accepted")
	}
}
