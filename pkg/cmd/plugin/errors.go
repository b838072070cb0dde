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
	"context"
	"strings"

	"tagger.dev/tagger/pkg/redact"
)

// Interrupted is what ErrorMessage says for a command stopped by a signal.
const Interrupted = "interrupted"

// ErrorMessage is what "kubectl image" prints for err, which ended the
// command run with ctx (canceled by Ctrl-C):
//
//   - Interrupted when ctx ended: the error is then only the consequence
//     (a request cut short, with the relay's upload URL in it);
//   - otherwise err's text as pkg/redact shows server-side errors: no URL
//     query strings (the relay's upload URLs carry the registry's signed
//     _state), no credentials;
//   - without the doubled colon containers/image writes after an archive
//     reference without an image name ("oci-archive:app.tar:: ...").
func ErrorMessage(ctx context.Context, err error) string {
	if ctx.Err() != nil {
		return Interrupted
	}
	return strings.ReplaceAll(redact.Error(err), ":: ", ": ")
}
