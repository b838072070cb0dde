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

package localmode

import (
	"bytes"
	"errors"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"go.uber.org/zap"
	"k8s.io/klog/v2"
	"k8s.io/klog/v2/textlogger"
)

// syncBuffer is a bytes.Buffer safe for etcd's goroutines.
type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// captureKlog sends klog's output to a buffer for the rest of the test.
func captureKlog(t *testing.T) *syncBuffer {
	t.Helper()
	var buf syncBuffer
	klog.SetLogger(textlogger.NewLogger(textlogger.NewConfig(textlogger.Output(&buf))))
	t.Cleanup(klog.ClearLogger)
	return &buf
}

// Stopping etcd (Ctrl-C of "make run") logged one error with a stack trace
// per listener; now it logs nothing.
func TestEtcdStopsQuietly(t *testing.T) {
	logs := captureKlog(t)
	dir := filepath.Join(t.TempDir(), "etcd")
	e, err := StartEtcd(dir)
	if err != nil {
		t.Fatal(err)
	}
	e.Close()
	// Again on the same data: a restart of local mode.
	if e, err = StartEtcd(dir); err != nil {
		t.Fatal(err)
	}
	e.Close()
	klog.Flush()
	if got := logs.String(); got != "" {
		t.Fatalf("etcd logged on a normal start and stop:\n%s", got)
	}
}

// Other errors still reach the console, through klog, without stack traces.
func TestEtcdErrorsGoThroughKlog(t *testing.T) {
	logs := captureKlog(t)
	lg := zap.New(&etcdLogCore{}, zap.AddCaller()).With(zap.String("member", "tagger"))
	lg.Error("failed to apply request", zap.Error(errors.New("disk full")), zap.Int("index", 7))
	lg.Warn("slow fdatasync") // below error level
	lg.Error("setting up serving from embedded etcd failed.", zap.Error(errors.New("accept tcp 127.0.0.1:1: use of closed network connection")))
	klog.Flush()
	got := logs.String()
	lines := strings.Split(strings.TrimSpace(got), "\n")
	if len(lines) != 1 {
		t.Fatalf("want one line, got:\n%s", got)
	}
	for _, want := range []string{`"Embedded etcd: failed to apply request"`, `err="disk full"`, `index=7`, `member="tagger"`, `caller="localmode/localmode_test.go:`} {
		if !strings.Contains(lines[0], want) {
			t.Errorf("line lacks %q: %s", want, lines[0])
		}
	}
	if strings.Contains(got, "stacktrace") || !strings.HasPrefix(lines[0], "E") {
		t.Errorf("want a klog error line without stack trace: %s", got)
	}
}
