package publish

import (
	"archive/tar"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"errors"
	"io"
	"log"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/registry"
)

// fakeQcow2 writes a file that starts like a self-contained qcow2 v3
// (what imgfile.Sniff reads) followed by content, and returns its SHA-256.
func fakeQcow2(t *testing.T, path string, content string) string {
	t.Helper()
	h := make([]byte, 104)
	copy(h, "QFI\xfb")
	binary.BigEndian.PutUint32(h[4:], 3)
	b := append(h, content...)
	if err := os.WriteFile(path, b, 0o644); err != nil {
		t.Fatal(err)
	}
	s := sha256.Sum256(b)
	return hex.EncodeToString(s[:])
}

func writeManifest(t *testing.T, dir, name, sum string, epoch int64) {
	t.Helper()
	m := map[string]any{
		"bake_version": "test", "source_date_epoch": epoch,
		"recipe":  map[string]any{"name": name, "sha256": strings.Repeat("0", 64)},
		"base":    map[string]any{"image": map[string]any{"digest": "sha256:" + strings.Repeat("1", 64), "url": "https://u:p@example/x"}},
		"outputs": []map[string]any{{"file": name + ".qcow2", "sha256": sum, "virtual_size": 1 << 30}},
	}
	b, _ := json.Marshal(m)
	if err := os.WriteFile(filepath.Join(dir, name+".manifest.json"), b, 0o644); err != nil {
		t.Fatal(err)
	}
}

// The same image gives the same layer whenever and wherever it is made
// (the file's own mtime does not matter); another epoch or other bytes
// give another digest. The layer holds disk/ and disk/NAME, 107:107.
func TestDiskLayerReproducible(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, "a.qcow2")
	sum := fakeQcow2(t, p, strings.Repeat("disk bytes ", 1000))
	epoch := time.Unix(1700000000, 0)
	l1, err := NewDiskLayer(p, epoch)
	if err != nil {
		t.Fatal(err)
	}
	os.Chtimes(p, time.Now(), time.Now().Add(time.Hour))
	l2, err := NewDiskLayer(p, epoch)
	if err != nil {
		t.Fatal(err)
	}
	if l1.digest != l2.digest || l1.ImageSHA256() != sum {
		t.Errorf("digests %s and %s; image sha256 %s, want %s", l1.digest, l2.digest, l1.ImageSHA256(), sum)
	}
	l3, _ := NewDiskLayer(p, epoch.Add(time.Second))
	if l3.digest == l1.digest {
		t.Error("another SOURCE_DATE_EPOCH gave the same digest")
	}
	rc, err := l1.Compressed()
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(rc)
	rc.Close()
	s := sha256.Sum256(b)
	if "sha256:"+hex.EncodeToString(s[:]) != l1.digest.String() || int64(len(b)) != l1.tarSize {
		t.Errorf("streamed layer: sha256 %x, %d bytes; recorded %s, %d", s, len(b), l1.digest, l1.tarSize)
	}
	tr := tar.NewReader(bytes.NewReader(b))
	var got []string
	for {
		h, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		got = append(got, h.Name)
		if h.Uid != DiskUID || h.Gid != DiskGID || !h.ModTime.Equal(epoch) || h.Uname != "" {
			t.Errorf("%s: %d:%d %q %v", h.Name, h.Uid, h.Gid, h.Uname, h.ModTime)
		}
	}
	if strings.Join(got, " ") != "disk/ disk/a.qcow2" {
		t.Errorf("entries %v", got)
	}
	fakeQcow2(t, p, strings.Repeat("disk bytes ", 999)+"other bytes")
	if l4, _ := NewDiskLayer(p, epoch); l4.digest == l1.digest {
		t.Error("other content gave the same digest")
	}
}

func TestNewDiskLayerRefuses(t *testing.T) {
	dir := t.TempDir()
	raw := filepath.Join(dir, "a.raw")
	os.WriteFile(raw, make([]byte, 4096), 0o644)
	if _, err := NewDiskLayer(raw, time.Unix(1, 0)); err == nil || !strings.Contains(err.Error(), "not a qcow2") {
		t.Errorf("raw: %v", err)
	}
	q := filepath.Join(dir, "b.qcow2")
	h := make([]byte, 104)
	copy(h, "QFI\xfb")
	binary.BigEndian.PutUint32(h[4:], 3)
	binary.BigEndian.PutUint64(h[8:], 104) // backing file offset
	binary.BigEndian.PutUint32(h[16:], 8)
	os.WriteFile(q, append(h, "/etc/pwd"...), 0o644)
	if _, err := NewDiskLayer(q, time.Unix(1, 0)); err == nil || !strings.Contains(err.Error(), "backing file") {
		t.Errorf("backing file: %v", err)
	}
}

func TestParseOCI(t *testing.T) {
	for _, c := range []struct{ in, err string }{
		{"oci://registry.example.com/a/b:1.0", ""},
		{"oci://127.0.0.1:5000/b:t", ""},
		{"registry.example.com/a:1", "want oci://"},
		{"oci://registry.example.com/a", "tag"},
		{"oci://a/b@sha256:" + strings.Repeat("0", 64), "name a tag"},
		{"libvirt://default/gw", "want oci://REGISTRY/REPO:TAG"}, // ParseOCI: Publish sends libvirt:// to publishLibvirt first
		{"oci://UPPER/x:1", "repository"},
		{"oci://app:1", "registry"},
	} {
		_, err := ParseOCI(c.in)
		if c.err == "" && err != nil || c.err != "" && (err == nil || !strings.Contains(err.Error(), c.err) || !errors.Is(err, ErrUsage)) {
			t.Errorf("%s: %v, want %q", c.in, err, c.err)
		}
	}
}

func TestLabelsLeaveCredentialsOut(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, "app.qcow2")
	sum := fakeQcow2(t, p, "x")
	writeManifest(t, dir, "app", sum, 1700000000)
	m, err := ReadManifest(ManifestPath(p))
	if err != nil {
		t.Fatal(err)
	}
	l, _ := NewDiskLayer(p, time.Unix(m.SourceDateEpoch, 0))
	lb := Labels(m, l)
	if lb[LabelPrefix+"base.image.digest"] != "sha256:"+strings.Repeat("1", 64) || lb[LabelPrefix+"disk.virtual-size"] != "1073741824" {
		t.Errorf("labels %v", lb)
	}
	for k, v := range lb {
		if strings.Contains(v, "u:p@") {
			t.Errorf("%s = %s", k, v)
		}
	}
	if err := checkListed(p, m, sum); err != nil {
		t.Error(err)
	}
	if err := checkListed(p, m, strings.Repeat("f", 64)); err == nil || !strings.Contains(err.Error(), "changed after it was built") {
		t.Errorf("changed image: %v", err)
	}
}

// The whole flow against go-containerregistry's in-process registry over
// TLS (the integration test uses the real distribution registry): publish,
// a re-run that pushes nothing and keeps the receipt, a refused tag with
// other content, --force.
func TestPublishInProcessRegistry(t *testing.T) {
	var writes atomic.Int64
	reg := registry.New(registry.Logger(log.New(io.Discard, "", 0)))
	srv := httptest.NewUnstartedServer(nil)
	srv.Config.Handler = countWrites(reg, &writes)
	srv.StartTLS()
	defer srv.Close()
	dir := t.TempDir()
	ca := filepath.Join(dir, "ca.pem")
	os.WriteFile(ca, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: srv.Certificate().Raw}), 0o644)
	img := filepath.Join(dir, "app.qcow2")
	writeManifest(t, dir, "app", fakeQcow2(t, img, "one"), 1700000000)
	host := strings.TrimPrefix(srv.URL, "https://")
	opts := Options{Image: img, To: "oci://" + host + "/x/app:1", CAFile: ca, Keychain: authn.NewMultiKeychain()}
	var out bytes.Buffer
	opts.Stdout = &out
	res, err := Publish(context.Background(), opts)
	if err != nil {
		t.Fatalf("%v\n%s", err, out.String())
	}
	if res.Unchanged || writes.Load() == 0 {
		t.Errorf("first publish: unchanged %v, %d writes", res.Unchanged, writes.Load())
	}
	rb, _ := os.ReadFile(ReceiptPath(img))
	writes.Store(0)
	res2, err := Publish(context.Background(), opts)
	if err != nil || !res2.Unchanged || writes.Load() != 0 || res2.Record.ManifestDigest != res.Record.ManifestDigest {
		t.Errorf("re-run: %v, unchanged %v, %d writes", err, res2 != nil && res2.Unchanged, writes.Load())
	}
	if rb2, _ := os.ReadFile(ReceiptPath(img)); !bytes.Equal(rb, rb2) {
		t.Error("re-run rewrote the receipt")
	}
	// Another destination: the same digest (reproducible), a second record.
	o2 := opts
	o2.To = "oci://" + host + "/y/other:2"
	res3, err := Publish(context.Background(), o2)
	if err != nil || res3.Record.ManifestDigest != res.Record.ManifestDigest {
		t.Fatalf("second destination: %v", err)
	}
	var r Receipt
	b, _ := os.ReadFile(ReceiptPath(img))
	json.Unmarshal(b, &r)
	if len(r.Publishes) != 2 {
		t.Errorf("receipt:\n%s", b)
	}
	// Other content under the same tag.
	writeManifest(t, dir, "app", fakeQcow2(t, img, "two"), 1700000000)
	writes.Store(0)
	if _, err := Publish(context.Background(), opts); !errors.Is(err, ErrConflict) || writes.Load() != 0 {
		t.Errorf("conflict: %v, %d writes", err, writes.Load())
	}
	opts.Force = true
	res4, err := Publish(context.Background(), opts)
	if err != nil || res4.Record.Replaced != res.Record.ManifestDigest {
		t.Errorf("--force: %v %+v", err, res4)
	}
}

// countWrites counts requests that change the registry.
func countWrites(h http.Handler, n *atomic.Int64) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method != http.MethodGet && r.Method != http.MethodHead {
			n.Add(1)
		}
		h.ServeHTTP(w, r)
	})
}
