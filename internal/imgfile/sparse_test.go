package imgfile

import (
	"context"
	"crypto/sha256"
	"errors"
	"io"
	"os"
	"path/filepath"
	"testing"
)

// HashSparse gives what hashing every byte gives, on files with holes at
// the start, in the middle and at the end, and on one with none.
func TestHashSparse(t *testing.T) {
	dir := t.TempDir()
	for name, layout := range map[string][][2]int64{
		"holes":    {{1 << 20, 3<<20 + 17}, {7 << 20, 7<<20 + 4096}},
		"no holes": {{0, 5<<20 + 3}},
		"all hole": {},
		"tail":     {{0, 4096}},
	} {
		p := filepath.Join(dir, name)
		f, err := os.Create(p)
		if err != nil {
			t.Fatal(err)
		}
		size := int64(9<<20 + 5)
		if err := f.Truncate(size); err != nil {
			t.Fatal(err)
		}
		for i, r := range layout {
			b := make([]byte, r[1]-r[0])
			for j := range b {
				b[j] = byte(i*7 + j%251 + 1)
			}
			if _, err := f.WriteAt(b, r[0]); err != nil {
				t.Fatal(err)
			}
		}
		want := sha256.New()
		f.Seek(0, io.SeekStart)
		if _, err := io.Copy(want, f); err != nil {
			t.Fatal(err)
		}
		got := sha256.New()
		if err := HashSparse(context.Background(), got, f, size); err != nil {
			t.Fatal(err)
		}
		if string(got.Sum(nil)) != string(want.Sum(nil)) {
			t.Errorf("%s: HashSparse differs from reading every byte", name)
		}
		ext, err := DataExtents(context.Background(), f, size)
		if err != nil {
			t.Fatal(err)
		}
		t.Logf("%s: extents %v", name, ext)
		// Asking for more than the file holds is an error, not zeros.
		if err := HashSparse(context.Background(), sha256.New(), f, size+1); !errors.Is(err, io.ErrUnexpectedEOF) {
			t.Errorf("%s: a size past the end: %v, want io.ErrUnexpectedEOF", name, err)
		}
		f.Close()
	}
	// Cancelled: stops.
	f, _ := os.Open(filepath.Join(dir, "holes"))
	defer f.Close()
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if err := HashSparse(ctx, sha256.New(), f, 9<<20+5); !errors.Is(err, context.Canceled) {
		t.Errorf("cancelled: %v", err)
	}
}
