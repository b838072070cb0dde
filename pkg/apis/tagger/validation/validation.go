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
// Package validation checks Tagger objects and returns field errors.
package validation

import (
	"fmt"
	"k8s.io/apimachinery/pkg/api/equality"
	"regexp"
	"strconv"
	"strings"
	"time"

	"github.com/Masterminds/semver/v3"
	"github.com/distribution/reference"
	apivalidation "k8s.io/apimachinery/pkg/api/validation"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	metav1validation "k8s.io/apimachinery/pkg/apis/meta/v1/validation"
	"k8s.io/apimachinery/pkg/util/validation/field"

	"tagger.dev/tagger/pkg/apis/tagger"
)

// ValidateImageName is the name rule for Images: a DNS subdomain of at most
// tagger.MaxImageNameLength characters, because the name becomes part of a
// registry repository path when mirrored, and the whole path
// ("[<repository>/]<namespace>/<name>") must fit the 255 characters
// registries allow.
func ValidateImageName(name string, prefix bool) []string {
	msgs := apivalidation.NameIsDNSSubdomain(name, prefix)
	if len(msgs) == 0 && len(name) > tagger.MaxImageNameLength {
		msgs = append(msgs, fmt.Sprintf("must be no more than %d characters: the mirror repository <namespace>/<name> must fit a registry's 255-character limit", tagger.MaxImageNameLength))
	}
	return msgs
}

// ValidateImage validates a new Image.
func ValidateImage(img *tagger.Image) field.ErrorList {
	allErrs := apivalidation.ValidateObjectMeta(&img.ObjectMeta, true, ValidateImageName, field.NewPath("metadata"))
	allErrs = append(allErrs, validateImageSpec(&img.Spec, field.NewPath("spec"))...)
	allErrs = append(allErrs, validatePinnedReference(img, field.NewPath("spec", "pinnedReference"))...)
	allErrs = append(allErrs, validateImageStatus(&img.Status, field.NewPath("status"))...)
	return allErrs
}

// ValidateImageUpdate validates an update of an Image's spec.
func ValidateImageUpdate(img, old *tagger.Image) field.ErrorList {
	allErrs := apivalidation.ValidateObjectMetaUpdate(&img.ObjectMeta, &old.ObjectMeta, field.NewPath("metadata"))
	allErrs = append(allErrs, validateImageSpec(&img.Spec, field.NewPath("spec"))...)
	// A pin that was valid when set may outlive its generation in the 25
	// kept; only a changed pin must name a generation.
	if img.Spec.PinnedReference != old.Spec.PinnedReference || !samePinTime(img.Spec.PinnedResolvedAt, old.Spec.PinnedResolvedAt) {
		allErrs = append(allErrs, validatePinnedReference(img, field.NewPath("spec", "pinnedReference"))...)
	}
	return allErrs
}

// validatePinnedReference checks that a pin names one of the Image's
// generations.
func validatePinnedReference(img *tagger.Image, fldPath *field.Path) field.ErrorList {
	pin := img.Spec.PinnedReference
	if pin == "" {
		return nil
	}
	if errs := ValidateDigestReference(pin, fldPath); len(errs) > 0 {
		return errs
	}
	if tagger.PinnedGeneration(img) < 0 {
		return field.ErrorList{field.Invalid(fldPath, pin,
			"must be the imageReference of one of status.hashReferences (see \"kubectl image list\"; \"kubectl image rollback\" sets it)")}
	}
	// With a time, the pin names one generation exactly.
	if at := img.Spec.PinnedResolvedAt; at != nil {
		i := tagger.PinnedGeneration(img)
		r := img.Status.HashReferences[i]
		if !tagger.GenerationTime(r.ResolvedAt, r.ImportedAt).Equal(at.Truncate(time.Microsecond)) {
			return field.ErrorList{field.Invalid(field.NewPath("spec", "pinnedResolvedAt"), at.UTC().Format(time.RFC3339Nano),
				"must be the resolvedAt (importedAt when unset) of a generation with imageReference spec.pinnedReference (see \"kubectl get image -o yaml\"; \"kubectl image rollback\" sets it)")}
		}
	}
	return nil
}

// samePinTime tells whether two pin times name the same microsecond.
func samePinTime(a, b *metav1.MicroTime) bool {
	if a == nil || b == nil {
		return a == b
	}
	return a.Truncate(time.Microsecond).Equal(b.Truncate(time.Microsecond))
}

// ValidateImageStatusUpdate validates an update of an Image's status.
func ValidateImageStatusUpdate(img, old *tagger.Image) field.ErrorList {
	allErrs := apivalidation.ValidateObjectMetaUpdate(&img.ObjectMeta, &old.ObjectMeta, field.NewPath("metadata"))
	allErrs = append(allErrs, validateImageStatus(&img.Status, field.NewPath("status"))...)
	return allErrs
}

// ValidateImageStatus checks the status of an Image the server creates
// with its first generation.
func ValidateImageStatus(status *tagger.ImageStatus) field.ErrorList {
	return validateImageStatus(status, field.NewPath("status"))
}

func validateImageSpec(spec *tagger.ImageSpec, fldPath *field.Path) field.ErrorList {
	var allErrs field.ErrorList
	if spec.From == "" {
		allErrs = append(allErrs, field.Required(fldPath.Child("from"), "the source image reference, e.g. quay.io/org/app:latest"))
	} else if errs := ValidateReference(spec.From, fldPath.Child("from")); len(errs) > 0 {
		allErrs = append(allErrs, errs...)
	} else if spec.TagPolicy != nil {
		allErrs = append(allErrs, validateRepositoryOnly(spec.From, fldPath.Child("from"))...)
	}
	if p := spec.ImportPolicy; p != nil && p.Interval != nil && p.Interval.Duration <= 0 {
		allErrs = append(allErrs, field.Invalid(fldPath.Child("importPolicy", "interval"), p.Interval.Duration.String(), "must be positive"))
	}
	if spec.TagPolicy != nil {
		allErrs = append(allErrs, ValidateTagPolicy(spec.TagPolicy, fldPath.Child("tagPolicy"))...)
	}
	return allErrs
}

// ValidateImportInterval refuses a scheduled interval shorter than min, the
// server's --min-import-interval.
func ValidateImportInterval(p *tagger.ImportPolicy, min time.Duration, fldPath *field.Path) field.ErrorList {
	if p == nil || p.Interval == nil || p.Interval.Duration <= 0 || p.Interval.Duration >= min {
		return nil
	}
	return field.ErrorList{field.Invalid(fldPath.Child("interval"), p.Interval.Duration.String(),
		fmt.Sprintf("must be at least %s (the server's --min-import-interval)", min))}
}

// validateRepositoryOnly refuses a tag or digest in a reference whose tag a
// tag policy chooses.
func validateRepositoryOnly(ref string, fldPath *field.Path) field.ErrorList {
	named, err := reference.ParseNormalizedNamed(ref)
	if err != nil || reference.IsNameOnly(named) {
		return nil
	}
	return field.ErrorList{field.Invalid(fldPath, ref, "must name a repository, without tag or digest, when a tag policy chooses the tag")}
}

// maxTagPolicyLength bounds each field of a tag policy.
const maxTagPolicyLength = 1024

// extractRefRE finds the group references of TagPolicy.Extract, as
// regexp.Expand reads them: $$, $name, ${name}.
var extractRefRE = regexp.MustCompile(`\$(\$|\{([^}]*)\}|([A-Za-z0-9_]+))`)

// ValidateTagPolicy checks that a tag policy compiles: a semver range or an
// order (not both), a pattern that is a valid RE2 expression, and an extract
// that names only groups of the pattern.
func ValidateTagPolicy(p *tagger.TagPolicy, fldPath *field.Path) field.ErrorList {
	var allErrs field.ErrorList
	for _, f := range []struct{ name, value string }{{"semver", p.Semver}, {"pattern", p.Pattern}, {"extract", p.Extract}} {
		if len(f.value) > maxTagPolicyLength {
			allErrs = append(allErrs, field.TooLong(fldPath.Child(f.name), "", maxTagPolicyLength))
		}
	}
	if len(allErrs) > 0 {
		return allErrs
	}
	switch {
	case p.Semver != "" && p.Order != "":
		allErrs = append(allErrs, field.Forbidden(fldPath.Child("order"), "set either semver or order, not both"))
	case p.Semver == "" && p.Order == "":
		allErrs = append(allErrs, field.Required(fldPath, "one of semver (a version range) or order (Alphabetical or Numerical)"))
	}
	if p.Semver != "" {
		if _, err := semver.NewConstraint(p.Semver); err != nil {
			allErrs = append(allErrs, field.Invalid(fldPath.Child("semver"), p.Semver, fmt.Sprintf("not a version range: %v", err)))
		}
	}
	if p.Order != "" && p.Order != tagger.TagOrderAlphabetical && p.Order != tagger.TagOrderNumerical {
		allErrs = append(allErrs, field.NotSupported(fldPath.Child("order"), p.Order,
			[]tagger.TagOrder{tagger.TagOrderAlphabetical, tagger.TagOrderNumerical}))
	}
	if p.Pattern == "" {
		if p.Extract != "" {
			allErrs = append(allErrs, field.Required(fldPath.Child("pattern"), "extract refers to the groups of a pattern"))
		}
		return allErrs
	}
	re, err := regexp.Compile(p.Pattern)
	if err != nil {
		return append(allErrs, field.Invalid(fldPath.Child("pattern"), p.Pattern, fmt.Sprintf("not a regular expression: %v", err)))
	}
	for _, m := range extractRefRE.FindAllStringSubmatch(p.Extract, -1) {
		if m[1] == "$" {
			continue
		}
		name := m[2] + m[3]
		if !hasGroup(re, name) {
			allErrs = append(allErrs, field.Invalid(fldPath.Child("extract"), p.Extract,
				fmt.Sprintf("pattern has no group %q", name)))
		}
	}
	return allErrs
}

// hasGroup tells whether re has the group name, a number or a name.
func hasGroup(re *regexp.Regexp, name string) bool {
	if n, err := strconv.Atoi(name); err == nil {
		return n >= 0 && n <= re.NumSubexp()
	}
	return name != "" && re.SubexpIndex(name) >= 0
}

func validateImageStatus(status *tagger.ImageStatus, fldPath *field.Path) field.ErrorList {
	var allErrs field.ErrorList
	allErrs = append(allErrs, metav1validation.ValidateConditions(status.Conditions, fldPath.Child("conditions"))...)
	refsPath := fldPath.Child("hashReferences")
	if n := len(status.HashReferences); n > tagger.MaxHashReferences {
		allErrs = append(allErrs, field.TooMany(refsPath, n, tagger.MaxHashReferences))
	}
	for i := range status.HashReferences {
		allErrs = append(allErrs, validateHashReference(&status.HashReferences[i], refsPath.Index(i))...)
	}
	return allErrs
}

func validateHashReference(ref *tagger.HashReference, fldPath *field.Path) field.ErrorList {
	var allErrs field.ErrorList
	if ref.From == "" {
		allErrs = append(allErrs, field.Required(fldPath.Child("from"), ""))
	}
	if ref.ImportedAt.IsZero() {
		allErrs = append(allErrs, field.Required(fldPath.Child("importedAt"), ""))
	}
	allErrs = append(allErrs, ValidateDigestReference(ref.ImageReference, fldPath.Child("imageReference"))...)
	return allErrs
}

// ValidateReference checks that ref parses as a docker reference, the way a
// container runtime would read it ("nginx", "host:5000/org/app:tag", "repo@sha256:...").
func ValidateReference(ref string, fldPath *field.Path) field.ErrorList {
	if strings.TrimSpace(ref) != ref {
		return field.ErrorList{field.Invalid(fldPath, ref, "must not have leading or trailing spaces")}
	}
	if _, err := reference.ParseNormalizedNamed(ref); err != nil {
		return field.ErrorList{field.Invalid(fldPath, ref, fmt.Sprintf("not a valid image reference: %v", err))}
	}
	return nil
}

// ValidateDigestReference checks that ref is a fully qualified digest
// reference, "registry/repo@sha256:<hex>".
func ValidateDigestReference(ref string, fldPath *field.Path) field.ErrorList {
	if ref == "" {
		return field.ErrorList{field.Required(fldPath, "a digest reference, registry/repo@sha256:...")}
	}
	named, err := reference.ParseNormalizedNamed(ref)
	if err != nil {
		return field.ErrorList{field.Invalid(fldPath, ref, fmt.Sprintf("not a valid image reference: %v", err))}
	}
	if _, ok := named.(reference.Canonical); !ok {
		return field.ErrorList{field.Invalid(fldPath, ref, "must be a digest reference (registry/repo@sha256:...)")}
	}
	return nil
}

// ValidateImageImport validates a new ImageImport.
func ValidateImageImport(ii *tagger.ImageImport) field.ErrorList {
	allErrs := apivalidation.ValidateObjectMeta(&ii.ObjectMeta, true, apivalidation.NameIsDNSSubdomain, field.NewPath("metadata"))
	allErrs = append(allErrs, validateImageImportSpec(&ii.Spec, field.NewPath("spec"))...)
	allErrs = append(allErrs, validateImageImportStatus(&ii.Status, field.NewPath("status"))...)
	return allErrs
}

// ValidateImageImportUpdate validates an update of an ImageImport's spec:
// an import that ran cannot be changed to have imported something else.
func ValidateImageImportUpdate(ii, old *tagger.ImageImport) field.ErrorList {
	allErrs := apivalidation.ValidateObjectMetaUpdate(&ii.ObjectMeta, &old.ObjectMeta, field.NewPath("metadata"))
	spec := field.NewPath("spec")
	for _, f := range []struct {
		name     string
		now, was any
	}{
		{"targetImage", ii.Spec.TargetImage, old.Spec.TargetImage},
		{"from", ii.Spec.From, old.Spec.From},
		{"mirror", boolText(ii.Spec.Mirror), boolText(old.Spec.Mirror)},
		{"insecure", boolText(ii.Spec.Insecure), boolText(old.Spec.Insecure)},
		{"tagPolicy", ii.Spec.TagPolicy, old.Spec.TagPolicy},
	} {
		// Field by field, with values as the user wrote them, not the Go
		// struct of the whole spec.
		if !equality.Semantic.DeepEqual(f.now, f.was) {
			allErrs = append(allErrs, field.Invalid(spec.Child(f.name), f.now, "field is immutable: an ImageImport records one import; create another"))
		}
	}
	if len(allErrs) == 0 && !equality.Semantic.DeepEqual(ii.Spec, old.Spec) {
		allErrs = append(allErrs, field.Invalid(spec, "", "field is immutable: an ImageImport records one import; create another"))
	}
	return allErrs
}

// boolText shows an optional bool as a user wrote it.
func boolText(b *bool) string {
	if b == nil {
		return "unset"
	}
	return fmt.Sprint(*b)
}

// ValidateImageImportStatusUpdate validates an update of an ImageImport's status.
func ValidateImageImportStatusUpdate(ii, old *tagger.ImageImport) field.ErrorList {
	allErrs := apivalidation.ValidateObjectMetaUpdate(&ii.ObjectMeta, &old.ObjectMeta, field.NewPath("metadata"))
	allErrs = append(allErrs, validateImageImportStatus(&ii.Status, field.NewPath("status"))...)
	return allErrs
}

func validateImageImportSpec(spec *tagger.ImageImportSpec, fldPath *field.Path) field.ErrorList {
	var allErrs field.ErrorList
	targetPath := fldPath.Child("targetImage")
	if spec.TargetImage == "" {
		allErrs = append(allErrs, field.Required(targetPath, "the name of the Image to import into"))
	} else {
		for _, msg := range ValidateImageName(spec.TargetImage, false) {
			allErrs = append(allErrs, field.Invalid(targetPath, spec.TargetImage, msg))
		}
	}
	if spec.From != "" {
		errs := ValidateReference(spec.From, fldPath.Child("from"))
		if len(errs) == 0 && spec.TagPolicy != nil {
			errs = validateRepositoryOnly(spec.From, fldPath.Child("from"))
		}
		allErrs = append(allErrs, errs...)
	}
	if spec.TagPolicy != nil {
		allErrs = append(allErrs, ValidateTagPolicy(spec.TagPolicy, fldPath.Child("tagPolicy"))...)
	}
	return allErrs
}

func validateImageImportStatus(status *tagger.ImageImportStatus, fldPath *field.Path) field.ErrorList {
	var allErrs field.ErrorList
	if status.HashReference != nil {
		allErrs = append(allErrs, validateHashReference(status.HashReference, fldPath.Child("hashReference"))...)
	}
	if n := len(status.ImportAttempts); n > tagger.MaxImportAttempts {
		allErrs = append(allErrs, field.TooMany(fldPath.Child("importAttempts"), n, tagger.MaxImportAttempts))
	}
	allErrs = append(allErrs, metav1validation.ValidateConditions(status.Conditions, fldPath.Child("conditions"))...)
	return allErrs
}
