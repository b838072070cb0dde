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
	"io"
	"net/http"
	"os"
	"time"

	"k8s.io/apimachinery/pkg/util/sets"
	"k8s.io/apimachinery/pkg/util/wait"
	genericapirequest "k8s.io/apiserver/pkg/endpoints/request"
	"k8s.io/apiserver/pkg/registry/rest"
	genericapiserver "k8s.io/apiserver/pkg/server"
	genericfilters "k8s.io/apiserver/pkg/server/filters"
	restclient "k8s.io/client-go/rest"
	"k8s.io/client-go/tools/record"
	"k8s.io/klog/v2"

	"tagger.dev/tagger/pkg/apis/tagger"
	"tagger.dev/tagger/pkg/apis/tagger/v1beta1"
	"tagger.dev/tagger/pkg/apiserver/compression"
	"tagger.dev/tagger/pkg/apiserver/imagejson"
	"tagger.dev/tagger/pkg/apiserver/scheme"
	"tagger.dev/tagger/pkg/controller/imports"
	"tagger.dev/tagger/pkg/generated/clientset/versioned"
	taggerinformers "tagger.dev/tagger/pkg/generated/informers/externalversions"
	"tagger.dev/tagger/pkg/importer"
	"tagger.dev/tagger/pkg/registry/tagger/image"
	imageetcd "tagger.dev/tagger/pkg/registry/tagger/image/etcd"
	"tagger.dev/tagger/pkg/registry/tagger/image/transfer"
	"tagger.dev/tagger/pkg/registry/tagger/imageimport"
	"tagger.dev/tagger/pkg/registry/tagger/registryhook"
	"tagger.dev/tagger/pkg/webhook/podimages"
	"tagger.dev/tagger/pkg/webhook/registryhooks"
)

// ExtraConfig is what Tagger adds to a generic API server's configuration.
type ExtraConfig struct {
	// Importer talks to registries.
	Importer importer.Interface
	// Sources resolves credentials and mirrors; it is started, if it has
	// anything to start, by the caller.
	Sources Sources
	// Policy refuses source registries; nil allows all.
	Policy imageimport.SourcePolicy
	// Recorder receives import events.
	Recorder record.EventRecorder
	// ImportOptions tunes imports.
	ImportOptions ImportOptions
	// MaxPushBytes bounds each blob and manifest pushed through images/push;
	// 0 means transfer.DefaultMaxPushBytes.
	MaxPushBytes int64
	// PodWebhook, when set, is served at podimages.Path; New fills in its
	// Images (and its Mirrors when unset).
	PodWebhook *podimages.Handler
	// Cleanup tunes the cleanup of records and mirror tags.
	Cleanup CleanupOptions
	// Checks tunes scheduled and webhook-triggered checks of Images, and
	// the registry hooks.
	Checks CheckOptions
}

// Sources tells imports and pushes which credentials and mirror to use.
type Sources interface {
	imports.Sources
	transfer.MirrorSource
}

// ImportOptions tune the create of ImageImports and the import controller.
type ImportOptions struct {
	// Identity names this server in the records it runs; servers sharing
	// an etcd need different ones. A server restarting under the same
	// identity resumes its interrupted imports at once.
	Identity string
	// SyncTimeout bounds how long a create waits for its import; 0 means
	// imageimport.DefaultSyncTimeout.
	SyncTimeout time.Duration
	// Timeout bounds an import from its creation, all attempts included.
	Timeout time.Duration
	// Backoff spaces attempts after transient errors.
	Backoff wait.Backoff
	// RenewInterval and ResumeAfter: how often a runner renews its claim,
	// and how long an unrenewed claim holds before another server resumes
	// the import.
	RenewInterval, ResumeAfter time.Duration
	// KeepClaimsOnStop makes a stopping server leave its imports claimed,
	// as a crash would (tests).
	KeepClaimsOnStop bool
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
	hooks := c.serveHooks()
	// Inside the generic filters (it needs their RequestInfo), around the
	// API: lists of Images compress in half the time (README, Performance).
	build := c.GenericConfig.BuildHandlerChainFunc
	c.GenericConfig.BuildHandlerChainFunc = func(apiHandler http.Handler, cfg *genericapiserver.Config) http.Handler {
		return build(compression.WithGzip(apiHandler), cfg)
	}
	gs, err := c.GenericConfig.New("tagger-apiserver", genericapiserver.NewEmptyDelegate())
	if err != nil {
		return nil, err
	}
	if err := c.addCleanup(gs); err != nil {
		return nil, err
	}
	optsGetter := c.GenericConfig.RESTOptionsGetter

	images, imageStatus, err := imageetcd.NewRESTWithOptions(scheme.Scheme, optsGetter, image.Options{MinImportInterval: c.ExtraConfig.Checks.MinInterval})
	if err != nil {
		return nil, fmt.Errorf("images storage: %w", err)
	}
	imageRegistry := imageetcd.NewRegistry(images, imageStatus)
	opts := c.ExtraConfig.ImportOptions
	imageImports, importStatus, err := imageimport.NewREST(scheme.Scheme, optsGetter, imageimport.Deps{
		Images:      imageRegistry,
		Policy:      c.ExtraConfig.Policy,
		Recorder:    c.ExtraConfig.Recorder,
		SyncTimeout: opts.SyncTimeout,
	})
	if err != nil {
		return nil, fmt.Errorf("imageimports storage: %w", err)
	}
	identity := opts.Identity
	if identity == "" {
		identity, _ = os.Hostname()
	}
	controller, err := imports.New(imports.Config{
		Identity:         identity,
		Importer:         c.ExtraConfig.Importer,
		Records:          imageImports,
		Images:           addGeneration{imageRegistry},
		Sources:          c.ExtraConfig.Sources,
		Recorder:         c.ExtraConfig.Recorder,
		Backoff:          opts.Backoff,
		Timeout:          opts.Timeout,
		RenewInterval:    opts.RenewInterval,
		ResumeAfter:      opts.ResumeAfter,
		KeepClaimsOnStop: opts.KeepClaimsOnStop,
		Observer:         c.importObserver(),
	})
	if err != nil {
		return nil, fmt.Errorf("import controller: %w", err)
	}
	imageImports.SetRunner(controller)
	checks, err := c.newChecks(imageRegistry, imageImports)
	if err != nil {
		return nil, fmt.Errorf("check controller: %w", err)
	}

	push, pull, err := transfer.NewREST(transfer.Deps{
		Images:       imageRegistry,
		Mirrors:      c.ExtraConfig.Sources,
		Records:      imageImports,
		MaxPushBytes: c.ExtraConfig.MaxPushBytes,
	})
	if err != nil {
		return nil, fmt.Errorf("images/push storage: %w", err)
	}

	info := genericapiserver.NewDefaultAPIGroupInfo(tagger.GroupName, scheme.Scheme, scheme.ParameterCodec, scheme.Codecs)
	// Lists of Images are mostly history; encoding/json is the slowest
	// part of serving them (README, Performance).
	info.NegotiatedSerializer = imagejson.NegotiatedSerializer(info.NegotiatedSerializer)
	info.VersionedResourcesStorageMap[v1beta1.SchemeGroupVersion.Version] = map[string]rest.Storage{
		"images":              images,
		"images/status":       imageStatus,
		"images/push":         push,
		"images/pull":         pull,
		"imageimports":        imageImports,
		"imageimports/status": importStatus,
	}
	if t := c.ExtraConfig.Checks.HookTokens; t != nil {
		info.VersionedResourcesStorageMap[v1beta1.SchemeGroupVersion.Version]["registryhooks"] = registryhook.NewREST(t, c.ExtraConfig.Checks.HookBaseURL)
		hooks.h.Store(&registryhooks.Handler{Tokens: t, Checks: checks})
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

	gs.AddPostStartHookOrDie("tagger-import-controller", func(hookCtx genericapiserver.PostStartHookContext) error {
		client, err := LoopbackClient(hookCtx.LoopbackClientConfig)
		if err != nil {
			return err
		}
		factory := taggerinformers.NewSharedInformerFactory(client, 10*time.Minute)
		if err := controller.Watch(factory.Tagger().V1beta1().ImageImports()); err != nil {
			return err
		}
		if err := checks.Watch(factory.Tagger().V1beta1().Images(), factory.Tagger().V1beta1().ImageImports()); err != nil {
			return err
		}
		factory.Start(hookCtx.Done())
		go func() {
			// A server stopping before the caches synced is no error.
			if err := controller.Run(hookCtx, 2); err != nil && hookCtx.Err() == nil {
				klog.ErrorS(err, "Import controller stopped")
			}
		}()
		go func() {
			if err := checks.Run(hookCtx); err != nil {
				klog.ErrorS(err, "Check controller stopped")
			}
		}()
		return nil
	})
	// Imports stop, their records released, before storage goes away.
	gs.AddPreShutdownHookOrDie("tagger-import-controller", func() error {
		controller.Stop()
		if closer, ok := c.ExtraConfig.Importer.(io.Closer); ok {
			return closer.Close() // its connection guard
		}
		return nil
	})
	return &TaggerServer{GenericAPIServer: gs}, nil
}

// addGeneration gives the import controller the Images' create-or-append.
type addGeneration struct{ r *imageetcd.Registry }

func (a addGeneration) AddGeneration(ctx context.Context, namespace, name string, spec tagger.ImageSpec, ref tagger.HashReference) error {
	_, err := a.r.AddGeneration(genericapirequest.WithNamespace(ctx, namespace), name, spec, ref)
	return err
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

// LoopbackClient is the clientset the server's own controllers use. It
// speaks HTTP/1.1: an HTTP/2 connection the server accepts just as it
// starts shutting down registers with x/net/http2 after the GOAWAYs went
// out, and then holds the shutdown for its whole minute (tests that stop
// a server right after it started hit this); net/http closes HTTP/1.1
// connections itself.
func LoopbackClient(loopback *restclient.Config) (versioned.Interface, error) {
	cfg := restclient.CopyConfig(loopback)
	cfg.TLSClientConfig.NextProtos = []string{"http/1.1"}
	return versioned.NewForConfig(cfg)
}
