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

package egress

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

func newGuard(t *testing.T, opts Options) *Guard {
	t.Helper()
	g, err := New(opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = g.Close() })
	return g
}

func newSession(t *testing.T, g *Guard, check Check) *Session {
	t.Helper()
	s, err := g.NewSession(check)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(s.Close)
	return s
}

// client returns an HTTP client whose every connection goes through s.
func client(s *Session) *http.Client {
	return &http.Client{Transport: &http.Transport{Proxy: func(r *http.Request) (*url.URL, error) { return s.Proxy(r.URL) }}, Timeout: 20 * time.Second}
}

func allowAll(string, int, []netip.Addr) error { return nil }

// countingListener accepts and counts connections on 127.0.0.1.
type countingListener struct {
	net.Listener
	n atomic.Int32
}

func newCountingListener(t *testing.T) *countingListener {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	cl := &countingListener{Listener: l}
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			cl.n.Add(1)
			_ = c.Close()
		}
	}()
	t.Cleanup(func() { _ = l.Close() })
	return cl
}

func port(t *testing.T, addr string) int {
	t.Helper()
	_, p, err := net.SplitHostPort(addr)
	if err != nil {
		t.Fatal(err)
	}
	n, _ := strconv.Atoi(p)
	return n
}

func TestAllowedConnection(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { _, _ = io.WriteString(w, "hello") }))
	defer srv.Close()
	g := newGuard(t, Options{})
	var (
		mu    sync.Mutex
		calls []string
	)
	s := newSession(t, g, func(host string, port int, addrs []netip.Addr) error {
		mu.Lock()
		defer mu.Unlock()
		calls = append(calls, fmt.Sprintf("%s %d %v", host, port, addrs))
		return nil
	})
	resp, err := client(s).Get(srv.URL)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	_ = resp.Body.Close()
	if string(b) != "hello" {
		t.Errorf("body %q", b)
	}
	want := fmt.Sprintf("127.0.0.1 %d [127.0.0.1]", port(t, srv.Listener.Addr().String()))
	mu.Lock()
	defer mu.Unlock()
	// Once for the resolved set, once in the dialer's Control hook.
	if len(calls) != 2 || calls[0] != want || calls[1] != want {
		t.Errorf("check calls %q, want twice %q", calls, want)
	}
	if s.Denied() != nil {
		t.Errorf("Denied() = %v", s.Denied())
	}
}

func TestDeniedConnectionNeverDials(t *testing.T) {
	target := newCountingListener(t)
	g := newGuard(t, Options{})
	refusal := errors.New("port refused by policy")
	s := newSession(t, g, func(host string, port int, addrs []netip.Addr) error {
		return refusal
	})
	_, err := client(s).Get("http://" + target.Addr().String() + "/token")
	if err == nil {
		t.Fatal("request went through")
	}
	if !strings.Contains(err.Error(), "connection not allowed by ruleset") {
		t.Errorf("client error %q", err)
	}
	if got := s.Denied(); got != refusal {
		t.Errorf("Denied() = %v, want the check's error", got)
	}
	time.Sleep(50 * time.Millisecond)
	if n := target.n.Load(); n != 0 {
		t.Errorf("denied target accepted %d connections", n)
	}
}

func TestResolvesAndTriesEachCheckedAddress(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { _, _ = io.WriteString(w, r.Host) }))
	defer srv.Close()
	p := port(t, srv.Listener.Addr().String())
	var lookups atomic.Int32
	g := newGuard(t, Options{LookupIP: func(_ context.Context, host string) ([]netip.Addr, error) {
		lookups.Add(1)
		if host != "registry.test" {
			return nil, &net.DNSError{Err: "no such host", Name: host, IsNotFound: true}
		}
		// Nothing listens on 127.0.0.2 at that port: the guard moves on.
		return []netip.Addr{netip.MustParseAddr("127.0.0.2"), netip.MustParseAddr("::ffff:127.0.0.1")}, nil
	}})
	var seen []netip.Addr
	s := newSession(t, g, func(host string, _ int, addrs []netip.Addr) error {
		if host != "registry.test" {
			return fmt.Errorf("unexpected host %s", host)
		}
		if len(addrs) == 2 {
			seen = addrs
		}
		return nil
	})
	resp, err := client(s).Get(fmt.Sprintf("http://registry.test:%d/", p))
	if err != nil {
		t.Fatal(err)
	}
	_ = resp.Body.Close()
	if len(seen) != 2 || seen[1] != netip.MustParseAddr("127.0.0.1") {
		t.Errorf("check saw %v, want both addresses, unmapped", seen)
	}
	if lookups.Load() != 1 {
		t.Errorf("%d lookups", lookups.Load())
	}

	_, err = client(s).Get("http://nowhere.test/")
	if err == nil {
		t.Fatal("unresolvable name reached")
	}
	var dns *net.DNSError
	if f := s.Failure("nowhere.test:80"); !errors.As(f, &dns) || !dns.IsNotFound {
		t.Errorf("Failure = %#v, want the lookup's DNS error", f)
	}
}

func TestRebindingIsCheckedAtConnectionTime(t *testing.T) {
	target := newCountingListener(t)
	p := port(t, target.Addr().String())
	// The name looked harmless when validated; at connection time it
	// resolves to the refused address.
	g := newGuard(t, Options{LookupIP: func(context.Context, string) ([]netip.Addr, error) {
		return []netip.Addr{netip.MustParseAddr("127.0.0.1")}, nil
	}})
	s := newSession(t, g, func(host string, port int, addrs []netip.Addr) error {
		for _, a := range addrs {
			if a == netip.MustParseAddr("127.0.0.1") && port == p {
				return fmt.Errorf("%s:%d resolves to refused %s", host, port, a)
			}
		}
		return nil
	})
	if _, err := client(s).Get(fmt.Sprintf("http://harmless.test:%d/", p)); err == nil {
		t.Fatal("request went through")
	}
	if s.Denied() == nil || !strings.Contains(s.Denied().Error(), "harmless.test") {
		t.Errorf("Denied() = %v", s.Denied())
	}
	time.Sleep(50 * time.Millisecond)
	if n := target.n.Load(); n != 0 {
		t.Errorf("refused address accepted %d connections", n)
	}
}

// dialGuard opens a raw connection to the guard.
func dialGuard(t *testing.T, g *Guard) net.Conn {
	t.Helper()
	c, err := net.Dial("tcp", g.Addr())
	if err != nil {
		t.Fatal(err)
	}
	_ = c.SetDeadline(time.Now().Add(10 * time.Second))
	t.Cleanup(func() { _ = c.Close() })
	return c
}

func readN(t *testing.T, c net.Conn, n int) []byte {
	t.Helper()
	b := make([]byte, n)
	if _, err := io.ReadFull(c, b); err != nil {
		t.Fatalf("reading %d bytes: %v", n, err)
	}
	return b
}

// login performs the greeting and authentication; it returns the auth
// status byte.
func login(t *testing.T, c net.Conn, user, pass string) byte {
	t.Helper()
	_, _ = c.Write([]byte{5, 1, 2})
	if got := readN(t, c, 2); !bytes.Equal(got, []byte{5, 2}) {
		t.Fatalf("method selection %v", got)
	}
	msg := append([]byte{1, byte(len(user))}, user...)
	msg = append(msg, byte(len(pass)))
	msg = append(msg, pass...)
	_, _ = c.Write(msg)
	return readN(t, c, 2)[1]
}

func TestProtocol(t *testing.T) {
	g := newGuard(t, Options{})
	s := newSession(t, g, allowAll)
	user := s.URL().User.Username()
	pass, _ := s.URL().User.Password()

	t.Run("no username/password method offered", func(t *testing.T) {
		c := dialGuard(t, g)
		_, _ = c.Write([]byte{5, 1, 0})
		if got := readN(t, c, 2); !bytes.Equal(got, []byte{5, 0xff}) {
			t.Errorf("got %v, want no acceptable method", got)
		}
	})
	t.Run("wrong password", func(t *testing.T) {
		if st := login(t, dialGuard(t, g), user, pass+"x"); st == 0 {
			t.Error("accepted")
		}
	})
	t.Run("unknown user", func(t *testing.T) {
		if st := login(t, dialGuard(t, g), "nobody", pass); st == 0 {
			t.Error("accepted")
		}
	})
	t.Run("bind refused", func(t *testing.T) {
		c := dialGuard(t, g)
		if st := login(t, c, user, pass); st != 0 {
			t.Fatalf("auth status %d", st)
		}
		_, _ = c.Write([]byte{5, 2, 0, 1, 127, 0, 0, 1, 0, 80})
		if got := readN(t, c, 2); got[1] != replyCommandUnsupported {
			t.Errorf("reply %d, want command not supported", got[1])
		}
	})
	t.Run("unknown address type", func(t *testing.T) {
		c := dialGuard(t, g)
		if st := login(t, c, user, pass); st != 0 {
			t.Fatalf("auth status %d", st)
		}
		_, _ = c.Write([]byte{5, 1, 0, 9})
		if got := readN(t, c, 2); got[1] != replyAddressUnsupported {
			t.Errorf("reply %d, want address type not supported", got[1])
		}
	})
	t.Run("IPv6 address", func(t *testing.T) {
		l, err := net.Listen("tcp", "[::1]:0")
		if err != nil {
			t.Skip("no IPv6 loopback")
		}
		defer l.Close()
		go func() {
			if c, err := l.Accept(); err == nil {
				_, _ = c.Write([]byte("v6"))
				_ = c.Close()
			}
		}()
		c := dialGuard(t, g)
		if st := login(t, c, user, pass); st != 0 {
			t.Fatalf("auth status %d", st)
		}
		p := l.Addr().(*net.TCPAddr).Port
		req := append([]byte{5, 1, 0, 4}, net.IPv6loopback...)
		_, _ = c.Write(append(req, byte(p>>8), byte(p)))
		reply := readN(t, c, 4)
		if reply[1] != replySucceeded {
			t.Fatalf("reply %d", reply[1])
		}
		readN(t, c, map[byte]int{1: 6, 4: 18}[reply[3]])
		if got := readN(t, c, 2); string(got) != "v6" {
			t.Errorf("relayed %q", got)
		}
	})
}

func TestSessionCloseEndsConnections(t *testing.T) {
	g := newGuard(t, Options{})
	hold := make(chan struct{})
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.WriteHeader(http.StatusOK)
		w.(http.Flusher).Flush()
		select {
		case <-hold:
		case <-r.Context().Done():
		}
	}))
	defer srv.Close()
	defer close(hold)
	s := newSession(t, g, allowAll)
	resp, err := client(s).Get(srv.URL)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	done := make(chan error, 1)
	go func() { _, err := io.ReadAll(resp.Body); done <- err }()
	s.Close()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("closing the session did not end its connection")
	}
	if _, err := client(s).Get(srv.URL); err == nil {
		t.Error("a closed session still connects")
	}
}

func TestGuardClose(t *testing.T) {
	g, err := New(Options{})
	if err != nil {
		t.Fatal(err)
	}
	s, err := g.NewSession(allowAll)
	if err != nil {
		t.Fatal(err)
	}
	// A client stuck in the handshake does not hold Close up.
	c, err := net.Dial("tcp", g.Addr())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	start := time.Now()
	if err := g.Close(); err != nil {
		t.Fatal(err)
	}
	if d := time.Since(start); d > 2*time.Second {
		t.Errorf("Close took %s", d)
	}
	s.Close()
	if _, err := g.NewSession(allowAll); !errors.Is(err, ErrClosed) {
		t.Errorf("NewSession after Close: %v", err)
	}
}

func TestRelayLargeBody(t *testing.T) {
	payload := make([]byte, 8<<20)
	_, _ = rand.Read(payload)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		got, _ := io.ReadAll(r.Body)
		_, _ = w.Write(got)
	}))
	defer srv.Close()
	g := newGuard(t, Options{})
	s := newSession(t, g, allowAll)
	resp, err := client(s).Post(srv.URL, "application/octet-stream", bytes.NewReader(payload))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	got, err := io.ReadAll(resp.Body)
	if err != nil || !bytes.Equal(got, payload) {
		t.Errorf("echoed %d bytes (%v), want the %d sent", len(got), err, len(payload))
	}
}
