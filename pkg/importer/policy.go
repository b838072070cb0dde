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
	"fmt"
	"net"
	"net/netip"
	"path"
	"strconv"
	"strings"
	"time"

	"go.podman.io/image/v5/docker/reference"
)

// DefaultDeniedNetworks are refused whatever Policy.Allow says, for the
// registry named in a reference and for every connection an import makes:
// link-local addresses, where cloud metadata services live (169.254.169.254
// on most clouds, fd00:ec2::254 on AWS), also as NAT64 and 6to4 embed them;
// and unspecified addresses (0.0.0.0, ::), which reach the local host and
// so would slip past a deny list of loopback networks.
var DefaultDeniedNetworks = []netip.Prefix{
	netip.MustParsePrefix("169.254.0.0/16"),
	netip.MustParsePrefix("fe80::/10"),
	netip.MustParsePrefix("fd00:ec2::254/128"),
	netip.MustParsePrefix("64:ff9b::a9fe:0/112"),
	netip.MustParsePrefix("2002:a9fe::/32"),
	netip.MustParsePrefix("0.0.0.0/8"),
	netip.MustParsePrefix("::/128"),
}

// PolicyError is a refusal by the Policy: of the registry a reference
// names (at validation, or before an import contacts anything), or of one
// connection an import or mirror copy tried to open (a token realm, a blob
// redirect...). It is permanent: retrying meets the same policy.
type PolicyError struct {
	// Subject is what was refused: "registry quay.io" or
	// "connection to 127.0.0.1:5001".
	Subject string
	// Why says which rule refused it.
	Why string
	// URL is the request that needed the connection, without query, when
	// known.
	URL string
}

func (e *PolicyError) Error() string {
	msg := e.Subject + " is not allowed: " + e.Why
	if e.URL != "" {
		msg += "; needed for " + e.URL
	}
	return msg
}

// Policy restricts the registries images may be imported from. Entries of
// Allow and Deny are host names ("quay.io"), host:port ("registry:5000"),
// wildcards where "*" stands for one DNS label ("*.example.com"), IP
// addresses or CIDRs ("10.0.0.0/8"). A pattern without a port matches any
// port. Host patterns match the registry name as written in the reference;
// IPs and CIDRs also match the addresses the name resolves to.
//
// The zero Policy allows every registry except DefaultDeniedNetworks.
//
// An Importer enforces the Policy on every connection an import opens, not
// only on the registry in the reference: token realms, blob redirects and
// anything else containers/image connects to are checked by the addresses
// they resolve to at connection time. So an Allow list must also name the
// hosts registries send clients to, e.g. for Docker Hub "docker.io",
// "auth.docker.io" and "production.cloudflare.docker.com"; for registries
// that redirect blob downloads to object storage, that storage's hosts.
// An IP:port entry ("127.0.0.1:5000") matches a name that resolves to that
// address as well as the literal address.
type Policy struct {
	// Allow, when not empty, is the only set of registries allowed.
	Allow []string
	// Deny lists registries refused even when they match Allow.
	Deny []string
	// LookupIP resolves a host name; nil means net.DefaultResolver. Tests
	// set it to stay off the network.
	LookupIP func(ctx context.Context, host string) ([]netip.Addr, error)
}

// lookupTimeout bounds the DNS lookup Check does without a context.
const lookupTimeout = 10 * time.Second

// Check returns an error saying why ref may not be imported, or nil. It is
// meant for validation, so it accepts what Import accepts ("nginx" is
// docker.io).
func (p Policy) Check(ref string) error {
	ctx, cancel := context.WithTimeout(context.Background(), lookupTimeout)
	defer cancel()
	return p.CheckContext(ctx, ref)
}

// CheckContext is Check with a context for the DNS lookup.
//
// The check runs before any connection is made, so a DNS answer that changes
// between the check and the connection, or a registry redirecting blob
// downloads elsewhere, is not caught here: Importer checks every connection
// again when it is made. Refusals are *PolicyError.
func (p Policy) CheckContext(ctx context.Context, ref string) error {
	named, err := reference.ParseNormalizedNamed(strings.TrimSpace(ref))
	if err != nil {
		return NewPermanent(fmt.Errorf("invalid image reference %q: %w", ref, err))
	}
	return p.checkHost(ctx, reference.Domain(named))
}

func (p Policy) checkHost(ctx context.Context, hostport string) error {
	host, port := hostport, ""
	if h, pt, err := net.SplitHostPort(hostport); err == nil {
		host, port = h, pt
	}
	host = strings.ToLower(strings.Trim(host, "[]"))

	addrs, err := p.addrs(ctx, host)
	if err != nil {
		// The connection would fail the same way and say so better; only
		// an allow list made purely of networks has to refuse here.
		addrs = nil
	}
	if why := p.refusal([]string{host}, port, addrs, false); why != "" {
		return &PolicyError{Subject: "registry " + hostport, Why: why}
	}
	return nil
}

// checkConn checks one connection: host as the client asked for it, the
// port, and every address host resolved to. With skipAllow, the allow list
// is not consulted (the configured mirror); the deny list and
// DefaultDeniedNetworks always are.
func (p Policy) checkConn(host string, port int, addrs []netip.Addr, skipAllow bool) error {
	host = strings.ToLower(strings.Trim(host, "[]"))
	names := []string{host}
	if host == "registry-1.docker.io" || host == "index.docker.io" {
		// What "docker.io" in a reference, and so in a policy, means.
		names = append(names, "docker.io")
	}
	if why := p.refusal(names, strconv.Itoa(port), addrs, skipAllow); why != "" {
		if _, err := netip.ParseAddr(host); err != nil && !strings.Contains(why, "always-denied") {
			// Which address a name had when it was refused matters: it
			// may differ from what validation saw.
			as := make([]string, len(addrs))
			for n, a := range addrs {
				as[n] = a.String()
			}
			why += fmt.Sprintf(" (%s resolved to %s)", host, strings.Join(as, ", "))
		}
		return &PolicyError{Subject: "connection to " + net.JoinHostPort(host, strconv.Itoa(port)), Why: why}
	}
	return nil
}

// refusal returns why a registry known by names (host names or literal
// addresses, lower case) and port, resolving to addrs, is refused, or "".
func (p Policy) refusal(names []string, port string, addrs []netip.Addr, skipAllow bool) string {
	for _, prefix := range DefaultDeniedNetworks {
		for _, a := range addrs {
			if prefix.Contains(a) {
				return fmt.Sprintf("address %s is in the always-denied network %s (link-local/metadata/unspecified)", a, prefix)
			}
		}
	}
	if entry, ok := matchAny(p.Deny, names, port, addrs, false); ok {
		return fmt.Sprintf("it matches deny-list entry %q", entry)
	}
	if skipAllow || len(p.Allow) == 0 {
		return ""
	}
	if _, ok := matchAny(p.Allow, names, port, addrs, true); ok {
		return ""
	}
	return "it matches no allow-list entry"
}

// addrs returns host's addresses: the literal IP, or what it resolves to.
func (p Policy) addrs(ctx context.Context, host string) ([]netip.Addr, error) {
	if a, err := netip.ParseAddr(host); err == nil {
		return []netip.Addr{a.Unmap()}, nil
	}
	if host == "docker.io" {
		// Images named docker.io are served by registry-1.docker.io.
		host = "registry-1.docker.io"
	}
	var (
		res []netip.Addr
		err error
	)
	if p.LookupIP != nil {
		res, err = p.LookupIP(ctx, host)
	} else {
		res, err = net.DefaultResolver.LookupNetIP(ctx, "ip", host)
	}
	for i := range res {
		res[i] = res[i].Unmap()
	}
	return res, err
}

// matchAny returns the first entry matching the registry. For an allow list
// every address must be inside the entry's network (a name that also
// resolves outside it is not vouched for); for a deny list one address is
// enough. Host patterns match any of names.
func matchAny(entries []string, names []string, port string, addrs []netip.Addr, all bool) (string, bool) {
	for _, e := range entries {
		e = strings.ToLower(strings.TrimSpace(e))
		if e == "" {
			continue
		}
		if prefix, pPort, ok := parseNetwork(e); ok {
			if pPort != "" && pPort != port {
				continue
			}
			if len(addrs) == 0 {
				continue
			}
			n := 0
			for _, a := range addrs {
				if prefix.Contains(a) {
					n++
				}
			}
			if (all && n == len(addrs)) || (!all && n > 0) {
				return e, true
			}
			continue
		}
		pHost, pPort := e, ""
		if h, pt, err := net.SplitHostPort(e); err == nil {
			pHost, pPort = h, pt
		}
		if pPort != "" && pPort != port {
			continue
		}
		for _, name := range names {
			if hostPatternMatches(strings.Trim(pHost, "[]"), name) {
				return e, true
			}
		}
	}
	return "", false
}

// parseNetwork parses a CIDR, an IP address, or an IP:port entry.
func parseNetwork(e string) (netip.Prefix, string, bool) {
	if prefix, err := netip.ParsePrefix(e); err == nil {
		return prefix.Masked(), "", true
	}
	if a, err := netip.ParseAddr(strings.Trim(e, "[]")); err == nil {
		a = a.Unmap()
		return netip.PrefixFrom(a, a.BitLen()), "", true
	}
	if ap, err := netip.ParseAddrPort(e); err == nil {
		a := ap.Addr().Unmap()
		return netip.PrefixFrom(a, a.BitLen()), strconv.Itoa(int(ap.Port())), true
	}
	return netip.Prefix{}, "", false
}

func hostPatternMatches(pattern, host string) bool {
	if !strings.Contains(pattern, "*") {
		return pattern == host
	}
	pl, hl := strings.Split(pattern, "."), strings.Split(host, ".")
	if len(pl) != len(hl) {
		return false
	}
	for i := range pl {
		if ok, err := path.Match(pl[i], hl[i]); err != nil || !ok {
			return false
		}
	}
	return true
}
