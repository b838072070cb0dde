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
package image

import (
	"context"
	"fmt"
	"time"

	"k8s.io/apimachinery/pkg/api/meta"
	metatable "k8s.io/apimachinery/pkg/api/meta/table"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"

	"tagger.dev/tagger/pkg/apis/tagger"
)

// TableConvertor prints Images for "kubectl get images".
type TableConvertor struct{}

var imageColumns = []metav1.TableColumnDefinition{
	{Name: "Name", Type: "string", Format: "name", Description: "Name of the Image."},
	{Name: "From", Type: "string", Description: "The source image reference."},
	{Name: "Mirror", Type: "boolean", Description: "Whether generations are mirrored."},
	{Name: "Insecure", Type: "boolean", Description: "Whether TLS verification is skipped for the source."},
	{Name: "ImageReference", Type: "string", Description: "The current generation's digest reference (status.currentReference): the pinned one after a rollback, else the newest."},
	{Name: "ImportedAt", Type: "string", Description: "When the current generation was imported."},
	{Name: "Current", Type: "string", Description: "Which generation is current: the newest, or the one spec.pinnedReference pins (kubectl image rollback)."},
	{Name: "Age", Type: "string", Description: "Time since the Image was created."},
}

// ConvertToTable implements rest.TableConvertor.
func (TableConvertor) ConvertToTable(ctx context.Context, obj runtime.Object, tableOptions runtime.Object) (*metav1.Table, error) {
	table := &metav1.Table{ColumnDefinitions: imageColumns}
	if m, err := meta.ListAccessor(obj); err == nil {
		table.ResourceVersion = m.GetResourceVersion()
		table.Continue = m.GetContinue()
		table.RemainingItemCount = m.GetRemainingItemCount()
	} else if m, err := meta.CommonAccessor(obj); err == nil {
		table.ResourceVersion = m.GetResourceVersion()
	}
	var err error
	table.Rows, err = metatable.MetaToTableRow(obj, func(obj runtime.Object, m metav1.Object, name, age string) ([]interface{}, error) {
		img, ok := obj.(*tagger.Image)
		if !ok {
			return nil, fmt.Errorf("not an Image: %T", obj)
		}
		ref, at := img.Status.CurrentReference, ""
		if i := tagger.CurrentGeneration(img); i >= 0 {
			cur := img.Status.HashReferences[i]
			ref, at = cur.ImageReference, cur.ImportedAt.UTC().Format(time.RFC3339)
		}
		return []interface{}{name, img.Spec.From, img.Spec.Mirror, img.Spec.Insecure, ref, at, current(img), age}, nil
	})
	return table, err
}

// current says which generation is current: "newest", "pinned #N" (N as
// "kubectl image list" numbers generations), or "" without generations.
func current(img *tagger.Image) string {
	if img.Spec.PinnedReference == "" {
		if len(img.Status.HashReferences) == 0 {
			return ""
		}
		return "newest"
	}
	if i := tagger.PinnedGeneration(img); i >= 0 {
		return fmt.Sprintf("pinned #%d", i)
	}
	return "pinned (gone)"
}
