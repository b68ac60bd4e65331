//go:build integration

package convert

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/diskfs/go-diskfs/partition/gpt"

	"github.com/bakeimg/bake/internal/execx"
)

func needTools(t *testing.T) {
	t.Helper()
	for _, tool := range []string{"qemu-img", "tar"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Fatalf("%s is not installed (scripts/install-deps.sh installs it): the integration tier needs it", tool)
		}
	}
}

// marks are the non-zero bytes the test image holds, by offset.
type mark struct {
	off  int64
	data []byte
}

// makeImage writes a sparse raw disk of size bytes with a GPT (BIOS boot,
// ESP, Linux root, as bake lays them out) and marks at a few offsets: in
// the MBR boot code, in the ESP, across a 64 KiB boundary in the root, and
// in the last sector before the backup GPT.
func makeImage(t *testing.T, path string, size int64, random int64) []mark {
	t.Helper()
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE|os.O_EXCL, 0o644)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if err := f.Truncate(size); err != nil {
		t.Fatal(err)
	}
	last := uint64(size/512) - 34
	tb := &gpt.Table{LogicalSectorSize: 512, PhysicalSectorSize: 512, ProtectiveMBR: true,
		GUID: "5F0B6F1E-2C39-4B43-9E4E-6C1F8C2A9D10"}
	tb.Partitions = []*gpt.Partition{
		{Index: 1, Start: 2048 + 2048 + 16384, End: last, Type: gpt.LinuxFilesystem, Name: "root", GUID: "0B5B3C7A-6D0E-4D8A-9A55-3A1E6B0D7F21"},
		{Index: 14, Start: 2048, End: 4095, Type: gpt.BIOSBoot, Name: "bios", GUID: "1C2D3E4F-5A6B-4C7D-8E9F-0A1B2C3D4E5F"},
		{Index: 15, Start: 4096, End: 4096 + 16384 - 1, Type: gpt.EFISystemPartition, Name: "esp", GUID: "2D3E4F5A-6B7C-4D8E-9FA0-1B2C3D4E5F60"},
	}
	for _, p := range tb.Partitions {
		p.Size = (p.End - p.Start + 1) * 512
	}
	if err := tb.Write(f, size); err != nil {
		t.Fatal(err)
	}
	marks := []mark{
		{0, []byte("bake boot code")},
		{4096*512 + 3, []byte("EFI/BOOT/BOOTX64.EFI")},
		{20480*512 + 64<<10 - 5, []byte("across a 64 KiB boundary")},
		{int64(last)*512 + 100, []byte("the last sector of root")},
	}
	for _, m := range marks {
		if _, err := f.WriteAt(m.data, m.off); err != nil {
			t.Fatal(err)
		}
	}
	if random > 0 {
		b := make([]byte, random)
		rand.Read(b)
		if _, err := f.WriteAt(b, 24<<20); err != nil {
			t.Fatal(err)
		}
	}
	return marks
}

func fileSum(t *testing.T, path string) string {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	h := sha256.New()
	io.Copy(h, f)
	return hex.EncodeToString(h.Sum(nil))
}

// sameGuestBytes checks, without qemu-img compare, that got (a raw file
// of wantSize bytes) starts with raw's bytes and is zero after them.
func sameGuestBytes(t *testing.T, raw, got string, wantSize int64) {
	t.Helper()
	a, err := os.ReadFile(raw)
	if err != nil {
		t.Fatal(err)
	}
	f, err := os.Open(got)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if fi, _ := f.Stat(); fi.Size() != wantSize {
		t.Fatalf("%s: %d bytes, want %d", got, fi.Size(), wantSize)
	}
	b := make([]byte, len(a))
	if _, err := io.ReadFull(f, b); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(a, b) {
		t.Fatalf("%s: guest bytes differ from the raw image's", got)
	}
	buf := make([]byte, 1<<20)
	for {
		n, err := f.Read(buf)
		if !allZero(buf[:n]) {
			t.Fatalf("%s: the padding after the raw image's end is not zero", got)
		}
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
	}
}

// onlyFiles fails unless dir holds exactly names (no temporary leftovers).
func onlyFiles(t *testing.T, dir string, names ...string) {
	t.Helper()
	ents, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, e := range ents {
		got = append(got, e.Name())
	}
	if strings.Join(got, " ") != strings.Join(names, " ") {
		t.Fatalf("%s holds %v, want %v", dir, got, names)
	}
}

func TestConvertEveryFormat(t *testing.T) {
	needTools(t)
	dir := t.TempDir()
	raw := filepath.Join(dir, "in.raw")
	// Not a whole MiB: VHD rounds up (qemu-img create + convert -n), GCE
	// pads to a GiB, the others keep the size.
	const size = 48<<20 + 64<<10
	marks := makeImage(t, raw, size, 0)
	epoch := int64(1700000000)
	for _, f := range Formats {
		t.Run(string(f), func(t *testing.T) {
			out := filepath.Join(dir, "out-"+string(f))
			os.Mkdir(out, 0o755)
			var log bytes.Buffer
			res, err := Convert(context.Background(), raw, f, Options{
				Name: "img", Dir: out, Firmware: UEFI, OS: "debian", SourceDateEpoch: epoch, Log: &log,
			})
			if err != nil {
				t.Fatal(err)
			}
			t.Logf("%s: %d bytes, proofs:\n%s", res.File, res.Bytes, log.String())
			onlyFiles(t, out, f.FileName("img"))
			if got := fileSum(t, res.Path); got != res.SHA256 {
				t.Errorf("SHA256 %s, the file's is %s", res.SHA256, got)
			}
			if fi, _ := os.Stat(res.Path); fi.Size() != res.Bytes {
				t.Errorf("Bytes %d, the file has %d", res.Bytes, fi.Size())
			}
			wantVS := map[Format]int64{VHD: 49 << 20, GCE: 1 << 30}[f]
			if wantVS == 0 {
				wantVS = size
			}
			if res.VirtualSize != wantVS {
				t.Errorf("VirtualSize %d, want %d", res.VirtualSize, wantVS)
			}
			if len(res.Proofs) < 2 {
				t.Errorf("proofs %q: want at least the container check and the guest bytes", res.Proofs)
			}
			// The guest bytes once more, independently of qemu-img
			// compare: back to raw (with qemu-img convert, or GNU tar for
			// the archives) and byte for byte in Go.
			back := filepath.Join(t.TempDir(), "back.raw")
			disk := res.Path
			format, _ := f.qemu()
			switch f {
			case GCE:
				x := t.TempDir()
				cmd := exec.Command("tar", "-xzf", res.Path, "-C", x)
				if b, err := cmd.CombinedOutput(); err != nil {
					t.Fatalf("GNU tar cannot extract the GCE archive: %v\n%s", err, b)
				}
				b, _ := exec.Command("tar", "-tvzf", res.Path).CombinedOutput()
				if lines := strings.Split(strings.TrimSpace(string(b)), "\n"); len(lines) != 1 || !strings.HasSuffix(lines[0], " disk.raw") {
					t.Fatalf("tar -tv: %q, want disk.raw alone", b)
				}
				sameGuestBytes(t, raw, filepath.Join(x, "disk.raw"), 1<<30)
				return
			case OVA:
				b, err := exec.Command("tar", "-tf", res.Path).CombinedOutput()
				if err != nil || string(b) != "img.ovf\nimg.mf\nimg-disk1.vmdk\n" {
					t.Fatalf("tar -tf: %q %v, want the descriptor first", b, err)
				}
				x := t.TempDir()
				if b, err := exec.Command("tar", "-xf", res.Path, "-C", x).CombinedOutput(); err != nil {
					t.Fatalf("tar -xf: %v\n%s", err, b)
				}
				ovf, _ := os.ReadFile(filepath.Join(x, "img.ovf"))
				for _, want := range []string{`vmw:key="firmware" vmw:value="efi"`, `vmw:key="bootOptions.efiSecureBootEnabled" vmw:value="false"`,
					`<rasd:ResourceSubType>lsilogic</rasd:ResourceSubType>`, `<rasd:ResourceSubType>VmxNet3</rasd:ResourceSubType>`,
					`ovf:capacity="50397184"`, `vmw:osType="debian10_64Guest"`} {
					if !strings.Contains(string(ovf), want) {
						t.Errorf("the OVF lacks %s:\n%s", want, ovf)
					}
				}
				mf, _ := os.ReadFile(filepath.Join(x, "img.mf"))
				for _, n := range []string{"img.ovf", "img-disk1.vmdk"} {
					if !strings.Contains(string(mf), "SHA256("+n+")= "+fileSum(t, filepath.Join(x, n))+"\n") {
						t.Errorf("manifest %q lacks the right line for %s", mf, n)
					}
				}
				disk = filepath.Join(x, "img-disk1.vmdk")
			case VHD:
				v, err := ReadVHDFile(res.Path)
				if err != nil {
					t.Fatal(err)
				}
				if v.DiskType != VHDFixed || v.CurrentSize != 49<<20 || v.FileSize != 49<<20+512 {
					t.Errorf("footer %+v", v)
				}
			}
			if b, err := exec.Command("qemu-img", "convert", "-f", format, "-O", "raw", disk, back).CombinedOutput(); err != nil {
				t.Fatalf("qemu-img convert back: %v\n%s", err, b)
			}
			sameGuestBytes(t, raw, back, wantVS)
			for _, m := range marks {
				b := make([]byte, len(m.data))
				fb, _ := os.Open(back)
				fb.ReadAt(b, m.off)
				fb.Close()
				if !bytes.Equal(b, m.data) {
					t.Errorf("at %d: %q, want %q", m.off, b, m.data)
				}
			}
		})
	}
}

// A whole-MiB image takes the one-command VHD path; an OVA of a BIOS image
// says bios and nothing about Secure Boot; two GCE archives of one image
// are identical.
func TestConvertVariants(t *testing.T) {
	needTools(t)
	dir := t.TempDir()
	raw := filepath.Join(dir, "in.raw")
	makeImage(t, raw, 16<<20, 0)
	out := t.TempDir()
	var rec recorder
	res, err := Convert(context.Background(), raw, VHD, Options{Name: "a", Dir: out, Runner: &rec})
	if err != nil {
		t.Fatal(err)
	}
	if c := rec.cmds[0]; !strings.HasPrefix(c, "qemu-img convert -f raw -O vpc -o subformat=fixed,force_size=on ") {
		t.Errorf("whole-MiB VHD made by %q", c)
	}
	if res.VirtualSize != 16<<20 {
		t.Errorf("VirtualSize %d", res.VirtualSize)
	}

	res, err = Convert(context.Background(), raw, OVA, Options{Name: "b", Dir: out, Firmware: BIOS})
	if err != nil {
		t.Fatal(err)
	}
	b, err := exec.Command("tar", "-xOf", res.Path, "b.ovf").Output()
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(b), `vmw:key="firmware" vmw:value="bios"`) || strings.Contains(string(b), "SecureBoot") {
		t.Errorf("BIOS OVF:\n%s", b)
	}
	if !strings.Contains(string(b), `vmw:osType="otherLinux64Guest"`) {
		t.Errorf("an unknown OS is not otherLinux64Guest:\n%s", b)
	}

	var sums []string
	for _, name := range []string{"c", "d"} {
		res, err := Convert(context.Background(), raw, GCE, Options{Name: "gce", Dir: filepath.Join(out), SourceDateEpoch: 1234567890})
		if err != nil {
			t.Fatal(err)
		}
		sums = append(sums, res.SHA256)
		os.Rename(res.Path, filepath.Join(out, name+".tar.gz"))
	}
	if sums[0] != sums[1] {
		t.Errorf("two GCE archives of one image differ: %v", sums)
	}
}

// recorder runs commands on the host and records them.
type recorder struct {
	mu   sync.Mutex
	cmds []string
	// before, when set, runs before each command with its line.
	before func(string)
}

func (r *recorder) note(c execx.Cmd) {
	r.mu.Lock()
	r.cmds = append(r.cmds, c.String())
	r.mu.Unlock()
	if r.before != nil {
		r.before(c.String())
	}
}

func (r *recorder) Run(ctx context.Context, c execx.Cmd) error {
	r.note(c)
	return execx.Host{}.Run(ctx, c)
}

func (r *recorder) Output(ctx context.Context, c execx.Cmd) ([]byte, error) {
	r.note(c)
	return execx.Host{}.Output(ctx, c)
}

// An interrupted conversion leaves nothing at the output path and nothing
// in the output directory: cancelled while qemu-img (or bake's own tar and
// gzip writer) is running, and cancelled between making and proving.
func TestConvertInterrupted(t *testing.T) {
	needTools(t)
	dir := t.TempDir()
	raw := filepath.Join(dir, "in.raw")
	// 24 MiB of random data: compressing it takes long enough to be
	// interrupted in the middle.
	makeImage(t, raw, 64<<20, 24<<20)
	for _, f := range Formats {
		t.Run(string(f)+"/running", func(t *testing.T) {
			out := t.TempDir()
			old := filepath.Join(out, f.FileName("img"))
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			rec := &recorder{}
			started := make(chan struct{}, 1)
			rec.before = func(line string) {
				if strings.Contains(line, " convert ") || strings.Contains(line, " create ") {
					select {
					case started <- struct{}{}:
					default:
					}
				}
			}
			if f == GCE {
				started <- struct{}{} // bake writes it itself
			}
			go func() {
				<-started
				time.Sleep(20 * time.Millisecond)
				cancel()
			}()
			st := time.Now()
			_, err := Convert(ctx, raw, f, Options{Name: "img", Dir: out, Firmware: UEFI, Runner: rec})
			if err == nil {
				t.Fatalf("an interrupted conversion succeeded (took %v)", time.Since(st))
			}
			if !errors.Is(err, context.Canceled) {
				t.Errorf("error %v does not say it was cancelled", err)
			}
			if _, err := os.Lstat(old); !os.IsNotExist(err) {
				t.Errorf("something at the output path: %v", err)
			}
			onlyFiles(t, out)
		})
		t.Run(string(f)+"/proving", func(t *testing.T) {
			out := t.TempDir()
			// A file from before stays as it was: only a proven output
			// replaces it.
			prev := filepath.Join(out, f.FileName("img"))
			os.WriteFile(prev, []byte("previous"), 0o644)
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			rec := &recorder{before: func(line string) {
				if strings.Contains(line, " compare ") || strings.Contains(line, " check ") || strings.Contains(line, " info ") {
					cancel()
				}
			}}
			if _, err := Convert(ctx, raw, f, Options{Name: "img", Dir: out, Firmware: UEFI, Runner: rec}); err == nil {
				t.Fatal("a conversion cancelled while proving succeeded")
			}
			if b, _ := os.ReadFile(prev); string(b) != "previous" {
				t.Errorf("the file at the output path was replaced by an unproven one")
			}
			onlyFiles(t, out, f.FileName("img"))
		})
	}
}
