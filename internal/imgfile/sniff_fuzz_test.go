package imgfile

import (
	"bytes"
	"encoding/binary"
	"errors"
	"testing"
)

// FuzzSniff feeds any file to Sniff, which decides for bake verify, bake
// inspect and builds whether an image is qcow2 and whether it names
// another file of the host (a backing file, an external data file).
// Nothing may panic, and a qcow2 header with a backing file offset or the
// external data bit is always refused.
//
//	go test -run '^$' -fuzz '^FuzzSniff$' -fuzztime 1m ./internal/imgfile/
func FuzzSniff(f *testing.F) {
	hdr := func(version uint32, backingOff uint64, name string, incompat uint64) []byte {
		b := make([]byte, 512)
		copy(b, Qcow2Magic)
		binary.BigEndian.PutUint32(b[4:], version)
		binary.BigEndian.PutUint64(b[8:], backingOff)
		binary.BigEndian.PutUint32(b[16:], uint32(len(name)))
		binary.BigEndian.PutUint64(b[72:], incompat)
		if backingOff != 0 && backingOff < uint64(len(b)) {
			copy(b[backingOff:], name)
		}
		return b
	}
	f.Add(hdr(3, 0, "", 0))
	f.Add(hdr(3, 120, "/etc/shadow", 0))
	f.Add(hdr(2, 200, "base.qcow2", 0))
	f.Add(hdr(3, 0, "", 1<<2))
	f.Add([]byte(Qcow2Magic))
	f.Add([]byte("raw disk"))
	f.Fuzz(func(t *testing.T, b []byte) {
		in, err := Sniff(bytes.NewReader(b))
		qcow := len(b) >= 4 && string(b[:4]) == Qcow2Magic
		if qcow != (in.Format == Qcow2) || (!qcow && (in.Format != Raw || err != nil)) {
			t.Fatalf("format %q, error %v, for a file starting %q", in.Format, err, b[:min(4, len(b))])
		}
		if len(in.Backing) > 1023 {
			t.Fatalf("backing name of %d bytes", len(in.Backing))
		}
		if !qcow || err != nil {
			return
		}
		backing := binary.BigEndian.Uint64(b[8:]) != 0
		external := binary.BigEndian.Uint32(b[4:]) >= 3 && len(b) >= 80 && binary.BigEndian.Uint64(b[72:])&(1<<2) != 0
		if refused := in.Refuse(); (backing || external) != (refused != nil) || (refused != nil && !errors.Is(refused, ErrIndirect)) {
			t.Fatalf("backing %v, external data %v: Refuse() = %v", backing, external, refused)
		}
	})
}
