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
	"time"

	genericapiserver "k8s.io/apiserver/pkg/server"
	"k8s.io/klog/v2"

	"tagger.dev/tagger/pkg/controller/cleanup"
	"tagger.dev/tagger/pkg/controller/imports"
	taggerinformers "tagger.dev/tagger/pkg/generated/informers/externalversions"
	"tagger.dev/tagger/pkg/metrics"
)

// CleanupOptions tune the cleanup of records and mirror tags.
type CleanupOptions struct {
	// MaxFinishedImports bounds the finished ImageImports kept per Image;
	// 0 or less keeps them all.
	MaxFinishedImports int
	// ProgressingRetry: see cleanup.Config.
	ProgressingRetry time.Duration
}

// addCleanup registers Tagger's metrics (and instruments the importer,
// which must happen before the import controller is built), and runs the
// cleanup controller after start.
func (c completedConfig) addCleanup(gs *genericapiserver.GenericAPIServer) error {
	metrics.Register()
	c.ExtraConfig.Importer = metrics.InstrumentImporter(c.ExtraConfig.Importer)
	registry, ok := c.ExtraConfig.Importer.(cleanup.Registry)
	if !ok || c.ExtraConfig.Sources == nil {
		klog.InfoS("Mirror tags are not cleaned up: the importer cannot remove tags")
		return nil
	}
	opts := c.ExtraConfig.Cleanup
	return gs.AddPostStartHook("tagger-cleanup", func(hookCtx genericapiserver.PostStartHookContext) error {
		client, err := LoopbackClient(hookCtx.LoopbackClientConfig)
		if err != nil {
			return err
		}
		ctrl, err := cleanup.New(cleanup.Config{
			Client:             client,
			Mirrors:            c.ExtraConfig.Sources,
			Registry:           registry,
			MaxFinishedImports: opts.MaxFinishedImports,
			ProgressingRetry:   opts.ProgressingRetry,
		})
		if err != nil {
			return err
		}
		factory := taggerinformers.NewSharedInformerFactory(client, 10*time.Minute)
		if err := ctrl.Watch(factory.Tagger().V1beta1().Images(), factory.Tagger().V1beta1().ImageImports()); err != nil {
			return err
		}
		metrics.SetProgressing(ctrl.Progressing)
		factory.Start(hookCtx.Done())
		go func() {
			if err := ctrl.Run(hookCtx, 2); err != nil {
				klog.ErrorS(err, "Cleanup controller stopped")
			}
		}()
		return nil
	})
}

// importObserver counts the outcomes of imports.
func (c completedConfig) importObserver() imports.Observer { return metrics.Observer{} }
