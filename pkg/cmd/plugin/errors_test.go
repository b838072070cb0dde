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
	"errors"
	"strings"
	"testing"
)

func TestErrorMessage(t *testing.T) {
	upload := errors.New(`pushing docker-archive:big.tar: writing blob: Patch "http://127.0.0.1:37877/v2/default/big/blobs/uploads/01a2?_state=rERTZ5-boEtzSuW5sumwOXuz3Hoc3jCMufVpX3bwIY97Ik5hbWUiOiJkZWZhdWx0L2JpZzE5NTQ1In0%3D": EOF`)
	for _, tc := range []struct {
		name     string
		err      error
		canceled bool
		want     string
		not      []string
	}{{
		name: "archive without image name",
		err:  errors.New(`pushing oci-archive:app.tar:: initializing source oci-archive:app.tar:: creating temp directory: archive file not found: "/tmp/app.tar"`),
		want: `pushing oci-archive:app.tar: initializing source oci-archive:app.tar: creating temp directory: archive file not found: "/tmp/app.tar"`,
	}, {
		name: "relay upload URL",
		err:  upload,
		want: `pushing docker-archive:big.tar: writing blob: Patch "http://127.0.0.1:37877/v2/default/big/blobs/uploads/01a2?<redacted>": EOF`,
		not:  []string{"_state", "rERTZ5"},
	}, {
		name:     "interrupted",
		err:      upload,
		canceled: true,
		want:     Interrupted,
	}, {
		name: "IPv6 registry keeps its colons",
		err:  errors.New(`Image "app": spec.from "[::1]:5000/app" refused`),
		want: `Image "app": spec.from "[::1]:5000/app" refused`,
	}} {
		t.Run(tc.name, func(t *testing.T) {
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			if tc.canceled {
				cancel()
			}
			got := ErrorMessage(ctx, tc.err)
			if got != tc.want {
				t.Errorf("got  %s\nwant %s", got, tc.want)
			}
			for _, s := range tc.not {
				if strings.Contains(got, s) {
					t.Errorf("%q left in %s", s, got)
				}
			}
		})
	}
}
