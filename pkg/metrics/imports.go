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

package metrics

import (
	"context"
	"errors"
	"strings"
	"time"

	"k8s.io/apimachinery/pkg/api/meta"

	"tagger.dev/tagger/pkg/apis/tagger"
	"tagger.dev/tagger/pkg/importer"
)

// Reason classes, the values of the reason label.
const (
	ReasonNone         = "none"         // success
	ReasonNotFound     = "not_found"    // manifest or repository unknown
	ReasonUnauthorized = "unauthorized" // credentials refused or missing
	ReasonPolicy       = "policy"       // refused by --allowed/--denied-registries
	ReasonTimeout      = "timeout"      // deadline or no answer
	ReasonUnavailable  = "unavailable"  // 5xx, 429, connection refused/reset, DNS
	ReasonInvalid      = "invalid"      // invalid reference or mirror path
	ReasonMirror       = "mirror"       // no mirror configured, rewritten image
	ReasonImage        = "image_update" // imported, but the Image could not take it
	ReasonOther        = "other"
)

// ReasonClass maps an import's reason (as written in its status) to one of
// a few classes.
func ReasonClass(reason string) string {
	r := strings.ToLower(reason)
	has := func(subs ...string) bool {
		for _, s := range subs {
			if strings.Contains(r, s) {
				return true
			}
		}
		return false
	}
	switch {
	case r == "":
		return ReasonNone
	case has("is not allowed:"):
		return ReasonPolicy
	case has("but the image could not be updated"):
		return ReasonImage
	case has("manifest unknown", "name unknown", "not found", "http 404"):
		return ReasonNotFound
	case has("unauthorized", "denied", "authentication required", "http 401", "http 403", "credentials"):
		return ReasonUnauthorized
	case has("deadline exceeded", "timeout", "did not finish within", "timed out"):
		return ReasonTimeout
	case has("http 5", "http 429", "toomanyrequests", "connection refused", "connection reset", "no such host", "eof", "unavailable"):
		return ReasonUnavailable
	case has("invalid", "characters long"):
		return ReasonInvalid
	case has("mirror"):
		return ReasonMirror
	default:
		return ReasonOther
	}
}

// Observer counts finished imports; the import controller calls it once per
// outcome, on the server that ran the import.
type Observer struct{}

// ImportFinished implements imports.Observer.
func (Observer) ImportFinished(ii *tagger.ImageImport) {
	host := Host(ii.Spec.From)
	result, reason := ResultImported, ReasonNone
	if ii.Status.HashReference == nil {
		result, reason = ResultFailed, ReasonOther
		if c := meta.FindStatusCondition(ii.Status.Conditions, tagger.ConditionImported); c != nil {
			reason = ReasonClass(c.Message)
		}
	}
	Imports.WithLabelValues(host, result, reason).Inc()
	if !ii.CreationTimestamp.IsZero() {
		ImportDuration.WithLabelValues(host, result).Observe(time.Since(ii.CreationTimestamp.Time).Seconds())
	}
}

// InstrumentImporter counts the attempts of imp and times its mirror
// copies. Only *importer.Importer is instrumented (its other methods
// unchanged); any other Interface is returned as is.
func InstrumentImporter(imp importer.Interface) importer.Interface {
	if i, ok := imp.(*importer.Importer); ok {
		return &Importer{Importer: i}
	}
	return imp
}

// Importer is an *importer.Importer whose imports are counted.
type Importer struct {
	*importer.Importer
}

// Import implements importer.Interface.
func (i *Importer) Import(ctx context.Context, req importer.Request) (importer.Result, error) {
	res, err := i.Importer.Import(ctx, req)
	host := Host(req.From)
	if err != nil {
		reason := ReasonClass(importer.Reason(err))
		if errors.Is(err, context.DeadlineExceeded) {
			reason = ReasonTimeout
		} else if errors.Is(err, context.Canceled) {
			reason = ReasonOther
		}
		ImportAttempts.WithLabelValues(host, ResultError, reason).Inc()
		return res, err
	}
	ImportAttempts.WithLabelValues(host, ResultSuccess, ReasonNone).Inc()
	if req.Mirror != nil && !res.ResolvedAt.IsZero() {
		MirrorDuration.WithLabelValues(host).Observe(time.Since(res.ResolvedAt).Seconds())
		MirroredBytes.WithLabelValues(host).Add(float64(res.MirroredBytes))
	}
	return res, nil
}
