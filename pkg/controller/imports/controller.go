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

package imports

import (
	"context"
	"fmt"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	utilruntime "k8s.io/apimachinery/pkg/util/runtime"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/client-go/tools/cache"
	"k8s.io/klog/v2"

	"tagger.dev/tagger/pkg/apis/tagger"
	taggerv1beta1 "tagger.dev/tagger/pkg/apis/tagger/v1beta1"
	taggerinformers "tagger.dev/tagger/pkg/generated/informers/externalversions/tagger/v1beta1"
)

// Watch makes the controller follow the records of informer, which Run then
// needs synced. It must be called before the informer starts.
func (c *Controller) Watch(informer taggerinformers.ImageImportInformer) error {
	_, err := informer.Informer().AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc:    c.enqueue,
		UpdateFunc: func(_, obj interface{}) { c.enqueue(obj) },
	})
	if err != nil {
		return err
	}
	c.lister = informer.Lister()
	c.synced = informer.Informer().HasSynced
	return nil
}

func (c *Controller) enqueue(obj interface{}) {
	ii, ok := obj.(*taggerv1beta1.ImageImport)
	if !ok || !IsProgressing(ii.Status.Conditions) {
		return
	}
	key, err := cache.MetaNamespaceKeyFunc(obj)
	if err != nil {
		utilruntime.HandleError(err)
		return
	}
	c.queue.Add(key)
}

// Run resumes, until ctx ends, the imports nobody runs: those this server
// ran before it restarted, those a stopping server released, and those
// whose runner stopped renewing its claim. Then it stops every import.
func (c *Controller) Run(ctx context.Context, workers int) error {
	defer c.Stop()
	if c.lister == nil {
		return fmt.Errorf("the import controller watches nothing: call Watch first")
	}
	if !cache.WaitForCacheSync(ctx.Done(), c.synced) { // quiet when stopped early
		return ctx.Err()
	}
	for range max(workers, 1) {
		go wait.UntilWithContext(ctx, func(ctx context.Context) {
			for c.processNext(ctx) {
			}
		}, time.Second)
	}
	<-ctx.Done()
	return nil
}

func (c *Controller) processNext(ctx context.Context) bool {
	key, quit := c.queue.Get()
	if quit {
		return false
	}
	defer c.queue.Done(key)
	after, err := c.sync(ctx, key)
	switch {
	case err != nil:
		utilruntime.HandleError(fmt.Errorf("import %s: %w", key, err))
		c.queue.AddRateLimited(key)
	case after > 0:
		c.queue.Forget(key)
		c.queue.AddAfter(key, after)
	default:
		c.queue.Forget(key)
	}
	return true
}

// sync looks at one record and resumes it when nobody runs it. It returns
// when to look again, if ever.
func (c *Controller) sync(ctx context.Context, key string) (time.Duration, error) {
	namespace, name, err := cache.SplitMetaNamespaceKey(key)
	if err != nil {
		return 0, err
	}
	ii, err := c.lister.ImageImports(namespace).Get(name)
	if apierrors.IsNotFound(err) {
		return 0, nil
	}
	if err != nil {
		return 0, err
	}
	if !IsProgressing(ii.Status.Conditions) || c.isRunning(ii.UID) {
		return 0, nil
	}
	now := c.cfg.Clock.Now()
	runner, renewed, claimed := claim(ii.Annotations)
	// Another server's claim holds while it is renewed; so does one this
	// process made (its create is about to start the run). A claim of this
	// identity older than this process is a restarted server's: resume it.
	ours := claimed && runner == c.cfg.Identity && !renewed.Before(c.started)
	if claimed && (runner != c.cfg.Identity || ours) {
		if wait := renewed.Add(c.cfg.ResumeAfter).Sub(now); wait > 0 {
			return wait, nil
		}
	}
	// Nobody runs it: claim it, conditional on what was decided on.
	rec, err := c.cfg.Records.UpdateRecord(ctx, namespace, name, Preconditions{UID: ii.UID, ResourceVersion: ii.ResourceVersion},
		func(rec *tagger.ImageImport) { setRenewed(rec, c.cfg.Identity, now) })
	if apierrors.IsNotFound(err) || apierrors.IsConflict(err) {
		return 0, nil // gone, or changed since: its next event brings it back
	}
	if err != nil {
		return 0, err
	}
	if !IsProgressing(rec.Status.Conditions) {
		return 0, nil
	}
	klog.FromContext(ctx).Info("Resuming import nobody runs", "imageImport", klog.KObj(rec),
		"previousRunner", runner, "attempts", len(rec.Status.ImportAttempts))
	c.Start(rec)
	return 0, nil
}
