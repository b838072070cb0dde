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

package transfer

import (
	"bytes"
	"errors"
	"io"
	"testing"
	"testing/iotest"
)

// pieces records the size of each Write.
type pieces struct {
	bytes.Buffer
	sizes []int
}

func (p *pieces) Write(b []byte) (int, error) {
	p.sizes = append(p.sizes, len(b))
	return p.Buffer.Write(b)
}

func TestRelayBodyWritesFullPieces(t *testing.T) {
	in := bytes.Repeat([]byte("0123456789abcdef"), (3*relayPiece+1000)/16)
	var out pieces
	// The registry's answer arrives a few bytes at a time.
	n, err := relayBody(&out, iotest.HalfReader(bytes.NewReader(in)))
	if err != nil || n != int64(len(in)) || !bytes.Equal(out.Bytes(), in) {
		t.Fatalf("relayed %d bytes (%v), want the %d given", n, err, len(in))
	}
	want := []int{relayPiece, relayPiece, relayPiece, len(in) - 3*relayPiece}
	if len(out.sizes) != len(want) {
		t.Fatalf("writes of %v bytes, want %v", out.sizes, want)
	}
	for i := range want {
		if out.sizes[i] != want[i] {
			t.Fatalf("writes of %v bytes, want %v", out.sizes, want)
		}
	}
}

func TestRelayBodyReportsACut(t *testing.T) {
	cut := errors.New("connection reset")
	in := io.MultiReader(bytes.NewReader(make([]byte, 1000)), iotest.ErrReader(cut))
	var out bytes.Buffer
	n, err := relayBody(&out, in)
	if !errors.Is(err, cut) || n != 1000 || out.Len() != 1000 {
		t.Fatalf("relayed %d bytes, error %v; want what came before the cut, and the cut", n, err)
	}
}
