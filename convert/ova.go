package convert

import (
	"archive/tar"
	"bufio"
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
)

// An OVA is a tar of the OVF package: the descriptor first (the OVF
// specification requires it, so that an importer can stream the rest), the
// manifest next, then the disk. The manifest has one line per other file,
// SHA256(NAME)= HEX, as ovftool writes it.

// ovaNames are the members of the OVA of an image called name.
func ovaNames(name string) (ovf, mf, vmdk string) {
	return name + ".ovf", name + ".mf", name + "-disk1.vmdk"
}

// manifest renders the .mf for files (name -> SHA-256 hex), sorted.
func manifest(sums map[string]string) []byte {
	names := make([]string, 0, len(sums))
	for n := range sums {
		names = append(names, n)
	}
	sort.Strings(names)
	var b bytes.Buffer
	for _, n := range names {
		fmt.Fprintf(&b, "SHA256(%s)= %s\n", n, sums[n])
	}
	return b.Bytes()
}

var mfLine = regexp.MustCompile(`^(SHA256|SHA1|SHA512)\(([^()/]+)\)\s*=\s*([0-9a-fA-F]+)$`)

// parseManifest reads a .mf: name -> SHA-256 hex. Only SHA256 lines are
// accepted (SHA1 is what old ovftool wrote; bake writes and wants SHA256).
func parseManifest(b []byte) (map[string]string, error) {
	out := map[string]string{}
	for _, line := range strings.Split(strings.TrimSpace(string(b)), "\n") {
		m := mfLine.FindStringSubmatch(strings.TrimSpace(line))
		if m == nil {
			return nil, fmt.Errorf("manifest: line %q is not ALG(FILE)= DIGEST", line)
		}
		if m[1] != "SHA256" || len(m[3]) != 64 {
			return nil, fmt.Errorf("manifest: %s digest for %s, want SHA256", m[1], m[2])
		}
		if _, dup := out[m[2]]; dup {
			return nil, fmt.Errorf("manifest: %s listed twice", m[2])
		}
		out[m[2]] = strings.ToLower(m[3])
	}
	return out, nil
}

func (j *job) convertOVA() error {
	ovfName, mfName, vmdkName := ovaNames(j.o.Name)
	vmdk := filepath.Join(j.tmp, vmdkName)
	if err := j.produce(OVA, vmdk); err != nil {
		return err
	}
	fi, err := os.Stat(vmdk)
	if err != nil {
		return err
	}
	ovf, err := RenderOVF(OVFSpec{
		Name: j.o.Name, DiskFile: vmdkName, DiskBytes: fi.Size(), Capacity: j.size,
		Firmware: j.o.Firmware, OS: j.o.OS, OSName: j.o.OSName, CPUs: j.o.CPUs, MemoryMiB: j.o.MemoryMiB,
	})
	if err != nil {
		return err
	}
	vmdkSum, _, err := hashFile(j.ctx, vmdk)
	if err != nil {
		return err
	}
	ovfSum := sha256.Sum256(ovf)
	mf := manifest(map[string]string{ovfName: hex.EncodeToString(ovfSum[:]), vmdkName: vmdkSum})
	if err := j.writeOVA([]member{{ovfName, ovf, ""}, {mfName, mf, ""}, {vmdkName, nil, vmdk}}); err != nil {
		return err
	}
	if err := os.Remove(vmdk); err != nil {
		return err
	}
	return j.proveOVA()
}

// member is an archive member: bytes, or a file's contents.
type member struct {
	name string
	data []byte
	path string
}

func (j *job) writeOVA(members []member) (err error) {
	out, err := os.OpenFile(j.out, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o644)
	if err != nil {
		return err
	}
	defer func() {
		if cerr := out.Close(); err == nil {
			err = cerr
		}
	}()
	bw := bufio.NewWriterSize(out, 1<<20)
	tw := tar.NewWriter(bw)
	for _, m := range members {
		var r io.Reader = bytes.NewReader(m.data)
		size := int64(len(m.data))
		if m.path != "" {
			f, err := os.Open(m.path)
			if err != nil {
				return err
			}
			defer f.Close()
			fi, err := f.Stat()
			if err != nil {
				return err
			}
			r, size = ctxReader{j.ctx, f}, fi.Size()
		}
		if err := tw.WriteHeader(tarHeader(m.name, size, j.o.SourceDateEpoch)); err != nil {
			return err
		}
		if _, err := io.Copy(tw, r); err != nil {
			return err
		}
	}
	if err := tw.Close(); err != nil {
		return err
	}
	if err := bw.Flush(); err != nil {
		return err
	}
	return out.Sync()
}

// proveOVA reads the OVA back as an importer would, from the file alone:
// the descriptor is the first member, the manifest lists every other member
// with its SHA-256, the OVF parses and describes the vmdk it travels with
// (file, size, capacity, controller = adapter type, firmware, Secure Boot
// off), and the vmdk, extracted, passes qemu-img check and holds the raw
// image's bytes.
func (j *job) proveOVA() error {
	ovfName, mfName, vmdkName := ovaNames(j.o.Name)
	f, err := os.Open(j.out)
	if err != nil {
		return err
	}
	defer f.Close()
	dir := filepath.Join(j.tmp, "extract")
	if err := os.Mkdir(dir, 0o700); err != nil {
		return err
	}
	tr := tar.NewReader(bufio.NewReaderSize(f, 1<<20))
	sums := map[string]string{}
	var ovf, mf []byte
	var order []string
	var vmdkSize int64
	for i := 0; ; i++ {
		h, err := tr.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return fmt.Errorf("ova: %w", err)
		}
		if i >= 8 {
			return errors.New("ova: more than 8 members")
		}
		if h.Typeflag != tar.TypeReg || strings.ContainsAny(h.Name, "/\\") || h.Name == "." || h.Name == ".." {
			return fmt.Errorf("ova: member %q (type %c): want plain files", h.Name, h.Typeflag)
		}
		if _, dup := sums[h.Name]; dup {
			return fmt.Errorf("ova: %s twice", h.Name)
		}
		order = append(order, h.Name)
		hash := sha256.New()
		switch {
		case strings.HasSuffix(h.Name, ".ovf"), strings.HasSuffix(h.Name, ".mf"):
			if h.Size > MaxOVFSize {
				return fmt.Errorf("ova: %s is %d bytes", h.Name, h.Size)
			}
			b, err := io.ReadAll(io.TeeReader(tr, hash))
			if err != nil {
				return err
			}
			if strings.HasSuffix(h.Name, ".ovf") {
				ovf = b
			} else {
				mf = b
			}
		case h.Name == vmdkName:
			vmdkSize = h.Size
			if err := extractSparse(j.ctx, io.TeeReader(tr, hash), h.Size, filepath.Join(dir, vmdkName)); err != nil {
				return fmt.Errorf("ova: %s: %w", h.Name, err)
			}
		default:
			return fmt.Errorf("ova: unexpected member %s", h.Name)
		}
		sums[h.Name] = hex.EncodeToString(hash.Sum(nil))
	}
	if want := []string{ovfName, mfName, vmdkName}; strings.Join(order, " ") != strings.Join(want, " ") {
		return fmt.Errorf("ova: members %v, want %v (descriptor first)", order, want)
	}
	listed, err := parseManifest(mf)
	if err != nil {
		return fmt.Errorf("ova: %w", err)
	}
	for name, sum := range sums {
		if name == mfName {
			continue
		}
		if listed[name] != sum {
			return fmt.Errorf("ova: manifest says %s has SHA-256 %q, it has %s", name, listed[name], sum)
		}
		delete(listed, name)
	}
	if len(listed) > 0 {
		return fmt.Errorf("ova: manifest lists files the OVA lacks: %v", listed)
	}
	j.prove("OVA read back: %s first, then %s, %s; manifest SHA256 lines match", ovfName, mfName, vmdkName)
	info, err := ParseOVF(bytes.NewReader(ovf))
	if err != nil {
		return err
	}
	disk := filepath.Join(dir, vmdkName)
	v, err := j.proveVMDK(disk)
	if err != nil {
		return err
	}
	if err := info.Check(vmdkName, vmdkSize, v, j.o.Firmware); err != nil {
		return err
	}
	sb := ""
	if j.o.Firmware == UEFI {
		sb = ", Secure Boot off"
	}
	j.prove("OVF parsed back: disk %s, capacity %d bytes = the vmdk's, controller ResourceType %d %s = vmdk adapter %s, NIC %s, firmware %s%s",
		info.DiskFile, info.Capacity, info.ControllerRT, info.ControllerSub, v.Adapter, strings.Join(info.NICs, ","), info.Firmware, sb)
	return j.proveDisk(VMDK, disk, j.size)
}
