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
package imageimport

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

// TableConvertor prints ImageImports for "kubectl get imageimports", with
// the columns of the original Tagger.
type TableConvertor struct{}

var importColumns = []metav1.TableColumnDefinition{
	{Name: "Name", Type: "string", Format: "name", Description: "Name of the ImageImport."},
	{Name: "Insecure", Type: "boolean", Description: "Whether TLS verification was skipped."},
	{Name: "Mirror", Type: "boolean", Description: "Whether the image was mirrored."},
	{Name: "TargetImage", Type: "string", Description: "The Image imported into."},
	{Name: "Status", Type: "string", Description: "Imported, Progressing or Failed."},
	{Name: "ImportedAt", Type: "string", Description: "When the import succeeded."},
	{Name: "ImageReference", Type: "string", Description: "The digest reference imported."},
	{Name: "Reason", Type: "string", Priority: 1, Description: "Why the newest attempt failed."},
}

// ConvertToTable implements rest.TableConvertor.
func (TableConvertor) ConvertToTable(ctx context.Context, obj runtime.Object, tableOptions runtime.Object) (*metav1.Table, error) {
	table := &metav1.Table{ColumnDefinitions: importColumns}
	if m, err := meta.ListAccessor(obj); err == nil {
		table.ResourceVersion = m.GetResourceVersion()
		table.Continue = m.GetContinue()
		table.RemainingItemCount = m.GetRemainingItemCount()
	} else if m, err := meta.CommonAccessor(obj); err == nil {
		table.ResourceVersion = m.GetResourceVersion()
	}
	var err error
	table.Rows, err = metatable.MetaToTableRow(obj, func(obj runtime.Object, m metav1.Object, name, age string) ([]interface{}, error) {
		ii, ok := obj.(*tagger.ImageImport)
		if !ok {
			return nil, fmt.Errorf("not an ImageImport: %T", obj)
		}
		at, ref, reason := "", "", ""
		if hr := ii.Status.HashReference; hr != nil {
			at, ref = hr.ImportedAt.UTC().Format(time.RFC3339), hr.ImageReference
		}
		if n := len(ii.Status.ImportAttempts); n > 0 {
			reason = ii.Status.ImportAttempts[n-1].Reason
		}
		return []interface{}{name, deref(ii.Spec.Insecure), deref(ii.Spec.Mirror), ii.Spec.TargetImage, statusOf(ii), at, ref, reason}, nil
	})
	return table, err
}

func deref(b *bool) bool { return b != nil && *b }

// statusOf sums up an import in one word.
func statusOf(ii *tagger.ImageImport) string {
	if c := meta.FindStatusCondition(ii.Status.Conditions, tagger.ConditionFailed); c != nil && c.Status == metav1.ConditionTrue {
		return "Failed"
	}
	c := meta.FindStatusCondition(ii.Status.Conditions, tagger.ConditionImported)
	switch {
	case c == nil:
		return ""
	case c.Status == metav1.ConditionTrue:
		return "Imported"
	case c.Reason == tagger.ReasonProgressing:
		return "Progressing"
	default:
		return "Failed"
	}
}
