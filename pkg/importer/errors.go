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

package importer

import (
	"encoding/base64"
	"errors"
	"net/http"
	"strings"

	"github.com/docker/distribution/registry/api/errcode"
	"go.podman.io/image/v5/docker"
)

// isAuthError reports whether err means the registry rejected the
// credentials (or their absence), so that the next credential is worth a try.
// containers/image reports this in several shapes depending on where the
// 401/403 came from (token server, HEAD without body, JSON error body).
func isAuthError(err error) bool {
	if err == nil {
		return false
	}
	var unauthorized docker.ErrUnauthorizedForCredentials
	if errors.As(err, &unauthorized) {
		return true
	}
	var status docker.UnexpectedHTTPStatusError
	if errors.As(err, &status) && (status.StatusCode == http.StatusUnauthorized || status.StatusCode == http.StatusForbidden) {
		return true
	}
	var ec errcode.Error
	if errors.As(err, &ec) {
		switch ec.Code {
		case errcode.ErrorCodeUnauthorized, errcode.ErrorCodeDenied:
			return true
		}
		if s := ec.Code.Descriptor().HTTPStatusCode; s == http.StatusUnauthorized || s == http.StatusForbidden {
			return true
		}
	}
	var code errcode.ErrorCode
	if errors.As(err, &code) && (code == errcode.ErrorCodeUnauthorized || code == errcode.ErrorCodeDenied) {
		return true
	}
	// Registries that answer a HEAD with a bare 403 end up here.
	return strings.Contains(err.Error(), "StatusCode: 403") || strings.Contains(err.Error(), "StatusCode: 401")
}

// redactedError hides secrets that might have been echoed into an error's
// text (some registries and proxies repeat the request, basic-auth header
// included). Unwrap keeps errors.Is/As working for classification.
type redactedError struct {
	msg string
	err error
}

func (e *redactedError) Error() string { return e.msg }
func (e *redactedError) Unwrap() error { return e.err }

// minSecretLen is the shortest secret redact looks for: replacing every "p"
// of a message would destroy it, and a secret that short is no secret.
const minSecretLen = 4

// redact returns err with every secret replaced by "<redacted>".
func redact(err error, secrets ...string) error {
	if err == nil {
		return nil
	}
	msg := err.Error()
	changed := false
	for _, s := range secrets {
		if len(s) >= minSecretLen && strings.Contains(msg, s) {
			msg = strings.ReplaceAll(msg, s, "<redacted>")
			changed = true
		}
	}
	if !changed {
		return err
	}
	return &redactedError{msg: msg, err: err}
}

// secrets lists the secret parts of credentials for redact.
func secrets(creds ...*Credential) []string {
	var out []string
	for _, c := range creds {
		if c == nil {
			continue
		}
		out = append(out, c.Password, c.Token)
		if c.Password != "" {
			// The form a basic-auth header carries.
			out = append(out, base64.StdEncoding.EncodeToString([]byte(c.Username+":"+c.Password)))
		}
	}
	return out
}
