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

package server

import (
	"context"
	"fmt"
	"net"
	"strconv"
	"strings"
	"testing"
)

func TestSecurePortHelpNamesLocalPort(t *testing.T) {
	fs := NewCommand(context.Background()).Flags()
	if f := fs.Lookup("secure-port"); f == nil || !strings.Contains(f.Usage, "--local the default is 8443") {
		t.Fatalf("--secure-port help: %+v", f)
	}
}

// A port in use is reported by Complete, before local mode starts etcd,
// with the flag that changes it.
func TestCompleteReportsPortInUse(t *testing.T) {
	busy, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer busy.Close()
	port := busy.Addr().(*net.TCPAddr).Port

	o := NewOptions()
	o.Local, o.LocalDir = true, t.TempDir()
	o.RecommendedOptions.SecureServing.BindPort = port
	err = o.Complete()
	if err == nil {
		t.Fatal("Complete on a port in use: no error")
	}
	for _, want := range []string{busy.Addr().String() + " is in use", "choose another with --secure-port", fmt.Sprintf("make run ARGS=--secure-port=%d", port+1)} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error lacks %q: %v", want, err)
		}
	}

	// A free port is opened by Complete and kept for the server.
	o = NewOptions()
	o.Local, o.LocalDir = true, t.TempDir()
	o.RecommendedOptions.SecureServing.BindPort = freePort(t)
	if err := o.Complete(); err != nil {
		t.Fatal(err)
	}
	ln := o.RecommendedOptions.SecureServing.Listener
	if ln == nil || ln.Addr().(*net.TCPAddr).Port != o.RecommendedOptions.SecureServing.BindPort {
		t.Fatalf("listener %v for port %d", ln, o.RecommendedOptions.SecureServing.BindPort)
	}
	_ = ln.Close()
}

func TestPortHint(t *testing.T) {
	busy, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer busy.Close()
	_, err = net.Listen("tcp", busy.Addr().String())
	got := portHint(err, busy.Addr().String(), "--local-registry-address", true).Error()
	host, port, _ := net.SplitHostPort(busy.Addr().String())
	p, _ := strconv.Atoi(port)
	if !strings.Contains(got, "choose another with --local-registry-address") || !strings.Contains(got, fmt.Sprintf("make run ARGS=--local-registry-address=%s:%d", host, p+1)) {
		t.Fatalf("hint: %s", got)
	}
	if got := portHint(err, busy.Addr().String(), "--secure-port", false).Error(); strings.Contains(got, "make run") {
		t.Fatalf("cluster mode hint names make run: %s", got)
	}
}

func freePort(t *testing.T) int {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port
}
