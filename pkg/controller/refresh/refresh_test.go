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

package refresh

import (
	"context"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"

	"tagger.dev/tagger/pkg/apis/tagger"
	taggerv1beta1 "tagger.dev/tagger/pkg/apis/tagger/v1beta1"
	"tagger.dev/tagger/pkg/importer"
)

type nopImports struct{}

func (nopImports) StartImport(context.Context, *tagger.ImageImport) (*tagger.ImageImport, error) {
	return nil, nil
}

type nopImages struct{}

func (nopImages) UpdateStatus(context.Context, string, string, func(*tagger.Image) error) (*tagger.Image, error) {
	return nil, nil
}

type nopCredentials struct{}

func (nopCredentials) Credentials(string, string) ([]importer.Credential, error) { return nil, nil }

func newController(t *testing.T, min time.Duration) *Controller {
	t.Helper()
	c, err := New(Config{
		Resolver:    importer.Func(func(context.Context, importer.Request) (importer.Result, error) { return importer.Result{}, nil }),
		Credentials: nopCredentials{}, Images: nopImages{}, Imports: nopImports{}, MinInterval: min,
	})
	if err != nil {
		t.Fatal(err)
	}
	return c
}

var t0 = time.Date(2026, 11, 1, 12, 0, 0, 0, time.UTC)

func image(interval time.Duration, last time.Duration, cond *metav1.Condition) *taggerv1beta1.Image {
	img := &taggerv1beta1.Image{
		ObjectMeta: metav1.ObjectMeta{Namespace: "ns", Name: "app", UID: types.UID("uid-1"), Generation: 2},
		Spec: taggerv1beta1.ImageSpec{From: "registry.example.com/org/app:v1", ImportPolicy: &taggerv1beta1.ImportPolicy{
			Scheduled: true, Interval: &metav1.Duration{Duration: interval},
		}},
	}
	if last >= 0 {
		img.Status.LastCheckedAt = &metav1.MicroTime{Time: t0.Add(last)}
	}
	if cond != nil {
		img.Status.Conditions = []metav1.Condition{*cond}
	}
	return img
}

func cond(status metav1.ConditionStatus, since time.Duration, generation int64) *metav1.Condition {
	return &metav1.Condition{Type: tagger.ConditionChecked, Status: status, Reason: "R", ObservedGeneration: generation,
		LastTransitionTime: metav1.NewTime(t0.Add(since))}
}

func TestDue(t *testing.T) {
	const interval = 10 * time.Minute
	jitterMax := time.Duration(float64(interval) * JitterFraction)
	tests := []struct {
		name     string
		img      *taggerv1beta1.Image
		min      time.Duration
		from, to time.Duration // due is in [t0+from, t0+to)
		now      bool          // due at once
	}{
		{name: "never checked", img: image(interval, -1, nil), now: true},
		{name: "checked under another spec", img: image(interval, 0, cond(metav1.ConditionTrue, 0, 1)), now: true},
		{name: "checked", img: image(interval, 0, cond(metav1.ConditionTrue, -time.Hour, 2)), from: interval, to: interval + jitterMax},
		{name: "first check running", img: image(interval, 0, cond(metav1.ConditionUnknown, 0, 2)), from: interval, to: interval + jitterMax},
		{name: "minimum wins over a shorter stored interval", img: image(time.Minute, 0, cond(metav1.ConditionTrue, 0, 2)), min: interval,
			from: interval, to: interval + jitterMax},
		{name: "first failure: one interval", img: image(interval, 0, cond(metav1.ConditionFalse, 0, 2)), from: interval, to: interval + jitterMax},
		{name: "failing for one interval: one more", img: image(interval, interval, cond(metav1.ConditionFalse, 0, 2)),
			from: 2 * interval, to: 2*interval + jitterMax},
		{name: "failing for two intervals: doubled", img: image(interval, 2*interval, cond(metav1.ConditionFalse, 0, 2)),
			from: 4 * interval, to: 4*interval + jitterMax},
		{name: "failing long: capped at 16 intervals", img: image(interval, 100*interval, cond(metav1.ConditionFalse, 0, 2)),
			from: 116 * interval, to: 116*interval + jitterMax},
		{name: "failing long with a long interval: capped at a day", img: image(6*time.Hour, 100*time.Hour, cond(metav1.ConditionFalse, 0, 2)),
			from: 124 * time.Hour, to: 124*time.Hour + 36*time.Minute},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			due := newController(t, tc.min).Due(tc.img)
			if tc.now {
				if !due.IsZero() {
					t.Errorf("due %s, want at once", due)
				}
				return
			}
			if due.Before(t0.Add(tc.from)) || !due.Before(t0.Add(tc.to)) {
				t.Errorf("due %s after t0, want in [%s, %s)", due.Sub(t0), tc.from, tc.to)
			}
		})
	}
}

// The jitter spreads Images checked at the same moment, and every replica
// computes the same due time for an Image.
func TestJitterSpreadsAndAgrees(t *testing.T) {
	c := newController(t, 0)
	const interval = 15 * time.Minute
	seen := map[time.Duration]bool{}
	var lo, hi time.Duration = interval, 0
	for i := range 1000 {
		img := image(interval, 0, cond(metav1.ConditionTrue, 0, 2))
		img.Name = "app-" + string(rune('a'+i%26)) + string(rune('a'+i/26%26)) + string(rune('a'+i/676))
		img.UID = types.UID(img.Name)
		d := c.Due(img).Sub(t0) - interval
		seen[d.Round(time.Second)] = true
		lo, hi = min(lo, d), max(hi, d)
		if again := newController(t, 0).Due(img).Sub(t0) - interval; again != d {
			t.Fatalf("two controllers disagree: %s and %s", d, again)
		}
	}
	// 1000 Images over 90 s: nearly every second has some.
	if len(seen) < 80 || lo < 0 || hi >= interval/10 || hi-lo < interval/12 {
		t.Errorf("1000 Images checked at once are due within [%s, %s], %d distinct seconds; want spread over a tenth of %s", lo, hi, len(seen), interval)
	}
}

func TestMatches(t *testing.T) {
	img := func(from string, tp *taggerv1beta1.TagPolicy) *taggerv1beta1.Image {
		return &taggerv1beta1.Image{Spec: taggerv1beta1.ImageSpec{From: from, TagPolicy: tp}}
	}
	semver := &taggerv1beta1.TagPolicy{Semver: ">=1.2.0 <2"}
	tests := []struct {
		img  *taggerv1beta1.Image
		tag  string
		want bool
	}{
		{img("registry.example.com/org/app:v1", nil), "v1", true},
		{img("registry.example.com/org/app:v1", nil), "v2", false},
		{img("registry.example.com/org/app", nil), "latest", true},
		{img("nginx", nil), "latest", true},
		{img("registry.example.com/org/app:v1", nil), "", false},
		{img("registry.example.com/org/app@sha256:4bcdffd70da292293d059d2435c7056711fab2655f8b74f48ad0abe042b63687", nil), "latest", false},
		{img("registry.example.com/org/app", semver), "1.3.1", true},
		{img("registry.example.com/org/app", semver), "2.0.0", false},
		{img("registry.example.com/org/app", semver), "latest", false},
	}
	for _, tc := range tests {
		if got := matches(tc.img, tc.tag); got != tc.want {
			t.Errorf("matches(%s, policy %v, %q) = %v, want %v", tc.img.Spec.From, tc.img.Spec.TagPolicy, tc.tag, got, tc.want)
		}
	}
}

func TestLastFrom(t *testing.T) {
	img := &tagger.Image{Status: tagger.ImageStatus{HashReferences: []tagger.HashReference{
		{From: "mirror.example.com/ns/app:latest", ImageReference: "mirror.example.com/ns/app@sha256:push"},
		{From: "registry.example.com/org/app:v1", ImageReference: "mirror.example.com/ns/app@sha256:b"},
		{From: "registry.example.com/org/app:v1", ImageReference: "mirror.example.com/ns/app@sha256:a"},
	}}}
	if got := lastFrom(img, "registry.example.com/org/app:v1"); got != "sha256:b" {
		t.Errorf("lastFrom = %q, want the newest generation from that tag (a push does not count)", got)
	}
	if got := lastFrom(img, "registry.example.com/org/app:v2"); got != "" {
		t.Errorf("lastFrom of a tag never imported = %q", got)
	}
}
