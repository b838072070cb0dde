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
	"strings"
	"time"

	"go.podman.io/image/v5/docker/reference"
)

// DefaultDeniedNetworks are refused whatever Policy.Allow says: link-local
// addresses, where cloud metadata services live (169.254.169.254 on most
// clouds, fd00:ec2::254 on AWS), must never be reachable through a user's
// import request.
var DefaultDeniedNetworks = []netip.Prefix{
	netip.MustParsePrefix("169.254.0.0/16"),
	netip.MustParsePrefix("fe80::/10"),
	netip.MustParsePrefix("fd00:ec2::254/128"),
}

// Policy restricts the registries images may be imported from. Entries of
// Allow and Deny are host names ("quay.io"), host:port ("registry:5000"),
// wildcards where "*" stands for one DNS label ("*.example.com"), IP
// addresses or CIDRs ("10.0.0.0/8"). A pattern without a port matches any
// port. Host patterns match the registry name as written in the reference;
// IPs and CIDRs also match the addresses the name resolves to.
//
// The zero Policy allows every registry except DefaultDeniedNetworks.
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
// downloads elsewhere, is not caught here.
func (p Policy) CheckContext(ctx context.Context, ref string) error {
	named, err := reference.ParseNormalizedNamed(strings.TrimSpace(ref))
	if err != nil {
		return fmt.Errorf("invalid image reference %q: %w", ref, err)
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

	for _, prefix := range DefaultDeniedNetworks {
		for _, a := range addrs {
			if prefix.Contains(a) {
				return fmt.Errorf("registry %s is not allowed: address %s is in the always-denied network %s (link-local/metadata)", hostport, a, prefix)
			}
		}
	}
	if entry, ok := matchAny(p.Deny, host, port, addrs, false); ok {
		return fmt.Errorf("registry %s is not allowed: it matches deny-list entry %q", hostport, entry)
	}
	if len(p.Allow) == 0 {
		return nil
	}
	if _, ok := matchAny(p.Allow, host, port, addrs, true); ok {
		return nil
	}
	return fmt.Errorf("registry %s is not allowed: it matches no allow-list entry", hostport)
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
// enough.
func matchAny(entries []string, host, port string, addrs []netip.Addr, all bool) (string, bool) {
	for _, e := range entries {
		e = strings.ToLower(strings.TrimSpace(e))
		if e == "" {
			continue
		}
		if prefix, ok := parseNetwork(e); ok {
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
		if hostPatternMatches(strings.Trim(pHost, "[]"), host) {
			return e, true
		}
	}
	return "", false
}

func parseNetwork(e string) (netip.Prefix, bool) {
	if prefix, err := netip.ParsePrefix(e); err == nil {
		return prefix.Masked(), true
	}
	if a, err := netip.ParseAddr(strings.Trim(e, "[]")); err == nil {
		a = a.Unmap()
		return netip.PrefixFrom(a, a.BitLen()), true
	}
	return netip.Prefix{}, false
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
