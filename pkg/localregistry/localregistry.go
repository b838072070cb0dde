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

// Package localregistry serves the reference container registry
// (github.com/distribution/distribution/v3) in-process, for Tagger's local
// mode and for tests.
package localregistry

import (
	"context"
	"crypto/rand"
	"crypto/tls"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"os"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/distribution/distribution/v3/configuration"
	"github.com/distribution/distribution/v3/registry/api/errcode"
	"github.com/distribution/distribution/v3/registry/handlers"
	"github.com/sirupsen/logrus"
	"golang.org/x/crypto/bcrypt"

	// Registered by import: the auth and storage drivers New configures.
	_ "github.com/distribution/distribution/v3/registry/auth/htpasswd"
	_ "github.com/distribution/distribution/v3/registry/storage/driver/filesystem"
	_ "github.com/distribution/distribution/v3/registry/storage/driver/inmemory"
)

// Options configures a Registry.
type Options struct {
	// Dir is the root of filesystem storage; empty means in-memory storage,
	// lost on Close.
	Dir string
	// Addr is the address to listen on; empty means "127.0.0.1:0", a free
	// loopback port.
	Addr string
	// TLS, when set, makes the registry serve https with this config.
	TLS *tls.Config
	// Htpasswd, when set, is the path of an htpasswd file (bcrypt entries
	// only) and turns on basic authentication for every request.
	Htpasswd string
	// ErrorLog receives the HTTP server's own errors (TLS handshake
	// failures, broken connections); nil discards them.
	ErrorLog *log.Logger
	// Handler, when set, wraps the registry's handler, e.g. to count or
	// fail requests in tests.
	Handler func(http.Handler) http.Handler
	// Notifications are endpoints the registry posts its event envelopes
	// to (pushes, pulls, deletes), as its "notifications" configuration.
	Notifications []configuration.Endpoint
}

// Registry is a running registry. Deleting manifests and blobs is enabled.
type Registry struct {
	app      *handlers.App
	server   *http.Server
	listener net.Listener
	tls      bool
	done     chan struct{}

	closeOnce sync.Once
	closeErr  error
}

// quietOnce installs clientErrorFilter once per process.
var quietOnce sync.Once

// quietLogs lowers logrus' standard logger, which the registry logs every
// request through, to errors, and drops the error lines the registry writes
// for answers in the 4xx range ("manifest unknown", "blob unknown" when a
// client checks what is there before a copy): they are ordinary answers,
// and the client sees them. Answers in the 5xx range are still logged. It
// never makes logging more verbose.
//
// The registry takes its logger from the request context under a key of an
// internal package, falling back to logrus' standard logger: the standard
// logger's formatter is the one place to filter it.
func quietLogs() {
	std := logrus.StandardLogger()
	if std.GetLevel() > logrus.ErrorLevel {
		std.SetLevel(logrus.ErrorLevel)
	}
	quietOnce.Do(func() {
		std.SetFormatter(&clientErrorFilter{next: std.Formatter})
	})
}

// responseErrorMessage is what the registry logs for every error it
// answers with, the error code in the field "err.code".
const responseErrorMessage = "response completed with error"

// clientErrorFilter formats nothing for the registry's log lines about
// answers in the 4xx range, and hands every other entry to next.
type clientErrorFilter struct{ next logrus.Formatter }

func (f *clientErrorFilter) Format(e *logrus.Entry) ([]byte, error) {
	if isClientError(e) {
		return nil, nil
	}
	return f.next.Format(e)
}

// isClientError tells whether e is the registry's line about an answer in
// the 4xx range.
func isClientError(e *logrus.Entry) bool {
	if e.Message != responseErrorMessage {
		return false
	}
	code, ok := e.Data["err.code"].(errcode.ErrorCode)
	return ok && code.Descriptor().HTTPStatusCode < http.StatusInternalServerError
}

// New starts a registry. It returns once the registry accepts connections.
// The registry logs through logrus' standard logger, which New lowers to
// error level, without the lines about answers in the 4xx range (see
// quietLogs): its per-request messages are noise for Tagger.
func New(ctx context.Context, opts Options) (r *Registry, err error) {
	quietLogs()
	addr := opts.Addr
	if addr == "" {
		addr = "127.0.0.1:0"
	}

	storage := configuration.Storage{
		"delete": configuration.Parameters{"enabled": true},
		// The purger is a background goroutine sleeping for hours; a
		// registry that lives as long as a test does not need it.
		"maintenance": configuration.Parameters{"uploadpurging": map[any]any{"enabled": false}},
	}
	if opts.Dir != "" {
		if err := os.MkdirAll(opts.Dir, 0o700); err != nil {
			return nil, err
		}
		storage["filesystem"] = configuration.Parameters{"rootdirectory": opts.Dir}
	} else {
		storage["inmemory"] = configuration.Parameters{}
	}
	secret := make([]byte, 16)
	if _, err := rand.Read(secret); err != nil {
		return nil, err
	}
	cfg := &configuration.Configuration{Storage: storage}
	cfg.HTTP.Secret = hex.EncodeToString(secret)
	cfg.Log.Level = "error"
	// The default of a parsed configuration; zero refuses every "n" of
	// GET /v2/_catalog?n=... ("crane catalog" asks for 1000).
	cfg.Catalog.MaxEntries = 1000
	cfg.Notifications.Endpoints = opts.Notifications
	if opts.Htpasswd != "" {
		if _, err := os.Stat(opts.Htpasswd); err != nil {
			// The registry would create an htpasswd file with a random
			// password; a missing file is a configuration mistake here.
			return nil, fmt.Errorf("htpasswd file: %w", err)
		}
		cfg.Auth = configuration.Auth{"htpasswd": configuration.Parameters{"realm": "tagger-local-registry", "path": opts.Htpasswd}}
	}

	// NewApp reports configuration errors by panicking.
	var app *handlers.App
	func() {
		defer func() {
			if p := recover(); p != nil {
				err = fmt.Errorf("starting registry: %v", p)
			}
		}()
		app = handlers.NewApp(ctx, cfg)
	}()
	if err != nil {
		return nil, err
	}

	l, err := net.Listen("tcp", addr)
	if err != nil {
		_ = app.Shutdown()
		return nil, err
	}
	if opts.ErrorLog == nil {
		opts.ErrorLog = log.New(io.Discard, "", 0)
	}
	var h http.Handler = app
	if opts.Handler != nil {
		h = opts.Handler(h)
	}
	r = &Registry{
		app:      app,
		server:   &http.Server{Handler: h, ReadHeaderTimeout: 30 * time.Second, ErrorLog: opts.ErrorLog},
		listener: l,
		tls:      opts.TLS != nil,
		done:     make(chan struct{}),
	}
	if opts.TLS != nil {
		r.server.TLSConfig = opts.TLS.Clone()
		l = tls.NewListener(l, r.server.TLSConfig)
	}
	go func() {
		defer close(r.done)
		// Serve returns ErrServerClosed after Shutdown; anything else has
		// nobody to report to but Close.
		if err := r.server.Serve(l); err != nil && !errors.Is(err, http.ErrServerClosed) {
			r.closeErr = err
		}
	}()
	return r, nil
}

// Addr returns the registry's host:port, e.g. "127.0.0.1:34567".
func (r *Registry) Addr() string { return r.listener.Addr().String() }

// URL returns the registry's base URL, "http://host:port" or "https://...".
func (r *Registry) URL() string {
	if r.tls {
		return "https://" + r.Addr()
	}
	return "http://" + r.Addr()
}

// Handler returns the registry's http.Handler, without Options.Handler.
func (r *Registry) Handler() http.Handler { return r.app }

// Shutdown stops accepting connections, waits for running requests until
// ctx ends (then cuts them and returns ctx's error), and releases the
// registry.
func (r *Registry) Shutdown(ctx context.Context) error {
	return r.stop(func() error {
		err := r.server.Shutdown(ctx)
		if err != nil {
			_ = r.server.Close()
		}
		return err
	})
}

// Close stops the registry at once, cutting running requests.
func (r *Registry) Close() error {
	return r.stop(r.server.Close)
}

func (r *Registry) stop(stopServer func() error) error {
	r.closeOnce.Do(func() {
		err := stopServer()
		<-r.done
		if appErr := r.app.Shutdown(); err == nil {
			err = appErr
		}
		if err == nil {
			err = r.closeErr
		}
		r.closeErr = err
	})
	return r.closeErr
}

// WriteHtpasswd writes an htpasswd file for users (name to password) with
// bcrypt at cost; pass bcrypt.MinCost in tests, as each login verifies the
// hash and bcrypt.DefaultCost takes about a second per request.
func WriteHtpasswd(path string, users map[string]string, cost int) error {
	names := make([]string, 0, len(users))
	for u := range users {
		if strings.ContainsAny(u, ":\n") {
			return fmt.Errorf("invalid user name %q", u)
		}
		names = append(names, u)
	}
	sort.Strings(names)
	var b strings.Builder
	for _, u := range names {
		hash, err := bcrypt.GenerateFromPassword([]byte(users[u]), cost)
		if err != nil {
			return err
		}
		fmt.Fprintf(&b, "%s:%s\n", u, hash)
	}
	return os.WriteFile(path, []byte(b.String()), 0o600)
}
