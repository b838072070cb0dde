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
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"reflect"
	"regexp"
	"strings"
	"syscall"
	"time"

	"github.com/docker/distribution/registry/api/errcode"
	v2 "github.com/docker/distribution/registry/api/v2"
	"go.podman.io/image/v5/docker"
	"go.podman.io/image/v5/docker/reference"

	"tagger.dev/tagger/pkg/redact"
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
	if walk(err, func(e error) bool {
		s, ok := responseStatus(e)
		return ok && (s == http.StatusUnauthorized || s == http.StatusForbidden)
	}) {
		return true
	}
	// Registries that answer a HEAD with a bare 403 end up here.
	return strings.Contains(err.Error(), "StatusCode: 403") || strings.Contains(err.Error(), "StatusCode: 401")
}

// importError is what Import returns: the step that failed, the cause, and
// the secrets of the request, which are kept out of its text and Reason.
type importError struct {
	op      string
	err     error
	secrets []string
}

func (e *importError) Error() string {
	return redact.Message(e.op+": "+stripBodies(e.err.Error()), e.secrets...)
}

func (e *importError) Unwrap() error { return e.err }

// permanentError marks an error that retrying cannot cure.
type permanentError struct{ err error }

func (e *permanentError) Error() string { return e.err.Error() }
func (e *permanentError) Unwrap() error { return e.err }

// NewPermanent marks err as permanent: Permanent(NewPermanent(err)) is
// true. Its text is err's, and errors.Is/As still see err. nil stays nil.
func NewPermanent(err error) error {
	if err == nil {
		return nil
	}
	return &permanentError{err: err}
}

// retryAfterError carries a delay the server asked for.
type retryAfterError struct {
	err   error
	delay time.Duration
}

func (e *retryAfterError) Error() string             { return e.err.Error() }
func (e *retryAfterError) Unwrap() error             { return e.err }
func (e *retryAfterError) RetryAfter() time.Duration { return e.delay }

// WithRetryAfter returns err carrying a server's Retry-After delay, for
// RetryAfter. nil stays nil.
func WithRetryAfter(err error, delay time.Duration) error {
	if err == nil {
		return nil
	}
	return &retryAfterError{err: err, delay: delay}
}

// RetryAfter returns the delay a server asked for before the next attempt
// (its Retry-After) when err carries one, else 0. Any error in err's chain
// with a "RetryAfter() time.Duration" method carries one.
//
// containers/image itself honours Retry-After: a request answered 429 is
// repeated up to five times, waiting Retry-After (at most 60 s, else 2 s
// doubling) in between, within the attempt's context; it then returns an
// error without the header. So a 429 that reaches Import's caller means the
// registry is still limiting after that, RetryAfter is 0 for it, and the
// caller's own backoff applies. The attempt's deadline also bounds those
// waits: an attempt that runs out of time while waiting fails with the
// context's error, which is transient.
func RetryAfter(err error) time.Duration {
	var ra interface{ RetryAfter() time.Duration }
	if errors.As(err, &ra) {
		if d := ra.RetryAfter(); d > 0 {
			return d
		}
	}
	return 0
}

// Permanent reports whether retrying cannot help err:
//
//   - manifest unknown, name unknown and other 4xx answers (except 408,
//     425 and 429), unauthorized and denied (also once every credential was
//     tried), name invalid;
//   - an invalid reference, a mirror repository name longer than
//     MaxRepositoryLength;
//   - a refusal by the Policy (*PolicyError), of the registry or of any
//     connection an import opens;
//   - a DNS answer that the name does not exist;
//   - an untrusted or invalid TLS certificate, plain http where https is
//     required;
//   - a digest mismatch (a registry that rewrote the image);
//   - anything marked with NewPermanent.
//
// Everything else is transient: 5xx, 429, connection reset or refused,
// timeouts, an attempt's context ending, EOF, and errors not listed here.
// The outermost error in err's chain that is one of these decides.
func Permanent(err error) bool {
	permanent := false
	walk(err, func(e error) bool {
		p, decided := classify(e)
		if decided {
			permanent = p
		}
		return decided
	})
	return permanent
}

// walk calls visit on err and every error it wraps, outermost first, until
// visit returns true.
func walk(err error, visit func(error) bool) bool {
	for err != nil {
		if visit(err) {
			return true
		}
		switch u := err.(type) {
		case interface{ Unwrap() error }:
			err = u.Unwrap()
		case interface{ Unwrap() []error }:
			for _, e := range u.Unwrap() {
				if walk(e, visit) {
					return true
				}
			}
			return false
		default:
			return false
		}
	}
	return false
}

// classify says whether e alone (not what it wraps) is a permanent or a
// transient error; decided is false when e does not say.
func classify(e error) (permanent, decided bool) {
	switch t := e.(type) {
	case *permanentError, *PolicyError:
		return true, true
	case *net.DNSError:
		if t.IsNotFound {
			return true, true
		}
		return false, true
	case docker.ErrUnauthorizedForCredentials:
		return true, true
	case docker.UnexpectedHTTPStatusError:
		return statusPermanent(t.StatusCode)
	case errcode.Error:
		return codePermanent(t.Code)
	case *errcode.Error:
		return codePermanent(t.Code)
	case errcode.ErrorCode:
		return codePermanent(t)
	case errcode.Errors:
		if len(t) > 0 {
			// containers/image reports the first one.
			var p, d bool
			walk(t[0], func(e error) bool { p, d = classify(e); return d })
			return p, d
		}
	case x509.UnknownAuthorityError, x509.HostnameError, x509.CertificateInvalidError, *tls.CertificateVerificationError:
		return true, true
	}
	if s, ok := responseStatus(e); ok {
		return statusPermanent(s)
	}
	switch e {
	case context.Canceled, context.DeadlineExceeded, io.EOF, io.ErrUnexpectedEOF, docker.ErrTooManyRequests:
		return false, true
	case reference.ErrReferenceInvalidFormat, reference.ErrTagInvalidFormat, reference.ErrDigestInvalidFormat,
		reference.ErrNameContainsUppercase, reference.ErrNameEmpty, reference.ErrNameTooLong, reference.ErrNameNotCanonical:
		return true, true
	}
	if errno, ok := e.(syscall.Errno); ok {
		switch errno {
		case syscall.ECONNREFUSED, syscall.ECONNRESET, syscall.ECONNABORTED, syscall.ETIMEDOUT, syscall.EPIPE,
			syscall.ENETUNREACH, syscall.EHOSTUNREACH:
			return false, true
		}
	}
	if ne, ok := e.(net.Error); ok && ne.Timeout() {
		return false, true
	}
	if strings.HasSuffix(e.Error(), "server gave HTTP response to HTTPS client") {
		return true, true
	}
	return false, false
}

func statusPermanent(code int) (permanent, decided bool) {
	switch {
	case code == http.StatusRequestTimeout, code == http.StatusTooEarly, code == http.StatusTooManyRequests:
		return false, true
	case code >= 400 && code < 500:
		return true, true
	case code >= 500:
		return false, true
	}
	return false, false
}

func codePermanent(code errcode.ErrorCode) (permanent, decided bool) {
	switch code {
	case errcode.ErrorCodeUnknown, errcode.ErrorCodeTooManyRequests, errcode.ErrorCodeUnavailable,
		v2.ErrorCodeBlobUploadUnknown, v2.ErrorCodeBlobUploadInvalid:
		// An upload session that expired or broke: a new attempt starts
		// a new one.
		return false, true
	}
	return statusPermanent(code.Descriptor().HTTPStatusCode)
}

// responseStatus returns the status of containers/image's unexported error
// for an error answer whose body it could not parse; that error's text
// carries the body, so it must be recognized to be left out.
func responseStatus(err error) (int, bool) {
	v := reflect.ValueOf(err)
	if v.Kind() != reflect.Pointer || v.IsNil() || v.Elem().Kind() != reflect.Struct {
		return 0, false
	}
	t := v.Elem().Type()
	if t.Name() != "unexpectedHTTPResponseError" || t.PkgPath() != "go.podman.io/image/v5/docker" {
		return 0, false
	}
	f := v.Elem().FieldByName("StatusCode")
	if !f.IsValid() || !f.CanInt() {
		return 0, false
	}
	return int(f.Int()), true
}

// Reason describes an import error for a status or an event: the step
// that failed and the cause, without response bodies or secrets, passed
// through redact.Message (so at most tagger.MaxReasonLength bytes).
//
//   - registry errors (errcode): their code and message, the message
//     bounded;
//   - other HTTP errors: the status code and its standard text, never the
//     body nor the server's reason phrase;
//   - policy refusals: the policy's message;
//   - network errors: the operation, the address and the cause.
func Reason(err error) string {
	if err == nil {
		return ""
	}
	var secrets []string
	var ie *importError
	if errors.As(err, &ie) {
		secrets = ie.secrets
	}
	return redact.Message(describe(err), secrets...)
}

// maxRegistryMessage bounds a registry's own message inside a Reason, so a
// long one leaves room for the context.
const maxRegistryMessage = 300

func describe(err error) string {
	if d, ok := describeLeaf(err); ok {
		return d
	}
	switch e := err.(type) {
	case *importError:
		return e.op + ": " + describe(e.err)
	case *permanentError:
		return describe(e.err)
	case *retryAfterError:
		return describe(e.err)
	case interface{ Unwrap() []error }:
		var parts []string
		for _, inner := range e.Unwrap() {
			if inner != nil {
				parts = append(parts, describe(inner))
			}
		}
		if len(parts) > 0 {
			return strings.Join(parts, "; ")
		}
		return stripBodies(err.Error())
	case interface{ Unwrap() error }:
		inner := e.Unwrap()
		if inner == nil {
			return stripBodies(err.Error())
		}
		outer, in := err.Error(), inner.Error()
		switch {
		case strings.HasSuffix(outer, in):
			return stripBodies(outer[:len(outer)-len(in)]) + describe(inner)
		case strings.HasPrefix(outer, in):
			return describe(inner) + stripBodies(outer[len(in):])
		}
		// A wrapper that rewords its cause (containers/image's
		// "StatusCode: 404, <body>" is one): the cause says it without
		// the body.
		return describe(inner)
	}
	return stripBodies(err.Error())
}

// describeLeaf describes the errors Reason knows by type.
func describeLeaf(err error) (string, bool) {
	switch e := err.(type) {
	case *PolicyError:
		return e.Error(), true
	case errcode.Error:
		return describeCode(e.Code, e.Message), true
	case *errcode.Error:
		return describeCode(e.Code, e.Message), true
	case errcode.ErrorCode:
		return describeCode(e, ""), true
	case errcode.Errors:
		var parts []string
		for n, inner := range e {
			if n == 3 {
				parts = append(parts, fmt.Sprintf("and %d more", len(e)-n))
				break
			}
			parts = append(parts, describe(inner))
		}
		return strings.Join(parts, "; "), true
	case docker.UnexpectedHTTPStatusError:
		return describeStatus(e.StatusCode), true
	}
	if s, ok := responseStatus(err); ok {
		return describeStatus(s), true
	}
	return "", false
}

func describeCode(code errcode.ErrorCode, msg string) string {
	name := code.Error() // "manifest unknown"
	msg = strings.TrimSpace(msg)
	if msg == "" {
		msg = code.Message()
	}
	msg = redact.Bound(redact.Message(msg), maxRegistryMessage)
	if strings.EqualFold(msg, name) {
		return msg
	}
	return name + ": " + msg
}

func describeStatus(code int) string {
	if text := http.StatusText(code); text != "" {
		return fmt.Sprintf("registry answered HTTP %d (%s)", code, text)
	}
	return fmt.Sprintf("registry answered HTTP %d", code)
}

var (
	// containers/image quotes up to 50 bytes of a body in these.
	bodyStartRE   = regexp.MustCompile(`, body start "(?:[^"\\]|\\.)*"`)
	statusBodyRE  = regexp.MustCompile(`StatusCode: (\d+), "(?:[^"\\]|\\.)*"`)
	parseBodyRE   = regexp.MustCompile(`error parsing HTTP (\d+) response body: (.*?): "(?:[^"\\]|\\.)*"`)
	socksTargetRE = regexp.MustCompile(`socks connect tcp \S*->(\S+?): `)
)

// stripBodies removes the response bodies containers/image quotes in some
// error texts.
func stripBodies(s string) string {
	s = bodyStartRE.ReplaceAllString(s, "")
	s = statusBodyRE.ReplaceAllString(s, "StatusCode: ${1}")
	s = parseBodyRE.ReplaceAllString(s, "error parsing HTTP ${1} response body: ${2}")
	return s
}
