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

package apiserver

import (
	"context"
	"net/http"
	"sync/atomic"
	"time"

	genericapirequest "k8s.io/apiserver/pkg/endpoints/request"
	genericapiserver "k8s.io/apiserver/pkg/server"

	"tagger.dev/tagger/pkg/apis/tagger"
	"tagger.dev/tagger/pkg/controller/refresh"
	imageetcd "tagger.dev/tagger/pkg/registry/tagger/image/etcd"
	"tagger.dev/tagger/pkg/registry/tagger/imageimport"
	"tagger.dev/tagger/pkg/webhook/registryhooks"
)

// CheckOptions tune the checks that keep Images current by themselves:
// scheduled ones and those registry webhooks ask for.
type CheckOptions struct {
	// MinInterval is the shortest spec.importPolicy.interval accepted
	// (--min-import-interval); 0 accepts any.
	MinInterval time.Duration
	// PerRegistry bounds the checks running at once against one registry;
	// 0 means refresh.DefaultPerRegistry.
	PerRegistry int
	// Workers bounds the checks running at once; 0 means
	// refresh.DefaultWorkers.
	Workers int
	// HookTokens keeps the registry webhook tokens; nil serves no hooks
	// (and no registryhooks resource).
	HookTokens registryhooks.Tokens
	// HookBaseURL returns the URL registries reach this server at
	// ("https://tagger.example.com"), for the URLs registryhooks gives out.
	HookBaseURL func() string
}

// imageStatuses gives checks the Images' status writes.
type imageStatuses struct{ r *imageetcd.Registry }

func (i imageStatuses) UpdateStatus(ctx context.Context, namespace, name string, mutate func(*tagger.Image) error) (*tagger.Image, error) {
	return i.r.UpdateStatus(genericapirequest.WithNamespace(ctx, namespace), name, mutate)
}

// newChecks builds the check controller on the import path imports take.
func (c completedConfig) newChecks(images *imageetcd.Registry, records *imageimport.REST) (*refresh.Controller, error) {
	o := c.ExtraConfig.Checks
	return refresh.New(refresh.Config{
		Resolver:    c.ExtraConfig.Importer,
		Credentials: c.ExtraConfig.Sources,
		Images:      imageStatuses{images},
		Imports:     records,
		MinInterval: o.MinInterval,
		PerRegistry: o.PerRegistry,
		Workers:     o.Workers,
	})
}

// hookHandler serves the registry hooks once New has built them; until
// then (and without hooks) it answers 404.
type hookHandler struct {
	h atomic.Pointer[registryhooks.Handler]
}

func (d *hookHandler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if h := d.h.Load(); h != nil {
		h.ServeHTTP(w, r)
		return
	}
	http.NotFound(w, r)
}

// serveHooks routes registryhooks.PathPrefix around the API's handler
// chain to the returned handler: registries authenticate with their
// hook token, not as Kubernetes clients.
func (c completedConfig) serveHooks() *hookHandler {
	d := &hookHandler{}
	build := c.GenericConfig.BuildHandlerChainFunc
	c.GenericConfig.BuildHandlerChainFunc = func(apiHandler http.Handler, cfg *genericapiserver.Config) http.Handler {
		return registryhooks.Bypass(build(apiHandler, cfg), d)
	}
	return d
}
