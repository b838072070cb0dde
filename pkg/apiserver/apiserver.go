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
// Package apiserver assembles the Tagger API server from its storage.
package apiserver

import (
	"context"
	"fmt"

	"k8s.io/apimachinery/pkg/util/sets"
	genericapirequest "k8s.io/apiserver/pkg/endpoints/request"
	"k8s.io/apiserver/pkg/registry/rest"
	genericapiserver "k8s.io/apiserver/pkg/server"
	genericfilters "k8s.io/apiserver/pkg/server/filters"
	"k8s.io/client-go/tools/record"

	"tagger.dev/tagger/pkg/admission/podimages"
	"tagger.dev/tagger/pkg/apis/tagger"
	"tagger.dev/tagger/pkg/apis/tagger/v1beta1"
	"tagger.dev/tagger/pkg/apiserver/scheme"
	"tagger.dev/tagger/pkg/importer"
	imageetcd "tagger.dev/tagger/pkg/registry/tagger/image/etcd"
	"tagger.dev/tagger/pkg/registry/tagger/imageimport"
)

// ExtraConfig is what Tagger adds to a generic API server's configuration.
type ExtraConfig struct {
	// Importer talks to registries.
	Importer importer.Interface
	// Sources resolves credentials and mirrors; it is started, if it has
	// anything to start, by the caller.
	Sources imageimport.Sources
	// Policy refuses source registries; nil allows all.
	Policy imageimport.SourcePolicy
	// Recorder receives import events.
	Recorder record.EventRecorder
	// ImportOptions tunes attempts and timeouts; its dependencies are filled in by New.
	ImportOptions imageimport.Deps
	// MaxPushBytes bounds each blob and manifest pushed through images/push;
	// 0 means imageetcd.DefaultMaxPushBytes.
	MaxPushBytes int64
	// PodWebhook, when set, is served at podimages.Path; New fills in its
	// Images (and its Mirrors when unset).
	PodWebhook *podimages.Handler
}

// Config is the whole configuration of a Tagger API server.
type Config struct {
	GenericConfig *genericapiserver.RecommendedConfig
	ExtraConfig   ExtraConfig
}

type completedConfig struct {
	GenericConfig genericapiserver.CompletedConfig
	ExtraConfig   *ExtraConfig
}

// CompletedConfig is a Config whose defaults are filled in; only Complete makes one.
type CompletedConfig struct {
	*completedConfig
}

// TaggerServer is the Tagger API server.
type TaggerServer struct {
	GenericAPIServer *genericapiserver.GenericAPIServer
}

// LongRunning names the subresources that stream and so are not cut at the
// request timeout.
var LongRunning = genericfilters.BasicLongRunningRequestCheck(sets.NewString("watch"), sets.NewString("push", "pull"))

// Complete fills in the defaults.
func (cfg *Config) Complete() CompletedConfig {
	cfg.GenericConfig.LongRunningFunc = LongRunning
	return CompletedConfig{&completedConfig{cfg.GenericConfig.Complete(), &cfg.ExtraConfig}}
}

// New builds the server and installs the tagger.dev group.
func (c completedConfig) New() (*TaggerServer, error) {
	gs, err := c.GenericConfig.New("tagger-apiserver", genericapiserver.NewEmptyDelegate())
	if err != nil {
		return nil, err
	}
	optsGetter := c.GenericConfig.RESTOptionsGetter

	images, imageStatus, err := imageetcd.NewREST(scheme.Scheme, optsGetter)
	if err != nil {
		return nil, fmt.Errorf("images storage: %w", err)
	}
	deps := c.ExtraConfig.ImportOptions
	deps.Importer = c.ExtraConfig.Importer
	imageRegistry := imageetcd.NewRegistry(images, imageStatus)
	deps.Images = imageRegistry
	deps.Sources = c.ExtraConfig.Sources
	deps.Policy = c.ExtraConfig.Policy
	deps.Recorder = c.ExtraConfig.Recorder
	imports, importStatus, err := imageimport.NewREST(scheme.Scheme, optsGetter, deps)
	if err != nil {
		return nil, fmt.Errorf("imageimports storage: %w", err)
	}

	push, pull, err := imageetcd.NewTransferREST(imageetcd.TransferDeps{
		Images:       imageRegistry,
		Mirrors:      c.ExtraConfig.Sources,
		Records:      imports,
		MaxPushBytes: c.ExtraConfig.MaxPushBytes,
	})
	if err != nil {
		return nil, fmt.Errorf("images/push storage: %w", err)
	}

	info := genericapiserver.NewDefaultAPIGroupInfo(tagger.GroupName, scheme.Scheme, scheme.ParameterCodec, scheme.Codecs)
	info.VersionedResourcesStorageMap[v1beta1.SchemeGroupVersion.Version] = map[string]rest.Storage{
		"images":              images,
		"images/status":       imageStatus,
		"images/push":         push,
		"images/pull":         pull,
		"imageimports":        imports,
		"imageimports/status": importStatus,
	}
	if err := gs.InstallAPIGroup(&info); err != nil {
		return nil, err
	}

	if h := c.ExtraConfig.PodWebhook; h != nil {
		h.Images = registryImages{imageRegistry}
		if h.Mirrors == nil {
			h.Mirrors = c.ExtraConfig.Sources
		}
		gs.Handler.NonGoRestfulMux.Handle(podimages.Path, h)
	}

	gs.AddPostStartHookOrDie("tagger-resume-imports", func(hookCtx genericapiserver.PostStartHookContext) error {
		go imports.ResumeLoop(hookCtx)
		return nil
	})
	return &TaggerServer{GenericAPIServer: gs}, nil
}

// registryImages reads Images for the pod webhook straight from storage.
type registryImages struct{ r *imageetcd.Registry }

func (i registryImages) Get(ctx context.Context, namespace, name string) (*tagger.Image, error) {
	return i.r.Get(genericapirequest.WithNamespace(ctx, namespace), name)
}

// Run serves until ctx ends.
func (s *TaggerServer) Run(ctx context.Context) error {
	return s.GenericAPIServer.PrepareRun().RunWithContext(ctx)
}
