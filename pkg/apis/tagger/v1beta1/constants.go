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

package v1beta1

import "tagger.dev/tagger/pkg/apis/tagger"

// Limits, condition types, reasons and annotations of tagger.dev/v1beta1,
// for clients; their meaning is documented where they are defined.
const (
	MaxHashReferences  = tagger.MaxHashReferences
	MaxImportAttempts  = tagger.MaxImportAttempts
	MaxReasonLength    = tagger.MaxReasonLength
	MaxImageNameLength = tagger.MaxImageNameLength

	ConditionImported    = tagger.ConditionImported
	ConditionFailed      = tagger.ConditionFailed
	ReasonImageImported  = tagger.ReasonImageImported
	ReasonProgressing    = tagger.ReasonProgressing
	ReasonNoMoreAttempts = tagger.ReasonNoMoreAttempts
	ReasonImagePushed    = tagger.ReasonImagePushed

	AnnotationImportRunner  = tagger.AnnotationImportRunner
	AnnotationImportRenewed = tagger.AnnotationImportRenewed

	DefaultImportInterval = tagger.DefaultImportInterval

	ConditionChecked    = tagger.ConditionChecked
	ReasonChecking      = tagger.ReasonChecking
	ReasonUnchanged     = tagger.ReasonUnchanged
	ReasonImportStarted = tagger.ReasonImportStarted
	ReasonCheckFailed   = tagger.ReasonCheckFailed
	ReasonImportFailed  = tagger.ReasonImportFailed

	LabelImportTrigger            = tagger.LabelImportTrigger
	AnnotationImportTriggerDetail = tagger.AnnotationImportTriggerDetail
	TriggerScheduled              = tagger.TriggerScheduled
	TriggerWebhook                = tagger.TriggerWebhook
)
