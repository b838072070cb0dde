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
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"strings"

	"go.podman.io/image/v5/docker/reference"
)

// Format names a webhook payload format.
type Format string

// The payload formats Tagger understands.
const (
	FormatDockerHub    Format = "dockerhub"
	FormatQuay         Format = "quay"
	FormatHarbor       Format = "harbor"
	FormatDistribution Format = "distribution"
	FormatGitHub       Format = "github"
	FormatGeneric      Format = "generic"
)

// Push is one tag pushed, as a payload tells it.
type Push struct {
	// Repository is the normalized repository name, registry host
	// included ("docker.io/library/nginx", "quay.io/org/app").
	Repository string
	// Tag is the tag pushed.
	Tag string
}

// Delivery is a parsed payload.
type Delivery struct {
	Format Format
	Pushes []Push
	// IDs identify the delivery or its events when the format has them
	// (GitHub's X-GitHub-Delivery, the distribution events' ids), for
	// recognizing a replay.
	IDs []string
}

// MaxPushes bounds the pushes one delivery may name; the rest are ignored.
const MaxPushes = 100

// errUnrecognized means the payload is none of the known formats.
var errUnrecognized = errors.New(`unrecognized payload: expected Docker Hub, Quay, Harbor, distribution notification, GitHub registry_package or {"repository": "<registry>/<path>", "tag": "<tag>"}`)

// Parse reads a webhook payload. The format is told by GitHub's event
// header, else by the shape of the JSON body.
func Parse(header http.Header, body []byte) (*Delivery, error) {
	if ev := header.Get("X-GitHub-Event"); ev != "" {
		d, err := parseGitHub(ev, body)
		if d != nil {
			if id := header.Get("X-GitHub-Delivery"); id != "" {
				d.IDs = append(d.IDs, "github/"+id)
			}
		}
		return d, err
	}
	var keys map[string]json.RawMessage
	if err := json.Unmarshal(body, &keys); err != nil {
		return nil, fmt.Errorf("payload is not a JSON object: %w", err)
	}
	var (
		d   *Delivery
		err error
	)
	switch {
	case keys["events"] != nil:
		d, err = parseDistribution(body)
	case keys["push_data"] != nil:
		d, err = parseDockerHub(body)
	case keys["updated_tags"] != nil || keys["docker_url"] != nil:
		d, err = parseQuay(body)
	case keys["event_data"] != nil || (keys["specversion"] != nil && keys["data"] != nil):
		d, err = parseHarbor(body)
	case keys["repository"] != nil && keys["tag"] != nil:
		d, err = parseGeneric(body)
	default:
		return nil, errUnrecognized
	}
	if err != nil {
		return nil, err
	}
	if len(d.Pushes) > MaxPushes {
		d.Pushes = d.Pushes[:MaxPushes]
	}
	return d, nil
}

// repository normalizes a repository name, dropping any tag or digest.
func repository(name string) (string, error) {
	named, err := reference.ParseNormalizedNamed(strings.TrimSpace(name))
	if err != nil {
		return "", fmt.Errorf("invalid repository %q: %w", name, err)
	}
	return named.Name(), nil
}

// dockerHub is the payload of Docker Hub webhooks.
type dockerHub struct {
	PushData struct {
		Tag string `json:"tag"`
	} `json:"push_data"`
	Repository struct {
		RepoName string `json:"repo_name"`
	} `json:"repository"`
}

func parseDockerHub(body []byte) (*Delivery, error) {
	var p dockerHub
	if err := json.Unmarshal(body, &p); err != nil {
		return nil, fmt.Errorf("docker hub payload: %w", err)
	}
	repo, err := repository("docker.io/" + strings.TrimPrefix(p.Repository.RepoName, "docker.io/"))
	if err != nil || p.PushData.Tag == "" {
		return nil, fmt.Errorf("docker hub payload without repository.repo_name or push_data.tag")
	}
	return &Delivery{Format: FormatDockerHub, Pushes: []Push{{Repository: repo, Tag: p.PushData.Tag}}}, nil
}

// quay is the payload of Quay's "repository push" notification.
type quay struct {
	DockerURL   string   `json:"docker_url"`
	UpdatedTags []string `json:"updated_tags"`
}

func parseQuay(body []byte) (*Delivery, error) {
	var p quay
	if err := json.Unmarshal(body, &p); err != nil {
		return nil, fmt.Errorf("quay payload: %w", err)
	}
	repo, err := repository(p.DockerURL)
	if err != nil {
		return nil, fmt.Errorf("quay payload: docker_url: %w", err)
	}
	d := &Delivery{Format: FormatQuay}
	for _, t := range p.UpdatedTags {
		d.Pushes = append(d.Pushes, Push{Repository: repo, Tag: t})
	}
	return d, nil
}

// harborData is the event data of Harbor's PUSH_ARTIFACT event, in its
// default and its CloudEvents payload formats.
type harborData struct {
	Resources []struct {
		Tag         string `json:"tag"`
		ResourceURL string `json:"resource_url"`
	} `json:"resources"`
}

func parseHarbor(body []byte) (*Delivery, error) {
	var p struct {
		Type      string      `json:"type"`
		EventData *harborData `json:"event_data"`
		Data      *harborData `json:"data"`
	}
	if err := json.Unmarshal(body, &p); err != nil {
		return nil, fmt.Errorf("harbor payload: %w", err)
	}
	d := &Delivery{Format: FormatHarbor}
	data := p.EventData
	if data == nil {
		data = p.Data
	}
	if data == nil || !strings.Contains(strings.ToUpper(strings.ReplaceAll(p.Type, ".", "_")), "PUSH") {
		return d, nil // another event (delete, scan...): nothing to do
	}
	for _, r := range data.Resources {
		if r.Tag == "" || r.ResourceURL == "" {
			continue
		}
		repo, err := repository(r.ResourceURL)
		if err != nil {
			return nil, fmt.Errorf("harbor payload: resource_url: %w", err)
		}
		d.Pushes = append(d.Pushes, Push{Repository: repo, Tag: r.Tag})
	}
	return d, nil
}

// distributionEnvelope is the notification envelope of the distribution
// (CNCF) registry.
type distributionEnvelope struct {
	Events []struct {
		ID     string `json:"id"`
		Action string `json:"action"`
		Target struct {
			MediaType  string `json:"mediaType"`
			Repository string `json:"repository"`
			URL        string `json:"url"`
			Tag        string `json:"tag"`
		} `json:"target"`
		Request struct {
			Host string `json:"host"`
		} `json:"request"`
	} `json:"events"`
}

func parseDistribution(body []byte) (*Delivery, error) {
	var p distributionEnvelope
	if err := json.Unmarshal(body, &p); err != nil {
		return nil, fmt.Errorf("distribution notification: %w", err)
	}
	d := &Delivery{Format: FormatDistribution}
	for _, e := range p.Events {
		if e.ID != "" {
			d.IDs = append(d.IDs, "distribution/"+e.ID)
		}
		// Blob pushes and pushes by digest carry no tag.
		if e.Action != "push" || e.Target.Tag == "" || e.Target.Repository == "" {
			continue
		}
		host := e.Request.Host
		if u, err := url.Parse(e.Target.URL); err == nil && u.Host != "" {
			host = u.Host
		}
		if host == "" {
			continue
		}
		repo, err := repository(host + "/" + e.Target.Repository)
		if err != nil {
			return nil, fmt.Errorf("distribution notification: %w", err)
		}
		d.Pushes = append(d.Pushes, Push{Repository: repo, Tag: e.Target.Tag})
	}
	return d, nil
}

// gitHubPackage is the package of GitHub's registry_package (and package)
// events.
type gitHubPackage struct {
	Name           string `json:"name"`
	Namespace      string `json:"namespace"`
	PackageType    string `json:"package_type"`
	PackageVersion struct {
		PackageURL        string `json:"package_url"`
		ContainerMetadata struct {
			Tag struct {
				Name string `json:"name"`
			} `json:"tag"`
		} `json:"container_metadata"`
	} `json:"package_version"`
	Registry struct {
		URL string `json:"url"`
	} `json:"registry"`
}

func parseGitHub(event string, body []byte) (*Delivery, error) {
	d := &Delivery{Format: FormatGitHub}
	if event == "ping" {
		return d, nil
	}
	if event != "registry_package" && event != "package" {
		return d, nil // an event Tagger does not act on
	}
	var p struct {
		Action          string         `json:"action"`
		RegistryPackage *gitHubPackage `json:"registry_package"`
		Package         *gitHubPackage `json:"package"`
	}
	if err := json.Unmarshal(body, &p); err != nil {
		return nil, fmt.Errorf("github payload: %w", err)
	}
	pkg := p.RegistryPackage
	if pkg == nil {
		pkg = p.Package
	}
	if pkg == nil || (p.Action != "published" && p.Action != "updated") {
		return d, nil
	}
	if t := strings.ToLower(pkg.PackageType); t != "container" && t != "docker" {
		return d, nil
	}
	tag := pkg.PackageVersion.ContainerMetadata.Tag.Name
	if tag == "" {
		return d, nil // an untagged version
	}
	name := pkg.PackageVersion.PackageURL
	if name == "" {
		host := "ghcr.io"
		if u, err := url.Parse(pkg.Registry.URL); err == nil && u.Host != "" {
			host = u.Host
		}
		name = host + "/" + strings.ToLower(pkg.Namespace) + "/" + strings.ToLower(pkg.Name)
	}
	repo, err := repository(name)
	if err != nil {
		return nil, fmt.Errorf("github payload: %w", err)
	}
	d.Pushes = append(d.Pushes, Push{Repository: repo, Tag: tag})
	return d, nil
}

// generic is Tagger's own payload, for registries and CI jobs the other
// formats do not cover.
type generic struct {
	Repository string `json:"repository"`
	Tag        string `json:"tag"`
}

func parseGeneric(body []byte) (*Delivery, error) {
	var p generic
	if err := json.Unmarshal(body, &p); err != nil {
		return nil, fmt.Errorf("generic payload: %w", err)
	}
	repo, err := repository(p.Repository)
	if err != nil || p.Tag == "" {
		return nil, fmt.Errorf(`generic payload: need "repository" (e.g. "registry.example.com/org/app") and "tag"`)
	}
	return &Delivery{Format: FormatGeneric, Pushes: []Push{{Repository: repo, Tag: p.Tag}}}, nil
}
