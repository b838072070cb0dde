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
package sources

import (
	"context"

	"tagger.dev/tagger/pkg/importer"
	"tagger.dev/tagger/pkg/importer/credentials"
)

// Local serves local mode: credentials come from an auth file, the mirror
// is the embedded registry unless another is configured.
type Local struct {
	// AuthFile is a docker/containers auth file; empty means none.
	AuthFile string
	// MirrorConfig is the mirror; a zero Address means none.
	MirrorConfig MirrorConfig
}

// Credentials implements imageimport.Sources. The file is read on every
// import so that a "docker login" into it takes effect at once.
func (l *Local) Credentials(namespace, from string) ([]importer.Credential, error) {
	if l.AuthFile == "" {
		return nil, nil
	}
	return credentials.AuthFile(l.AuthFile)(from), nil
}

// Mirror implements imageimport.Sources.
func (l *Local) Mirror(ctx context.Context, namespace, name string) (*importer.Mirror, error) {
	if l.MirrorConfig.Address == "" {
		return nil, errNoLocalMirror{}
	}
	return l.MirrorConfig.Mirror(namespace, name), nil
}

// errNoLocalMirror is ErrNoMirror in local mode, which has no Secrets to
// create: its mirror is the embedded registry, turned off.
type errNoLocalMirror struct{}

func (errNoLocalMirror) Error() string {
	return "no mirror registry in local mode: the embedded registry is off (--local-registry-address is empty); restart with --local-registry-address=127.0.0.1:5000, or import without mirror"
}

// Is makes errors.Is(err, ErrNoMirror) hold.
func (errNoLocalMirror) Is(target error) bool { return target == ErrNoMirror }
