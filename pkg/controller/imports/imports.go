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

// Package imports runs ImageImports: the attempts, the generation they add
// to the Image and the outcome in the record. A create request reserves the
// record and hands it here at once (Start), then waits a bounded time for
// the outcome; an import that outlives the request, or whose server stopped,
// goes on here.
//
// Ownership. Every Progressing record names the server that runs it
// (tagger.AnnotationImportRunner) and when that server last said so
// (tagger.AnnotationImportRenewed, renewed every RenewInterval while it
// runs). Every write a runner makes is conditional on still being named, so
// at most one runner writes a record. A record whose runner is this server
// but that it does not run (it restarted), whose runner released it (a
// graceful stop) or whose renewal is older than ResumeAfter (a crash) is
// claimed, conditional on the resourceVersion the claim was decided on, and
// resumed from its next attempt. A successful attempt stores its generation
// in the record before the Image is written, so a runner that takes over
// after that only records the same generation again, which the Image's
// history ignores: every import shows up once in history.
package imports

import (
	"context"
	"fmt"
	"sync"
	"time"

	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/client-go/tools/cache"
	"k8s.io/client-go/tools/record"
	"k8s.io/client-go/util/workqueue"
	"k8s.io/utils/clock"

	"tagger.dev/tagger/pkg/apis/tagger"
	taggerlisters "tagger.dev/tagger/pkg/generated/listers/tagger/v1beta1"
	"tagger.dev/tagger/pkg/importer"
	"tagger.dev/tagger/pkg/tagpolicy"
)

// Records is what the controller needs of ImageImport storage.
type Records interface {
	// UpdateRecord applies mutate to the stored record namespace/name, if it
	// still meets pre, and stores its status and annotations. It returns
	// NotFound when the record is gone or was replaced (another UID), and
	// a Conflict when another precondition fails.
	UpdateRecord(ctx context.Context, namespace, name string, pre Preconditions, mutate func(*tagger.ImageImport)) (*tagger.ImageImport, error)
}

// Preconditions of a record write; empty fields are not checked.
type Preconditions struct {
	UID             types.UID
	ResourceVersion string
	// Runner must be the record's AnnotationImportRunner.
	Runner string
}

// Images is what the controller needs of Images.
type Images interface {
	// AddGeneration adds ref to the Image, creating it with spec when it
	// does not exist.
	AddGeneration(ctx context.Context, namespace, name string, spec tagger.ImageSpec, ref tagger.HashReference) error
}

// Sources tells an import which credentials and which mirror to use.
type Sources interface {
	Credentials(namespace, from string) ([]importer.Credential, error)
	Mirror(ctx context.Context, namespace, name string) (*importer.Mirror, error)
}

// Config is what a Controller needs.
type Config struct {
	// Identity names this server in the records it runs. A server that
	// restarts under the same identity resumes its records at once.
	Identity string
	Importer importer.Interface
	Records  Records
	Images   Images
	Sources  Sources
	// Tags lists the tags of imports with a tag policy; nil means the
	// Importer, if it lists tags (*importer.Importer does).
	Tags     tagpolicy.Lister
	Recorder record.EventRecorder
	Clock    clock.WithTicker
	// Backoff spaces attempts after transient errors; Steps is ignored
	// (there are at most tagger.MaxImportAttempts attempts).
	Backoff wait.Backoff
	// Timeout bounds an import from its record's creation: past it the
	// import ends NoMoreAttempts.
	Timeout time.Duration
	// ResolveTimeout bounds one attempt of an import without mirror (a
	// registry that accepts the connection and never answers must not hold
	// it until Timeout); mirrored attempts copy images of any size and are
	// bounded by Timeout only.
	ResolveTimeout time.Duration
	// RenewInterval is how often a runner renews its claim.
	RenewInterval time.Duration
	// ResumeAfter is how long a claim may go unrenewed before another
	// server takes the import over.
	ResumeAfter time.Duration
	// KeepClaimsOnStop leaves the records of running imports claimed when
	// the controller stops, as a crash would; tests use it. By default a
	// stopping server releases them so a running replica resumes at once.
	KeepClaimsOnStop bool
	// Observer, when set, is told of every outcome this server stores
	// (metrics).
	Observer Observer
}

// Observer is told of the outcome of each import, once, by the server
// that ran it.
type Observer interface {
	ImportFinished(rec *tagger.ImageImport)
}

// Controller runs ImageImports.
type Controller struct {
	cfg Config

	// base lives as long as the controller: imports stop with it.
	base   context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup

	// started tells the claims of this process from those of an earlier
	// one under the same identity.
	started time.Time

	mu      sync.Mutex
	running map[types.UID]*Run

	lister taggerlisters.ImageImportLister
	synced cache.InformerSynced
	queue  workqueue.TypedRateLimitingInterface[string]
}

// New returns a Controller. It runs imports handed to Start at once; Run
// adds the informer-driven part that resumes imports.
func New(cfg Config) (*Controller, error) {
	if cfg.Importer == nil || cfg.Records == nil || cfg.Images == nil || cfg.Sources == nil || cfg.Identity == "" {
		return nil, fmt.Errorf("the import controller needs an identity, an importer, records, images and sources")
	}
	if cfg.Tags == nil {
		cfg.Tags, _ = cfg.Importer.(tagpolicy.Lister)
	}
	if cfg.Clock == nil {
		cfg.Clock = clock.RealClock{}
	}
	if cfg.Recorder == nil {
		cfg.Recorder = &record.FakeRecorder{}
	}
	if cfg.Backoff.Duration <= 0 {
		// Ten attempts take about 35 s of waiting at most; permanent
		// errors are not retried at all.
		cfg.Backoff = wait.Backoff{Duration: 500 * time.Millisecond, Factor: 1.5, Jitter: 0.1, Cap: 10 * time.Second}
	}
	if cfg.Timeout <= 0 {
		cfg.Timeout = 30 * time.Minute
	}
	if cfg.ResolveTimeout <= 0 {
		cfg.ResolveTimeout = 2 * time.Minute
	}
	if cfg.RenewInterval <= 0 {
		cfg.RenewInterval = 30 * time.Second
	}
	if cfg.ResumeAfter <= 0 {
		cfg.ResumeAfter = 4 * cfg.RenewInterval
	}
	c := &Controller{cfg: cfg, running: map[types.UID]*Run{}, started: cfg.Clock.Now()}
	c.base, c.cancel = context.WithCancel(context.Background())
	c.queue = workqueue.NewTypedRateLimitingQueueWithConfig(workqueue.DefaultTypedControllerRateLimiter[string](),
		workqueue.TypedRateLimitingQueueConfig[string]{Name: "imageimports"})
	return c, nil
}

// Identity is the name this server writes into the records it runs.
func (c *Controller) Identity() string { return c.cfg.Identity }

// Run is one import this server runs.
type Run struct {
	done   chan struct{}
	result *tagger.ImageImport // set before done closes
}

// Done is closed when the run ended: outcome stored, record gone, or the
// server stopping.
func (r *Run) Done() <-chan struct{} { return r.done }

// Result is the record as last stored by the run; valid once Done is closed.
// It is nil when the run stored nothing.
func (r *Run) Result() *tagger.ImageImport { return r.result }

// NewRunForTest returns a Run that ends with what fn returns; for tests of
// the code that waits for runs.
func NewRunForTest(fn func() *tagger.ImageImport) *Run {
	r := &Run{done: make(chan struct{})}
	go func() {
		r.result = fn()
		close(r.done)
	}()
	return r
}

// Start runs the import of rec, a record this server has just reserved
// (claimed by Identity), from its next attempt on.
func (c *Controller) Start(rec *tagger.ImageImport) *Run {
	run := &Run{done: make(chan struct{})}
	c.mu.Lock()
	if running := c.running[rec.UID]; running != nil {
		c.mu.Unlock()
		return running
	}
	if c.base.Err() != nil {
		// Stopping: the record stays Progressing for a running server to
		// resume.
		c.mu.Unlock()
		close(run.done)
		return run
	}
	c.running[rec.UID] = run
	c.wg.Add(1)
	c.mu.Unlock()
	go func() {
		defer c.wg.Done()
		defer func() {
			c.mu.Lock()
			delete(c.running, rec.UID)
			c.mu.Unlock()
			close(run.done)
		}()
		run.result = c.run(rec)
	}()
	return run
}

// Stop ends every import this server runs and waits for them. Their
// records stay Progressing; unless KeepClaimsOnStop, they are released so
// a running replica resumes them at once.
func (c *Controller) Stop() {
	c.mu.Lock()
	c.cancel() // under the lock: Start adds to wg only before this
	c.mu.Unlock()
	c.wg.Wait()
	c.queue.ShutDown()
}

// isRunning tells whether this server runs the record uid.
func (c *Controller) isRunning(uid types.UID) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.running[uid] != nil
}
