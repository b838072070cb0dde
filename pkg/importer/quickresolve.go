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
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"encoding/hex"
	"encoding/json"
	"io"
	"net/http"
	"net/url"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/opencontainers/go-digest"
	"go.podman.io/image/v5/docker/reference"
	"go.podman.io/image/v5/manifest"
)

// The quick resolve.
//
// containers/image opens a new client for every resolve: it pings the
// registry (https first, then http for an insecure one), asks the token
// server for a bearer token, and only then sends the manifest HEAD. Tagger
// remembers the ping (scheme and challenges) per registry and the bearer
// tokens per (token realm, service, scope, credential) for as long as they
// live, so that a resolve is usually the one HEAD.
//
// The cache holds authentication state only. Every connection is still
// opened through the import's egress session, so the policy checks every
// address as before; nothing is reused across imports but what the
// registry said. Tokens are keyed by credential (an HMAC of it with a key
// of this process): one credential's token never serves another's
// request, nor anonymous access a credential's.
//
// Anything but a clean answer (a challenge other than basic or bearer, a
// failed token request, a HEAD that is not 200 with a digest) ends the
// quick resolve without a verdict: the ordinary containers/image resolve
// then runs as before and gives the error its usual shape. A 401 also
// forgets the token and the ping.

const (
	// pingLifetime is how long a registry's ping answer is trusted.
	pingLifetime = 10 * time.Minute
	// minTokenLifetime is the lifetime of a token whose answer gives none
	// (or less), as the distribution token specification says.
	minTokenLifetime = 60 * time.Second
	// tokenMargin is taken off a token's lifetime, so that it is not used
	// while it expires.
	tokenMargin = 5 * time.Second
	// maxAuthEntries bounds each of the ping and token caches.
	maxAuthEntries = 4096
	// maxTokenBody bounds a token server's answer, as containers/image does.
	maxTokenBody = 1 << 20
)

// authCache remembers registry pings and bearer tokens.
type authCache struct {
	now func() time.Time

	mu     sync.Mutex
	pings  map[pingKey]pingEntry
	tokens map[tokenKey]tokenEntry
}

type pingKey struct {
	host     string
	insecure bool
}

type pingEntry struct {
	scheme     string
	challenges []challenge
	expires    time.Time
}

type challenge struct {
	scheme string // lower case
	params map[string]string
}

type tokenKey struct {
	realm, service, scope, cred string
}

type tokenEntry struct {
	token   string
	expires time.Time
}

var (
	processKeyOnce sync.Once
	processKey     []byte
)

func credentialHMACKey() []byte {
	processKeyOnce.Do(func() {
		processKey = make([]byte, 32)
		if _, err := rand.Read(processKey); err != nil {
			panic(err)
		}
	})
	return processKey
}

// credentialKey identifies cred (nil: anonymous) without holding it.
func credentialKey(cred *Credential) string {
	if cred == nil {
		return "anonymous"
	}
	m := hmac.New(sha256.New, credentialHMACKey())
	for _, s := range []string{cred.Username, cred.Password, cred.Token} {
		m.Write([]byte(s))
		m.Write([]byte{0})
	}
	return hex.EncodeToString(m.Sum(nil))
}

func newAuthCache() *authCache {
	return &authCache{now: time.Now, pings: map[pingKey]pingEntry{}, tokens: map[tokenKey]tokenEntry{}}
}

func (a *authCache) ping(k pingKey) (pingEntry, bool) {
	a.mu.Lock()
	defer a.mu.Unlock()
	e, ok := a.pings[k]
	if ok && a.now().After(e.expires) {
		delete(a.pings, k)
		ok = false
	}
	return e, ok
}

func (a *authCache) setPing(k pingKey, e pingEntry) {
	a.mu.Lock()
	defer a.mu.Unlock()
	e.expires = a.now().Add(pingLifetime)
	if len(a.pings) >= maxAuthEntries {
		for old, v := range a.pings {
			if a.now().After(v.expires) || len(a.pings) >= maxAuthEntries {
				delete(a.pings, old)
			}
		}
	}
	a.pings[k] = e
}

func (a *authCache) forget(k pingKey, tk *tokenKey) {
	a.mu.Lock()
	defer a.mu.Unlock()
	delete(a.pings, k)
	if tk != nil {
		delete(a.tokens, *tk)
	}
}

func (a *authCache) token(k tokenKey) (string, bool) {
	a.mu.Lock()
	defer a.mu.Unlock()
	e, ok := a.tokens[k]
	if ok && !a.now().Before(e.expires) {
		delete(a.tokens, k)
		return "", false
	}
	return e.token, ok
}

func (a *authCache) setToken(k tokenKey, token string, expires time.Time) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if !a.now().Before(expires) {
		return
	}
	if len(a.tokens) >= maxAuthEntries {
		for old, v := range a.tokens {
			if !a.now().Before(v.expires) || len(a.tokens) >= maxAuthEntries {
				delete(a.tokens, old)
			}
		}
	}
	a.tokens[k] = tokenEntry{token: token, expires: expires}
}

// quickClient is one import's HTTP client for quick resolves: every
// connection through the import's egress session.
type quickClient struct {
	client *http.Client
	tr     *http.Transport
}

func (i *Importer) newQuickClient(s *session, insecure bool, host string) *quickClient {
	if i.opts.CertDir != "" {
		// Client certificates (certs.d "*.cert") are containers/image's
		// business; a private CA is not.
		if certs, _ := filepath.Glob(filepath.Join(i.opts.CertDir, host, "*.cert")); len(certs) > 0 {
			return nil
		}
	}
	tlsConfig := &tls.Config{MinVersion: tls.VersionTLS12, InsecureSkipVerify: insecure} //nolint:gosec // the import asks for it
	if pool, err := i.certPool(host); err != nil {
		return nil
	} else if pool != nil {
		tlsConfig.RootCAs = pool
	}
	tr := &http.Transport{
		Proxy:                 func(r *http.Request) (*url.URL, error) { return s.proxy(r.URL) },
		TLSClientConfig:       tlsConfig,
		TLSHandshakeTimeout:   10 * time.Second,
		ResponseHeaderTimeout: 30 * time.Second,
		IdleConnTimeout:       10 * time.Second,
		ForceAttemptHTTP2:     true,
	}
	return &quickClient{client: &http.Client{Transport: tr, Timeout: time.Minute}, tr: tr}
}

func (q *quickClient) close() {
	if q != nil {
		q.tr.CloseIdleConnections()
	}
}

func (i *Importer) request(ctx context.Context, method, u string) (*http.Request, error) {
	req, err := http.NewRequestWithContext(ctx, method, u, nil)
	if err != nil {
		return nil, err
	}
	if i.opts.UserAgent != "" {
		req.Header.Set("User-Agent", i.opts.UserAgent)
	}
	return req, nil
}

// registryHost is the host:port a reference's registry is served on.
func registryHost(named reference.Named) string {
	host := reference.Domain(named)
	if host == "docker.io" {
		return "registry-1.docker.io"
	}
	return host
}

// quickVerdict is how a quick resolve ended.
type quickVerdict int

const (
	// quickUndecided: the ordinary resolve must run.
	quickUndecided quickVerdict = iota
	// quickResolved: the digest is known.
	quickResolved
	// quickAnswered: the registry answered the HEAD, not with a usable
	// digest; a GET of the manifest brings its explanation.
	quickAnswered
	// quickMismatch: the registry answered another digest than the one
	// the reference pins.
	quickMismatch
)

// quickResolve returns the digest named resolves to with cred (nil:
// anonymous), or why it does not know it.
func (i *Importer) quickResolve(ctx context.Context, q *quickClient, insecure bool, cred *Credential, named reference.Named) (digest.Digest, quickVerdict) {
	if q == nil || i.auth == nil {
		return "", quickUndecided
	}
	host := registryHost(named)
	pk := pingKey{host: strings.ToLower(host), insecure: insecure}
	p, ok := i.auth.ping(pk)
	if !ok {
		if p, ok = i.pingRegistry(ctx, q, host, insecure); !ok {
			return "", quickUndecided
		}
		i.auth.setPing(pk, p)
	}

	tagOrDigest := ""
	canonical, pinned := named.(reference.Canonical)
	if pinned {
		tagOrDigest = canonical.Digest().String()
	} else if tagged, ok := named.(reference.Tagged); ok {
		tagOrDigest = tagged.Tag()
	} else {
		tagOrDigest = "latest"
	}
	path := reference.Path(named)
	req, err := i.request(ctx, http.MethodHead, p.scheme+"://"+host+"/v2/"+path+"/manifests/"+tagOrDigest)
	if err != nil {
		return "", quickUndecided
	}
	req.Header.Set("Accept", strings.Join(manifest.DefaultRequestedManifestMIMETypes, ", "))

	var tk *tokenKey
	switch {
	case len(p.challenges) == 0:
		// An open registry: nothing to send, as containers/image.
	case cred != nil && cred.Token != "":
		if p.challenges[0].scheme != "bearer" {
			return "", quickUndecided
		}
		req.Header.Set("Authorization", "Bearer "+cred.Token)
	case p.challenges[0].scheme == "basic":
		if cred == nil {
			return "", quickUndecided // containers/image would send an empty basic header
		}
		req.SetBasicAuth(cred.Username, cred.Password)
	case p.challenges[0].scheme == "bearer":
		c := p.challenges[0]
		realm := c.params["realm"]
		if realm == "" {
			return "", quickUndecided
		}
		k := tokenKey{realm: realm, service: c.params["service"], scope: "repository:" + path + ":pull", cred: credentialKey(cred)}
		tk = &k
		token, ok := i.auth.token(k)
		if !ok {
			var expires time.Time
			if token, expires, ok = i.fetchToken(ctx, q, k, cred); !ok {
				return "", quickUndecided
			}
			i.auth.setToken(k, token, expires)
		}
		req.Header.Set("Authorization", "Bearer "+token)
	default:
		return "", quickUndecided
	}
	resp, err := q.client.Do(req)
	if err != nil {
		// The registry may have moved (http to https, another port):
		// ask it again next time.
		i.auth.forget(pk, nil)
		return "", quickUndecided
	}
	_ = resp.Body.Close()
	switch resp.StatusCode {
	case http.StatusOK:
	case http.StatusUnauthorized, http.StatusForbidden:
		i.auth.forget(pk, tk)
		return "", quickAnswered
	case http.StatusTooManyRequests:
		// containers/image waits and retries as the registry asks.
		return "", quickUndecided
	default:
		return "", quickAnswered
	}
	d, err := digest.Parse(resp.Header.Get("Docker-Content-Digest"))
	if err != nil {
		return "", quickAnswered
	}
	if pinned && d != canonical.Digest() {
		return d, quickMismatch
	}
	return d, quickResolved
}

// pingRegistry does what containers/image's ping does: GET /v2/ on https,
// then on http for an insecure registry; 200 or 401 are answers.
func (i *Importer) pingRegistry(ctx context.Context, q *quickClient, host string, insecure bool) (pingEntry, bool) {
	schemes := []string{"https"}
	if insecure {
		schemes = append(schemes, "http")
	}
	for _, scheme := range schemes {
		req, err := i.request(ctx, http.MethodGet, scheme+"://"+host+"/v2/")
		if err != nil {
			return pingEntry{}, false
		}
		resp, err := q.client.Do(req)
		if err != nil {
			if ctx.Err() != nil {
				return pingEntry{}, false
			}
			continue
		}
		_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 64<<10))
		_ = resp.Body.Close()
		if resp.StatusCode != http.StatusOK && resp.StatusCode != http.StatusUnauthorized {
			return pingEntry{}, false
		}
		e := pingEntry{scheme: scheme}
		for _, h := range resp.Header.Values("WWW-Authenticate") {
			if c, ok := parseChallenge(h); ok {
				e.challenges = append(e.challenges, c)
			}
		}
		return e, true
	}
	return pingEntry{}, false
}

// fetchToken asks the token server for a pull token, as containers/image
// does (GET realm?account=&service=&scope=, basic auth with the
// credential), and returns it with the moment it stops being used.
func (i *Importer) fetchToken(ctx context.Context, q *quickClient, k tokenKey, cred *Credential) (string, time.Time, bool) {
	u, err := url.Parse(k.realm)
	if err != nil || (u.Scheme != "https" && u.Scheme != "http") {
		return "", time.Time{}, false
	}
	params := u.Query()
	if cred != nil && cred.Username != "" {
		params.Add("account", cred.Username)
	}
	if k.service != "" {
		params.Add("service", k.service)
	}
	params.Add("scope", k.scope)
	u.RawQuery = params.Encode()
	req, err := i.request(ctx, http.MethodGet, u.String())
	if err != nil {
		return "", time.Time{}, false
	}
	if cred != nil && cred.Username != "" && cred.Password != "" {
		req.SetBasicAuth(cred.Username, cred.Password)
	}
	start := i.auth.now()
	resp, err := q.client.Do(req)
	if err != nil {
		return "", time.Time{}, false
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return "", time.Time{}, false
	}
	var t struct {
		Token       string    `json:"token"`
		AccessToken string    `json:"access_token"`
		ExpiresIn   int       `json:"expires_in"`
		IssuedAt    time.Time `json:"issued_at"`
	}
	if err := json.NewDecoder(io.LimitReader(resp.Body, maxTokenBody)).Decode(&t); err != nil {
		return "", time.Time{}, false
	}
	token := t.Token
	if token == "" {
		token = t.AccessToken
	}
	if token == "" {
		return "", time.Time{}, false
	}
	lifetime := time.Duration(t.ExpiresIn) * time.Second
	if lifetime < minTokenLifetime {
		lifetime = minTokenLifetime
	}
	// Counted from when it was asked for: a token server's clock that runs
	// behind ours must not make a token live longer here than there.
	issued := start
	if !t.IssuedAt.IsZero() && t.IssuedAt.Before(issued) {
		issued = t.IssuedAt
	}
	return token, issued.Add(lifetime - tokenMargin), true
}

// parseChallenge parses one WWW-Authenticate value: a scheme, then
// comma-separated key=value or key="quoted value" parameters.
func parseChallenge(h string) (challenge, bool) {
	h = strings.TrimSpace(h)
	sp := strings.IndexAny(h, " \t")
	scheme := h
	rest := ""
	if sp >= 0 {
		scheme, rest = h[:sp], h[sp+1:]
	}
	if scheme == "" {
		return challenge{}, false
	}
	c := challenge{scheme: strings.ToLower(scheme), params: map[string]string{}}
	for {
		rest = strings.TrimLeft(rest, " \t,")
		if rest == "" {
			return c, true
		}
		eq := strings.IndexByte(rest, '=')
		if eq <= 0 {
			return challenge{}, false
		}
		key := strings.ToLower(strings.TrimSpace(rest[:eq]))
		rest = strings.TrimLeft(rest[eq+1:], " \t")
		var val string
		if strings.HasPrefix(rest, `"`) {
			var b strings.Builder
			n := 1
			closed := false
			for ; n < len(rest); n++ {
				ch := rest[n]
				if ch == '\\' && n+1 < len(rest) {
					n++
					b.WriteByte(rest[n])
					continue
				}
				if ch == '"' {
					closed = true
					n++
					break
				}
				b.WriteByte(ch)
			}
			if !closed {
				return challenge{}, false
			}
			val, rest = b.String(), rest[n:]
		} else {
			end := strings.IndexByte(rest, ',')
			if end < 0 {
				end = len(rest)
			}
			val, rest = strings.TrimSpace(rest[:end]), rest[end:]
		}
		c.params[key] = val
	}
}
