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
	"net/http"
	"reflect"
	"strings"
	"testing"
)

// Sample payloads, as the registries document them (trimmed of fields
// Tagger does not read where they are long).
const (
	dockerHubPayload = `{
  "callback_url": "https://registry.hub.docker.com/u/svendowideit/testhook/hook/2141b5bi5i5b02bec211i4eeih0242eg11000a/",
  "push_data": {"pushed_at": 1417566161, "pusher": "trustedbuilder", "tag": "latest"},
  "repository": {"comment_count": 0, "date_created": 1417494799, "description": "", "is_official": false,
    "is_private": true, "is_trusted": true, "name": "testhook", "namespace": "svendowideit", "owner": "svendowideit",
    "repo_name": "svendowideit/testhook", "repo_url": "https://registry.hub.docker.com/u/svendowideit/testhook/",
    "star_count": 0, "status": "Active"}
}`
	quayPayload = `{
  "repository": "mynamespace/repository",
  "namespace": "mynamespace",
  "name": "repository",
  "docker_url": "quay.io/mynamespace/repository",
  "homepage": "https://quay.io/repository/mynamespace/repository",
  "updated_tags": ["latest", "v2"]
}`
	harborPayload = `{
  "type": "PUSH_ARTIFACT",
  "occur_at": 1680501893,
  "operator": "admin",
  "event_data": {
    "resources": [{"digest": "sha256:954b378c375d852eb3c63ab88978f640b4348b01c1b3456a024a81536dafbbf4", "tag": "v1.0",
      "resource_url": "harbor.example.com/library/app:v1.0"}],
    "repository": {"date_created": 1680501893, "name": "app", "namespace": "library", "repo_full_name": "library/app", "repo_type": "private"}
  }
}`
	harborCloudEventPayload = `{
  "specversion": "1.0", "id": "4b2f89a6", "source": "/projects/1/webhook/policies/1", "type": "harbor.artifact.pushed",
  "datacontenttype": "application/json", "time": "2023-04-03T06:11:32Z",
  "data": {"resources": [{"digest": "sha256:954b", "tag": "v2.0", "resource_url": "harbor.example.com/library/app:v2.0"}],
    "repository": {"name": "app", "namespace": "library", "repo_full_name": "library/app", "repo_type": "private"}}
}`
	distributionPayload = `{"events": [
  {"id": "320678d8-ca14-430f-8bb6-4ca139cd83f7", "timestamp": "2016-03-09T14:44:26.402973972-08:00", "action": "push",
   "target": {"mediaType": "application/octet-stream", "size": 1, "digest": "sha256:aa", "length": 1, "repository": "org/app",
     "url": "http://registry.example.com:5000/v2/org/app/blobs/sha256:aa"},
   "request": {"id": "6df24a34", "addr": "127.0.0.1:53321", "host": "registry.example.com:5000", "method": "PUT", "useragent": "curl"}},
  {"id": "6b5e9a1c-0c9c-4a4f-9c2b-8c5e0d8f7c11", "timestamp": "2016-03-09T14:44:26.402973972-08:00", "action": "push",
   "target": {"mediaType": "application/vnd.oci.image.manifest.v1+json", "size": 708, "digest": "sha256:fea8", "length": 708,
     "repository": "org/app", "url": "http://registry.example.com:5000/v2/org/app/manifests/sha256:fea8", "tag": "v3"},
   "request": {"id": "6df24a35", "addr": "127.0.0.1:53321", "host": "registry.example.com:5000", "method": "PUT", "useragent": "curl"}}
]}`
	gitHubPayload = `{
  "action": "published",
  "registry_package": {
    "id": 123, "name": "app", "namespace": "octo-org", "package_type": "CONTAINER",
    "package_version": {"id": 456, "version": "sha256:3da5", "name": "sha256:3da5",
      "container_metadata": {"tag": {"name": "v1.4.0", "digest": "sha256:3da5"}, "labels": {}, "manifest": {}},
      "package_url": "ghcr.io/octo-org/app:v1.4.0"},
    "registry": {"about_url": "https://docs.github.com/packages", "name": "GitHub CR", "type": "docker", "url": "https://ghcr.io/octo-org", "vendor": "GitHub Inc"}
  },
  "repository": {"full_name": "octo-org/app"},
  "sender": {"login": "octocat"}
}`
	genericPayload = `{"repository": "registry.example.com/org/app", "tag": "v9"}`
)

func TestParse(t *testing.T) {
	tests := []struct {
		name    string
		header  http.Header
		body    string
		format  Format
		pushes  []Push
		ids     []string
		wantErr string
	}{
		{name: "docker hub", body: dockerHubPayload, format: FormatDockerHub,
			pushes: []Push{{"docker.io/svendowideit/testhook", "latest"}}},
		{name: "docker hub official image", body: `{"push_data": {"tag": "1.27"}, "repository": {"repo_name": "nginx"}}`, format: FormatDockerHub,
			pushes: []Push{{"docker.io/library/nginx", "1.27"}}},
		{name: "quay", body: quayPayload, format: FormatQuay,
			pushes: []Push{{"quay.io/mynamespace/repository", "latest"}, {"quay.io/mynamespace/repository", "v2"}}},
		{name: "harbor", body: harborPayload, format: FormatHarbor,
			pushes: []Push{{"harbor.example.com/library/app", "v1.0"}}},
		{name: "harbor cloudevents", body: harborCloudEventPayload, format: FormatHarbor,
			pushes: []Push{{"harbor.example.com/library/app", "v2.0"}}},
		{name: "harbor delete is no push", body: strings.Replace(harborPayload, "PUSH_ARTIFACT", "DELETE_ARTIFACT", 1), format: FormatHarbor},
		{name: "distribution: the manifest push by tag, not the blob", body: distributionPayload, format: FormatDistribution,
			pushes: []Push{{"registry.example.com:5000/org/app", "v3"}},
			ids:    []string{"distribution/320678d8-ca14-430f-8bb6-4ca139cd83f7", "distribution/6b5e9a1c-0c9c-4a4f-9c2b-8c5e0d8f7c11"}},
		{name: "github", header: http.Header{"X-Github-Event": {"registry_package"}, "X-Github-Delivery": {"72d3162e"}}, body: gitHubPayload,
			format: FormatGitHub, pushes: []Push{{"ghcr.io/octo-org/app", "v1.4.0"}}, ids: []string{"github/72d3162e"}},
		{name: "github ping", header: http.Header{"X-Github-Event": {"ping"}}, body: `{"zen": "Keep it logically awesome."}`, format: FormatGitHub},
		{name: "generic", body: genericPayload, format: FormatGeneric, pushes: []Push{{"registry.example.com/org/app", "v9"}}},
		{name: "generic without registry means docker hub", body: `{"repository": "org/app", "tag": "v1"}`, format: FormatGeneric,
			pushes: []Push{{"docker.io/org/app", "v1"}}},
		{name: "generic without tag", body: `{"repository": "org/app", "tag": ""}`, wantErr: "generic payload"},
		{name: "not json", body: `tag=v1`, wantErr: "not a JSON object"},
		{name: "unknown", body: `{"hello": "world"}`, wantErr: "unrecognized payload"},
		{name: "invalid repository", body: `{"repository": "Not Valid!", "tag": "v1"}`, wantErr: "generic payload"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			d, err := Parse(tc.header, []byte(tc.body))
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("error %v, want %q", err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if d.Format != tc.format || !reflect.DeepEqual(d.Pushes, tc.pushes) || !reflect.DeepEqual(d.IDs, tc.ids) {
				t.Errorf("got %+v, want format %s pushes %+v ids %v", d, tc.format, tc.pushes, tc.ids)
			}
		})
	}
}

func TestParseBoundsPushes(t *testing.T) {
	tags := make([]string, MaxPushes+50)
	for i := range tags {
		tags[i] = `"t` + strings.Repeat("x", i%5) + `"`
	}
	d, err := Parse(nil, []byte(`{"docker_url": "quay.io/org/app", "updated_tags": [`+strings.Join(tags, ",")+`]}`))
	if err != nil {
		t.Fatal(err)
	}
	if len(d.Pushes) != MaxPushes {
		t.Errorf("%d pushes, want at most %d", len(d.Pushes), MaxPushes)
	}
}
