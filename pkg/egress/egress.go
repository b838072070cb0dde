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

// Package egress checks every outgoing connection of code that cannot be
// given a dialer, such as containers/image, which only takes a proxy URL.
//
// A Guard is a SOCKS5 server (RFC 1928, CONNECT only, with RFC 1929
// username/password authentication) on 127.0.0.1. Each unit of work opens a
// Session, which has random credentials, a proxy URL and a Check. For every
// CONNECT the Guard resolves the name itself, passes the name, the port and
// every address it resolved to the session's Check, and dials only an
// address that was checked, by IP, with a dialer whose Control hook checks
// that address again. So a name that resolves differently at connection
// time than when it was validated (DNS rebinding), a redirect, or a token
// realm pointing elsewhere cannot reach an address the Check refuses.
// Refusals are recorded on the session, so the caller can explain a failure
// with the policy's words rather than the client's proxy error.
package egress

import (
	"context"
	"crypto/rand"
	"crypto/subtle"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"net/url"
	"strconv"
	"sync"
	"syscall"
	"time"
)

// Check decides whether a connection may be made. host is the name the
// client asked for (an IP address when it asked for one), addrs are all
// the addresses it resolved to (unmapped: IPv4 as IPv4). It is also called
// with the one address about to be dialed. A non-nil error refuses the
// connection and is recorded on the session.
type Check func(host string, port int, addrs []netip.Addr) error

// Options configures a Guard.
type Options struct {
	// LookupIP resolves a host name; nil means net.DefaultResolver.
	LookupIP func(ctx context.Context, host string) ([]netip.Addr, error)
	// DialTimeout bounds each connection attempt to one address; 0 means
	// 30 seconds.
	DialTimeout time.Duration
	// HandshakeTimeout bounds the SOCKS exchange before the dial; 0 means
	// 10 seconds.
	HandshakeTimeout time.Duration
}

// Guard is a running SOCKS5 server. Its zero value is not usable: call New.
type Guard struct {
	opts     Options
	listener net.Listener
	wg       sync.WaitGroup

	mu       sync.Mutex
	sessions map[string]*Session
	conns    map[net.Conn]struct{} // accepted, until handled
	closed   bool
}

// New starts a Guard listening on a free port of 127.0.0.1.
func New(opts Options) (*Guard, error) {
	if opts.DialTimeout <= 0 {
		opts.DialTimeout = 30 * time.Second
	}
	if opts.HandshakeTimeout <= 0 {
		opts.HandshakeTimeout = 10 * time.Second
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, fmt.Errorf("starting the egress guard: %w", err)
	}
	g := &Guard{opts: opts, listener: l, sessions: map[string]*Session{}, conns: map[net.Conn]struct{}{}}
	g.wg.Add(1)
	go g.serve()
	return g, nil
}

// Addr returns the guard's listening address.
func (g *Guard) Addr() string { return g.listener.Addr().String() }

// Close stops the guard: it closes every session and their connections and
// waits for its goroutines.
func (g *Guard) Close() error {
	g.mu.Lock()
	if g.closed {
		g.mu.Unlock()
		return nil
	}
	g.closed = true
	sessions := make([]*Session, 0, len(g.sessions))
	for _, s := range g.sessions {
		sessions = append(sessions, s)
	}
	conns := g.conns
	g.conns = nil
	g.mu.Unlock()
	err := g.listener.Close()
	for _, s := range sessions {
		s.Close()
	}
	for c := range conns {
		_ = c.Close()
	}
	g.wg.Wait()
	return err
}

// ErrClosed is returned by NewSession once the guard is closed.
var ErrClosed = errors.New("egress guard is closed")

// NewSession registers a session whose connections are checked by check.
// Close it when its work is done: that closes its connections.
func (g *Guard) NewSession(check Check) (*Session, error) {
	user, err := randomHex(16)
	if err != nil {
		return nil, err
	}
	pass, err := randomHex(32)
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithCancel(context.Background())
	s := &Session{
		guard:    g,
		user:     user,
		pass:     pass,
		check:    check,
		ctx:      ctx,
		cancel:   cancel,
		conns:    map[net.Conn]struct{}{},
		failures: map[string]error{},
		url:      &url.URL{Scheme: "socks5", User: url.UserPassword(user, pass), Host: g.Addr()},
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.closed {
		cancel()
		return nil, ErrClosed
	}
	g.sessions[user] = s
	return s, nil
}

func randomHex(n int) (string, error) {
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		return "", err
	}
	return hex.EncodeToString(b), nil
}

// Session is one unit of work's access to the guard.
type Session struct {
	guard  *Guard
	user   string
	pass   string
	check  Check
	url    *url.URL
	ctx    context.Context
	cancel context.CancelFunc

	mu       sync.Mutex
	closed   bool
	conns    map[net.Conn]struct{}
	denials  []error
	failures map[string]error // by the "host:port" the client asked for
}

// URL returns the proxy URL of the session, "socks5://user:pass@127.0.0.1:port".
// It carries the session's credentials: do not log it.
func (s *Session) URL() *url.URL {
	u := *s.url
	return &u
}

// Proxy returns the session's proxy URL for any request URL; it fits
// http.Transport.Proxy-style hooks.
func (s *Session) Proxy(*url.URL) (*url.URL, error) { return s.URL(), nil }

// Denied returns the first error the Check refused a connection with, or
// nil.
func (s *Session) Denied() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(s.denials) == 0 {
		return nil
	}
	return s.denials[0]
}

// Failure returns the last error connecting to hostport ("host:port" as the
// client asked for it) met: the lookup or the dial error, or nil. The
// client only learns a SOCKS reply code; this is the real error.
func (s *Session) Failure(hostport string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.failures[hostport]
}

// Close ends the session: new connections are refused, pending dials are
// abandoned and open connections are closed.
func (s *Session) Close() {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return
	}
	s.closed = true
	conns := s.conns
	s.conns = nil
	s.mu.Unlock()
	s.cancel()
	for c := range conns {
		_ = c.Close()
	}
	s.guard.mu.Lock()
	delete(s.guard.sessions, s.user)
	s.guard.mu.Unlock()
}

// track adds c to the session's connections; false when the session is
// closed.
func (s *Session) track(c net.Conn) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return false
	}
	s.conns[c] = struct{}{}
	return true
}

func (s *Session) untrack(c net.Conn) {
	s.mu.Lock()
	defer s.mu.Unlock()
	delete(s.conns, c)
}

func (s *Session) deny(err error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.denials = append(s.denials, err)
}

func (s *Session) fail(hostport string, err error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.failures[hostport] = err
}

func (g *Guard) serve() {
	defer g.wg.Done()
	for {
		c, err := g.listener.Accept()
		if err != nil {
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				continue
			}
			return
		}
		g.mu.Lock()
		if g.closed {
			g.mu.Unlock()
			_ = c.Close()
			return
		}
		g.conns[c] = struct{}{}
		g.wg.Add(1)
		g.mu.Unlock()
		go func() {
			defer g.wg.Done()
			defer func() {
				g.mu.Lock()
				delete(g.conns, c)
				g.mu.Unlock()
			}()
			g.handle(c)
		}()
	}
}

// SOCKS5 constants (RFC 1928, RFC 1929).
const (
	socksVersion     = 0x05
	authVersion      = 0x01
	methodUserPass   = 0x02
	methodNoneUsable = 0xff
	cmdConnect       = 0x01
	atypIPv4         = 0x01
	atypDomain       = 0x03
	atypIPv6         = 0x04

	replySucceeded          = 0x00
	replyGeneralFailure     = 0x01
	replyNotAllowed         = 0x02
	replyNetworkUnreachable = 0x03
	replyHostUnreachable    = 0x04
	replyConnectionRefused  = 0x05
	replyTTLExpired         = 0x06
	replyCommandUnsupported = 0x07
	replyAddressUnsupported = 0x08
)

// handle serves one client connection: handshake, check, dial, relay.
func (g *Guard) handle(c net.Conn) {
	defer func() { _ = c.Close() }()
	_ = c.SetDeadline(time.Now().Add(g.opts.HandshakeTimeout))

	s, err := g.authenticate(c)
	if err != nil || s == nil {
		return
	}
	if !s.track(c) {
		return
	}
	defer s.untrack(c)

	host, port, reply := readRequest(c)
	if reply != replySucceeded {
		writeReply(c, reply, nil)
		return
	}
	hostport := net.JoinHostPort(host, strconv.Itoa(port))
	// The client waits for the reply while the guard resolves and dials;
	// the dial timeout bounds that, not the handshake deadline.
	_ = c.SetDeadline(time.Time{})

	target, reply := g.connect(s, host, port, hostport)
	if reply != replySucceeded {
		writeReply(c, reply, nil)
		return
	}
	defer func() { _ = target.Close() }()
	if !s.track(target) {
		writeReply(c, replyGeneralFailure, nil)
		return
	}
	defer s.untrack(target)
	if !writeReply(c, replySucceeded, target.LocalAddr()) {
		return
	}
	relay(c, target)
}

// authenticate negotiates username/password authentication and returns the
// session the credentials belong to, or nil.
func (g *Guard) authenticate(c net.Conn) (*Session, error) {
	var hdr [2]byte
	if _, err := io.ReadFull(c, hdr[:]); err != nil {
		return nil, err
	}
	if hdr[0] != socksVersion {
		return nil, fmt.Errorf("SOCKS version %d", hdr[0])
	}
	methods := make([]byte, hdr[1])
	if _, err := io.ReadFull(c, methods); err != nil {
		return nil, err
	}
	offered := false
	for _, m := range methods {
		if m == methodUserPass {
			offered = true
		}
	}
	if !offered {
		_, _ = c.Write([]byte{socksVersion, methodNoneUsable})
		return nil, nil
	}
	if _, err := c.Write([]byte{socksVersion, methodUserPass}); err != nil {
		return nil, err
	}
	// RFC 1929: VER ULEN UNAME PLEN PASSWD.
	var b [1]byte
	if _, err := io.ReadFull(c, b[:]); err != nil {
		return nil, err
	}
	if b[0] != authVersion {
		return nil, fmt.Errorf("auth version %d", b[0])
	}
	user, err := readShortString(c)
	if err != nil {
		return nil, err
	}
	pass, err := readShortString(c)
	if err != nil {
		return nil, err
	}
	g.mu.Lock()
	s := g.sessions[user]
	g.mu.Unlock()
	if s == nil || subtle.ConstantTimeCompare([]byte(pass), []byte(s.pass)) != 1 {
		_, _ = c.Write([]byte{authVersion, 0x01})
		return nil, nil
	}
	if _, err := c.Write([]byte{authVersion, 0x00}); err != nil {
		return nil, err
	}
	return s, nil
}

func readShortString(r io.Reader) (string, error) {
	var n [1]byte
	if _, err := io.ReadFull(r, n[:]); err != nil {
		return "", err
	}
	b := make([]byte, n[0])
	if _, err := io.ReadFull(r, b); err != nil {
		return "", err
	}
	return string(b), nil
}

// readRequest reads a request (VER CMD RSV ATYP DST.ADDR DST.PORT) and
// returns the destination, or the reply code that refuses it.
func readRequest(c net.Conn) (string, int, byte) {
	var hdr [4]byte
	if _, err := io.ReadFull(c, hdr[:]); err != nil {
		return "", 0, replyGeneralFailure
	}
	if hdr[0] != socksVersion {
		return "", 0, replyGeneralFailure
	}
	var host string
	switch hdr[3] {
	case atypIPv4:
		var a [4]byte
		if _, err := io.ReadFull(c, a[:]); err != nil {
			return "", 0, replyGeneralFailure
		}
		host = netip.AddrFrom4(a).String()
	case atypIPv6:
		var a [16]byte
		if _, err := io.ReadFull(c, a[:]); err != nil {
			return "", 0, replyGeneralFailure
		}
		host = netip.AddrFrom16(a).Unmap().String()
	case atypDomain:
		name, err := readShortString(c)
		if err != nil {
			return "", 0, replyGeneralFailure
		}
		host = name
	default:
		return "", 0, replyAddressUnsupported
	}
	var p [2]byte
	if _, err := io.ReadFull(c, p[:]); err != nil {
		return "", 0, replyGeneralFailure
	}
	if hdr[1] != cmdConnect {
		return "", 0, replyCommandUnsupported
	}
	port := int(binary.BigEndian.Uint16(p[:]))
	if host == "" || port == 0 {
		return "", 0, replyAddressUnsupported
	}
	return host, port, replySucceeded
}

// writeReply sends VER REP RSV ATYP BND.ADDR BND.PORT.
func writeReply(c net.Conn, reply byte, bound net.Addr) bool {
	b := []byte{socksVersion, reply, 0x00}
	var ap netip.AddrPort
	if tcp, ok := bound.(*net.TCPAddr); ok {
		ap = tcp.AddrPort()
	}
	a := ap.Addr().Unmap()
	switch {
	case a.Is4():
		b = append(b, atypIPv4)
		b = append(b, a.AsSlice()...)
	case a.Is6():
		b = append(b, atypIPv6)
		b = append(b, a.AsSlice()...)
	default:
		b = append(b, atypIPv4, 0, 0, 0, 0)
	}
	b = binary.BigEndian.AppendUint16(b, ap.Port())
	_, err := c.Write(b)
	return err == nil
}

// connect resolves host, checks the addresses with the session's Check and
// dials the first checked address that answers.
func (g *Guard) connect(s *Session, host string, port int, hostport string) (net.Conn, byte) {
	ctx := s.ctx
	var addrs []netip.Addr
	if a, err := netip.ParseAddr(host); err == nil {
		if a.Zone() != "" {
			s.deny(fmt.Errorf("connection to %s refused: zoned addresses are not allowed", hostport))
			return nil, replyNotAllowed
		}
		addrs = []netip.Addr{a.Unmap()}
	} else {
		lctx, cancel := context.WithTimeout(ctx, g.opts.DialTimeout)
		var err error
		if g.opts.LookupIP != nil {
			addrs, err = g.opts.LookupIP(lctx, host)
		} else {
			addrs, err = net.DefaultResolver.LookupNetIP(lctx, "ip", host)
		}
		cancel()
		if err == nil && len(addrs) == 0 {
			err = &net.DNSError{Err: "no such host", Name: host, IsNotFound: true}
		}
		if err != nil {
			s.fail(hostport, err)
			return nil, replyHostUnreachable
		}
		for i := range addrs {
			addrs[i] = addrs[i].Unmap()
		}
	}
	if err := s.check(host, port, addrs); err != nil {
		s.deny(err)
		return nil, replyNotAllowed
	}

	var lastErr error
	for _, a := range addrs {
		d := net.Dialer{
			Timeout:   g.opts.DialTimeout,
			KeepAlive: 30 * time.Second,
			// The address about to be connected to, checked once more:
			// whatever happens between the check above and here, only a
			// checked IP is ever dialed.
			Control: func(_, address string, _ syscall.RawConn) error {
				ap, err := netip.ParseAddrPort(address)
				if err != nil {
					return err
				}
				if ap.Addr().Unmap() != a || int(ap.Port()) != port {
					return fmt.Errorf("egress guard: dialing %s, which was not checked", address)
				}
				return s.check(host, port, []netip.Addr{a})
			},
		}
		c, err := d.DialContext(ctx, "tcp", netip.AddrPortFrom(a, uint16(port)).String())
		if err == nil {
			return c, replySucceeded
		}
		lastErr = err
		if ctx.Err() != nil {
			break
		}
	}
	s.fail(hostport, lastErr)
	return nil, dialReply(lastErr)
}

// dialReply maps a dial error to a SOCKS reply code.
func dialReply(err error) byte {
	var ne net.Error
	switch {
	case errors.Is(err, syscall.ECONNREFUSED):
		return replyConnectionRefused
	case errors.Is(err, syscall.ENETUNREACH):
		return replyNetworkUnreachable
	case errors.Is(err, syscall.EHOSTUNREACH):
		return replyHostUnreachable
	case errors.As(err, &ne) && ne.Timeout():
		return replyTTLExpired
	}
	return replyGeneralFailure
}

// relay copies both ways until both sides are done. Between two TCP
// connections io.Copy splices in the kernel.
// A side that ends with an error rather than EOF ends both.
func relay(client, target net.Conn) {
	done := make(chan struct{})
	go func() {
		defer close(done)
		if _, err := io.Copy(target, client); err != nil {
			_ = target.Close()
			_ = client.Close()
			return
		}
		closeWrite(target)
	}()
	if _, err := io.Copy(client, target); err != nil {
		_ = target.Close()
		_ = client.Close()
	} else {
		closeWrite(client)
	}
	<-done
}

func closeWrite(c net.Conn) {
	if tc, ok := c.(*net.TCPConn); ok {
		_ = tc.CloseWrite()
		return
	}
	_ = c.Close()
}
