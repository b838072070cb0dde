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

// Package redact is the one place where text that the server writes into
// API objects, events and answers (attempt reasons, condition messages, error
// answers) is made safe to show: secrets, credentials in URLs and signed URL
// parameters are removed, control characters go, and the result is bounded
// to tagger.MaxReasonLength bytes.
package redact

import (
	"encoding/base64"
	"net/url"
	"regexp"
	"sort"
	"strings"
	"unicode"
	"unicode/utf8"

	"tagger.dev/tagger/pkg/apis/tagger"
)

// Marker replaces everything that is removed.
const Marker = "<redacted>"

// MinSecretLength is the shortest secret Message looks for: replacing every
// "p" of a message would destroy it, and a secret that short is no secret.
const MinSecretLength = 4

// ellipsis joins the head and the tail of a message that was cut.
const ellipsis = " … "

// Error is Message(err.Error(), secrets...); "" for a nil err.
func Error(err error, secrets ...string) string {
	if err == nil {
		return ""
	}
	return Message(err.Error(), secrets...)
}

// Message returns msg fit to be stored or shown:
//
//   - every secret of at least MinSecretLength bytes is replaced by Marker,
//     also in its base64 (basic-auth header) and URL-escaped forms; pass
//     "user:password" to catch a basic-auth header of that pair;
//   - userinfo ("user:pass@", "user@") is removed from URLs and from
//     host names ("user:pass@registry.example.com/ns");
//   - the query string of every URL is replaced by "?<redacted>", and in
//     other text the values of parameters that look signed or secret
//     (_state, X-Amz-*, Signature, sig, token, access_token, Expires, and
//     any name containing "sign", "token", "state", "secret", "key",
//     "pass", "auth" or "credential") are replaced by Marker;
//   - "Basic ..." and "Bearer ..." credentials and JSON or key=value
//     fields named like secrets ("token", "password", ...) lose their value;
//   - control and other non-printable characters are removed, whitespace
//     runs become one space, invalid UTF-8 becomes U+FFFD;
//   - the result is at most tagger.MaxReasonLength bytes: a longer text
//     keeps its head and its tail (where Go error chains put the final
//     cause) joined by " … ", cut on UTF-8 boundaries.
func Message(msg string, secrets ...string) string {
	// Secrets go first, as a placeholder the URL rules see as part of a
	// URL; printable has removed any placeholder the input carried.
	msg = removeSecrets(printable(msg), secrets)
	msg = urlRE.ReplaceAllStringFunc(msg, cleanURL)
	msg = hostUserinfoRE.ReplaceAllString(msg, "${1}${2}")
	msg = queryParamRE.ReplaceAllStringFunc(msg, cleanParam)
	msg = authSchemeRE.ReplaceAllStringFunc(msg, cleanAuth)
	msg = jsonSecretRE.ReplaceAllString(msg, "${1}${2}"+Marker+"${2}")
	msg = kvSecretRE.ReplaceAllString(msg, "${1}="+Marker)
	msg = strings.ReplaceAll(msg, placeholder, Marker)
	return Bound(msg, tagger.MaxReasonLength)
}

// placeholder stands for a removed secret until the end of Message. It is
// a private-use character, which printable removes from the input.
const placeholder = "\uE000"

// removeSecrets replaces each secret, and the forms it takes in headers and
// URLs, by placeholder. Longer forms go first so that a secret that contains
// another is removed whole.
func removeSecrets(msg string, secrets []string) string {
	var forms []string
	for _, s := range secrets {
		if len(s) < MinSecretLength {
			continue
		}
		forms = append(forms, s, printable(s),
			base64.StdEncoding.EncodeToString([]byte(s)),
			base64.RawStdEncoding.EncodeToString([]byte(s)),
			base64.URLEncoding.EncodeToString([]byte(s)),
			url.QueryEscape(s),
			url.PathEscape(s),
		)
	}
	sort.SliceStable(forms, func(i, j int) bool { return len(forms[i]) > len(forms[j]) })
	for _, f := range forms {
		if len(f) >= MinSecretLength && strings.Contains(msg, f) {
			msg = strings.ReplaceAll(msg, f, placeholder)
		}
	}
	return msg
}

// printable removes control and other non-printable characters, turns
// invalid UTF-8 into U+FFFD and collapses whitespace.
func printable(msg string) string {
	var b strings.Builder
	b.Grow(len(msg))
	space := false
	for _, r := range strings.ToValidUTF8(msg, "\uFFFD") {
		switch {
		case unicode.IsSpace(r):
			space = true
			continue
		case !unicode.IsPrint(r):
			continue
		}
		if space && b.Len() > 0 {
			b.WriteByte(' ')
		}
		space = false
		b.WriteRune(r)
	}
	return b.String()
}

var (
	// urlRE matches an absolute URL up to a space, a quote or an angle
	// bracket (Go quotes URLs in errors: Get "https://...": ...).
	urlRE = regexp.MustCompile(`\b[A-Za-z][A-Za-z0-9+.\-]*://[^\s"'<>` + "`" + `]+`)
	// hostUserinfoRE matches "user[:pass]@host" without a scheme, the host
	// being a dotted name, an IPv4 address, a bracketed IPv6 address or
	// localhost. Image references ("app@sha256:...") have no dotted host
	// after the "@" and are left alone.
	hostUserinfoRE = regexp.MustCompile(`(^|[\s"'(\[=,;])[^\s"'()\[\]=,;/]+@((?:[A-Za-z0-9\-]+\.)+[A-Za-z0-9\-]+|\[[0-9A-Fa-f:.]+\]|localhost)\b`)
	// queryParamRE matches one query parameter outside absolute URLs, as
	// in a relative Location "/v2/x/blobs/uploads/u?_state=...".
	queryParamRE = regexp.MustCompile(`([?&;])([A-Za-z0-9_.\-]+)=([^&\s"'#<>;]*)`)
	// authSchemeRE matches the credential of an Authorization header.
	authSchemeRE = regexp.MustCompile(`(?i)\b(basic|bearer)\s+([A-Za-z0-9+/=._~\-]{8,})`)
	// jsonSecretRE matches a JSON string field named like a secret.
	// Inside a quoted Go string its quotes are escaped (\"token\":\"...\").
	jsonSecretRE = regexp.MustCompile(`(?i)(\\?"(?:[a-z_\-]*token|password|passwd|secret|client_secret|api_?key|auth)\\?"\s*:\s*)(\\?")[^"\\]*\\?"`)
	// kvSecretRE matches key=value pairs named like a secret.
	kvSecretRE = regexp.MustCompile(`(?i)\b([a-z_\-]*(?:token|password|passwd|secret|api_?key))=[^\s&"',;]+`)
)

// cleanURL removes the userinfo and the query (and fragment) of one URL.
func cleanURL(u string) string {
	schemeEnd := strings.Index(u, "://") + len("://")
	rest := u[schemeEnd:]
	authEnd := strings.IndexAny(rest, "/?#")
	if authEnd < 0 {
		authEnd = len(rest)
	}
	if at := strings.LastIndexByte(rest[:authEnd], '@'); at >= 0 {
		rest = rest[at+1:]
	}
	if q := strings.IndexAny(rest, "?#"); q >= 0 {
		// A trailing punctuation mark belongs to the sentence.
		tail := ""
		if last := rest[len(rest)-1]; strings.IndexByte(".,;:)]}", last) >= 0 && q < len(rest)-1 {
			tail = string(last)
		}
		rest = rest[:q] + "?" + Marker + tail
	}
	return u[:schemeEnd] + rest
}

// cleanAuth redacts the credential after "Basic" or "Bearer" when it looks
// like one (a digit, base64 or JWT punctuation, or an upper-case letter
// after the first), not a word
// ("Basic authentication required").
func cleanAuth(m string) string {
	sub := authSchemeRE.FindStringSubmatch(m)
	cred := sub[2]
	lower, upper := false, false
	for i, r := range cred {
		switch {
		case r >= '0' && r <= '9', strings.ContainsRune("+/=._~-", r):
			return sub[1] + " " + Marker
		case r >= 'a' && r <= 'z':
			lower = true
		case r >= 'A' && r <= 'Z' && i > 0:
			upper = true
		}
	}
	if lower && upper {
		return sub[1] + " " + Marker
	}
	return m
}

// cleanParam redacts the value of a query parameter named like a secret
// or a signature.
func cleanParam(p string) string {
	m := queryParamRE.FindStringSubmatch(p)
	if m == nil || m[3] == "" || m[3] == Marker || !sensitiveParam(m[2]) {
		return p
	}
	return m[1] + m[2] + "=" + Marker
}

func sensitiveParam(name string) bool {
	n := strings.ToLower(name)
	switch n {
	case "sig", "expires", "key", "code", "session", "policy":
		return true
	}
	if strings.HasPrefix(n, "x-amz-") || strings.HasPrefix(n, "x-goog-") || strings.HasPrefix(n, "_") {
		return true
	}
	for _, s := range []string{"sign", "token", "state", "secret", "key", "pass", "auth", "credential"} {
		if strings.Contains(n, s) {
			return true
		}
	}
	return false
}

// Bound returns s if it has at most max bytes, else its head and tail
// joined by " … " in exactly max bytes or fewer, cut on UTF-8 boundaries.
// The tail gets the larger half: Go error chains end with the cause.
func Bound(s string, max int) string {
	if len(s) <= max {
		return s
	}
	if max < len(ellipsis)+2 {
		// No room for both ends: keep the head.
		cut := max
		for cut > 0 && !utf8.RuneStart(s[cut]) {
			cut--
		}
		return s[:cut]
	}
	room := max - len(ellipsis)
	headLen := room * 2 / 5
	tailLen := room - headLen
	head := s[:headLen]
	for headLen > 0 && !utf8.RuneStart(s[headLen]) {
		headLen--
		head = s[:headLen]
	}
	start := len(s) - tailLen
	for start < len(s) && !utf8.RuneStart(s[start]) {
		start++
	}
	return strings.TrimRight(head, " ") + ellipsis + strings.TrimLeft(s[start:], " ")
}
