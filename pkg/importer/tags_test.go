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

package importer_test

import (
	"context"
	"errors"
	"net/http"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"tagger.dev/tagger/pkg/importer"
)

// pageTags makes the registry answer tag lists two tags a page, with a
// Link to the next, and counts the pages.
func pageTags(pages *atomic.Int32) func(http.Handler) http.Handler {
	return func(h http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if strings.HasSuffix(r.URL.Path, "/tags/list") {
				pages.Add(1)
				if r.URL.Query().Get("n") == "" {
					q := r.URL.Query()
					q.Set("n", "2")
					r.URL.RawQuery = q.Encode()
				}
			}
			h.ServeHTTP(w, r)
		})
	}
}

func listTags(imp *importer.Importer, req importer.Request) ([]string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	return imp.ListTags(ctx, req)
}

func TestListTagsFollowsPages(t *testing.T) {
	var pages atomic.Int32
	reg := newRegistry(t, regOpts{wrap: pageTags(&pages)})
	img := randomImage(t, 256, 1)
	want := []string{"1.2.0", "1.3.1", "2.0.0", "latest", "v0"}
	for _, tag := range want {
		reg.pushImage(t, "org/app:"+tag, img)
	}
	pages.Store(0)
	got, err := listTags(importer.New(importer.Options{}), importer.Request{From: reg.Addr() + "/org/app:ignored", Insecure: true})
	if err != nil {
		t.Fatal(err)
	}
	slices.Sort(got)
	if !slices.Equal(got, want) {
		t.Errorf("tags = %v, want %v", got, want)
	}
	if n := pages.Load(); n < 3 {
		t.Errorf("%d tag list pages read, want 3 (two tags a page)", n)
	}
}

func TestListTagsWithCredentials(t *testing.T) {
	reg := newRegistry(t, regOpts{users: map[string]string{"alice": "secret-pass"}})
	reg.pushImage(t, "org/private:v1", randomImage(t, 256, 1))
	imp := importer.New(importer.Options{})
	from := reg.Addr() + "/org/private"

	_, err := listTags(imp, importer.Request{From: from, Insecure: true})
	if err == nil {
		t.Fatal("anonymous tag list of a private repository succeeded")
	}
	if !importer.Permanent(err) {
		t.Errorf("refused credentials are permanent: %v", err)
	}
	got, err := listTags(imp, importer.Request{From: from, Insecure: true,
		Credentials: []importer.Credential{{Username: "alice", Password: "wrong"}, {Username: "alice", Password: "secret-pass"}}})
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(got, []string{"v1"}) {
		t.Errorf("tags = %v", got)
	}
	_, err = listTags(imp, importer.Request{From: from, Insecure: true, Credentials: []importer.Credential{{Username: "alice", Password: "wrong-pass"}}})
	if err == nil || strings.Contains(importer.Reason(err), "wrong-pass") {
		t.Errorf("wrong credentials: %v", err)
	}
}

func TestListTagsPolicy(t *testing.T) {
	var requests atomic.Int32
	reg := newRegistry(t, regOpts{wrap: func(h http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			requests.Add(1)
			h.ServeHTTP(w, r)
		})
	}})
	imp := importer.New(importer.Options{Policy: importer.Policy{Deny: []string{reg.Addr()}}})
	_, err := listTags(imp, importer.Request{From: reg.Addr() + "/org/app", Insecure: true})
	var pe *importer.PolicyError
	if !errors.As(err, &pe) || !importer.Permanent(err) {
		t.Errorf("denied registry: %v", err)
	}
	if n := requests.Load(); n != 0 {
		t.Errorf("the denied registry saw %d requests", n)
	}
}

func TestListTagsUnknownRepository(t *testing.T) {
	reg := newRegistry(t, regOpts{})
	_, err := listTags(importer.New(importer.Options{}), importer.Request{From: reg.Addr() + "/org/none", Insecure: true})
	if err == nil || !importer.Permanent(err) {
		t.Errorf("unknown repository: %v (permanent %v)", err, importer.Permanent(err))
	}
	t.Log(importer.Reason(err))
}
