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

package plugin

import (
	"strings"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"tagger.dev/tagger/pkg/apis/tagger/v1beta1"
)

// Rollback and rollforward move one generation at a time over a history
// that repeats digests (A, B, A, C, A newest first), visiting each once.
func TestRollVisitsEveryGenerationOnce(t *testing.T) {
	base := time.Date(2026, 11, 22, 6, 0, 0, 0, time.UTC)
	img := &v1beta1.Image{ObjectMeta: metav1.ObjectMeta{Name: "app"}}
	for i, d := range []string{"A", "B", "A", "C", "A"} {
		at := base.Add(-time.Duration(i) * time.Second)
		img.Status.HashReferences = append(img.Status.HashReferences, v1beta1.HashReference{
			From: "x", ResolvedAt: metav1.NewMicroTime(at), ImportedAt: metav1.NewTime(at), ImageReference: "r@" + d,
		})
	}
	step := func(back bool) int {
		t.Helper()
		pin, err := Roll(img, back)
		if err != nil {
			t.Fatal(err)
		}
		img.Spec.PinnedReference, img.Spec.PinnedResolvedAt = pin.Reference, pin.ResolvedAt
		img.Status.CurrentReference = pin.Reference
		if pin.Reference == "" {
			img.Status.CurrentReference = img.Status.HashReferences[0].ImageReference
		}
		return v1beta1.CurrentGeneration(img)
	}
	for want := 1; want <= 4; want++ {
		if got := step(true); got != want {
			t.Fatalf("rollback: generation %d current, want %d", got, want)
		}
	}
	if _, err := Roll(img, true); err == nil || !strings.Contains(err.Error(), "oldest") {
		t.Fatalf("rollback past the oldest: %v", err)
	}
	for want := 3; want >= 0; want-- {
		if got := step(false); got != want {
			t.Fatalf("rollforward: generation %d current, want %d", got, want)
		}
	}
	if img.Spec.PinnedReference != "" || img.Spec.PinnedResolvedAt != nil {
		t.Fatalf("rollforward to the newest left a pin: %+v", img.Spec)
	}
	if _, err := Roll(img, false); err == nil || !strings.Contains(err.Error(), "already current") {
		t.Fatalf("rollforward at the newest: %v", err)
	}
	// A pin of an older client (reference alone) names the newest
	// generation with that reference: rollback goes on from there.
	img.Spec.PinnedReference, img.Spec.PinnedResolvedAt = "r@A", nil
	if got := step(true); got != 1 {
		t.Fatalf("rollback from a reference-only pin: generation %d, want 1", got)
	}
}
