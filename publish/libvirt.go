package publish

import (
	"context"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"encoding/xml"
	"errors"
	"fmt"
	"hash"
	"io"
	"net/url"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"time"

	libvirt "github.com/digitalocean/go-libvirt"
	"libvirt.org/go/libvirtxml"

	"github.com/bakeimg/bake/internal/imgfile"
)

// DefaultLibvirtURI is the libvirt connection bake publish uses when
// --connect is not given: the local system instance of the QEMU driver.
const DefaultLibvirtURI = "qemu:///system"

// LibvirtMetadataNS is the namespace of bake's element in a domain's
// <metadata>: what image the domain was defined from.
const LibvirtMetadataNS = "https://github.com/bakeimg/bake/publish/libvirt/1"

// Firmware of a libvirt domain (the values of package vm's BIOS and UEFI).
const (
	FirmwareBIOS = "bios"
	FirmwareUEFI = "uefi"
)

// Libvirt says how a libvirt:// destination is published (Options.Libvirt).
type Libvirt struct {
	URI         string // libvirt URI; DefaultLibvirtURI when empty
	VirtType    string // the domain type: kvm or qemu (decided by the caller: bake's KVM probe or --virt-type)
	VirtWhy     string // why that type
	Firmware    string // FirmwareBIOS or FirmwareUEFI (decided by the caller from the image)
	FirmwareWhy string
	Seed        string // a NoCloud seed (ISO9660 or FAT, bake seed's writer made it) to attach; "" for none
	SeedKind    string // "iso" or "fat"
	MemoryMiB   int
	CPUs        int
	// Network: "user" (user-mode networking in the host's network
	// namespace; with SSHForward, passt forwards 127.0.0.1:SSHForward to
	// the guest's SSHPort), "network:NAME" (a libvirt network) or
	// "bridge:NAME" (a host bridge).
	Network    string
	SSHForward int
	SSHPort    int
	// Passt: the forward is libvirt's passt backend with a portForward
	// (libvirt 9.2 and later); else QEMU's own user networking (slirp)
	// with a hostfwd on 127.0.0.1, passed through <qemu:commandline>.
	// publishLibvirt sets it from the daemon's version.
	Passt bool
	Start bool // start the domain once it is defined and checked
}

// LibvirtRecord is what a libvirt publication made (Record.Libvirt).
type LibvirtRecord struct {
	URI          string         `json:"uri"`
	Pool         string         `json:"pool"`
	Domain       string         `json:"domain"`
	UUID         string         `json:"uuid"`
	DomainType   string         `json:"domain_type"`
	Firmware     string         `json:"firmware"`
	SecureBoot   string         `json:"secure_boot,omitempty"` // "off" for UEFI images: bake's UEFI path is not signed
	Image        LibvirtVolume  `json:"image_volume"`          // the image, never written by the domain
	Disk         LibvirtVolume  `json:"disk_volume"`           // the domain's disk: a qcow2 overlay on the image volume
	Seed         *LibvirtVolume `json:"seed_volume,omitempty"` // the NoCloud seed, read-only
	Network      string         `json:"network"`
	SSHForward   string         `json:"ssh_forward,omitempty"` // 127.0.0.1:PORT -> guest port, and how
	Started      bool           `json:"started,omitempty"`
	UploadedSize int64          `json:"uploaded_bytes,omitempty"`
}

// LibvirtVolume is one storage volume.
type LibvirtVolume struct {
	Name   string `json:"name"`
	Path   string `json:"path"`
	Format string `json:"format"`
	Bytes  int64  `json:"bytes,omitempty"`
	SHA256 string `json:"sha256,omitempty"` // of its content, read back from libvirt
}

var libvirtName = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9_.+-]{0,62}$`)

// ParseLibvirt parses libvirt://POOL/NAME: the storage pool the volumes go
// to and the name of the domain (and of its volumes).
func ParseLibvirt(dest string) (pool, name string, err error) {
	rest, ok := strings.CutPrefix(dest, "libvirt://")
	if !ok {
		return "", "", usage("--to %q: want libvirt://POOL/NAME", dest)
	}
	pool, name, ok = strings.Cut(rest, "/")
	if !ok || pool == "" || name == "" || strings.Contains(name, "/") {
		return "", "", usage("--to %s: want libvirt://POOL/NAME (a storage pool and the domain's name, e.g. libvirt://default/openclaw-1); the connection is --connect URI", dest)
	}
	for what, s := range map[string]string{"pool": pool, "domain name": name} {
		if !libvirtName.MatchString(s) {
			return "", "", usage("--to %s: the %s %q: want letters, digits and _ . + - (at most 63, not starting with a punctuation mark)", dest, what, s)
		}
	}
	return pool, name, nil
}

// libvirtNames are the volumes of domain NAME in its pool.
func libvirtNames(name string) (image, disk, seed string) {
	return name + ".image.qcow2", name + ".qcow2", name + ".seed"
}

// lvErr says what failed talking to libvirt, in one line.
func lvErr(what string, err error) error {
	var le libvirt.Error
	if errors.As(err, &le) {
		// One line: libvirt's messages may quote QEMU's output.
		msg := strings.Join(strings.FieldsFunc(le.Message, func(r rune) bool { return r == '\n' || r == '\r' }), " | ")
		return fmt.Errorf("%s: libvirt: %s", what, msg)
	}
	return fmt.Errorf("%s: %w", what, err)
}

func isLibvirtCode(err error, code libvirt.ErrorNumber) bool {
	var le libvirt.Error
	return errors.As(err, &le) && le.Code == uint32(code)
}

// connectLibvirt dials uri and opens the connection; one error line when
// libvirtd cannot be reached.
func connectLibvirt(uri string) (*libvirt.Libvirt, error) {
	u, err := url.Parse(uri)
	if err != nil || u.Scheme == "" {
		return nil, usage("--connect %q: not a libvirt URI (e.g. qemu:///system, qemu+ssh://root@host/system)", uri)
	}
	type res struct {
		l   *libvirt.Libvirt
		err error
	}
	c := make(chan res, 1)
	go func() {
		l, err := libvirt.ConnectToURI(u)
		c <- res{l, err}
	}()
	select {
	case r := <-c:
		if r.err != nil {
			return nil, fmt.Errorf("libvirt at %s is unreachable: %v", uri, r.err)
		}
		return r.l, nil
	case <-time.After(60 * time.Second):
		return nil, fmt.Errorf("libvirt at %s: no answer after 60s", uri)
	}
}

// qcow2VirtualSize reads the virtual size from a qcow2 header.
func qcow2VirtualSize(f *os.File) (int64, error) {
	var b [8]byte
	if _, err := f.ReadAt(b[:], 24); err != nil {
		return 0, err
	}
	n := binary.BigEndian.Uint64(b[:])
	if n == 0 || n > 1<<50 {
		return 0, fmt.Errorf("qcow2 virtual size %d: not a disk bake made", n)
	}
	return int64(n), nil
}

// sha256File hashes a file (a sparse raw's holes from memory:
// imgfile.HashSparse).
func sha256File(path string) (string, int64, error) {
	f, st, err := imgfile.OpenRegular(path)
	if err != nil {
		return "", 0, err
	}
	defer f.Close()
	h := sha256.New()
	if err := imgfile.HashSparse(context.Background(), h, f, st.Size()); err != nil {
		return "", 0, err
	}
	return hex.EncodeToString(h.Sum(nil)), st.Size(), nil
}

// uploadReader stops an upload when ctx is done and feeds a hash and
// progress.
type uploadReader struct {
	ctx  context.Context
	r    io.Reader
	h    hash.Hash
	n    int64
	prog func(int64)
}

func (c *uploadReader) Read(p []byte) (int, error) {
	if err := c.ctx.Err(); err != nil {
		return 0, err
	}
	n, err := c.r.Read(p)
	if n > 0 {
		c.h.Write(p[:n])
		c.n += int64(n)
		if c.prog != nil {
			c.prog(c.n)
		}
	}
	return n, err
}

// volumeSHA256 reads a volume back from libvirt (its content as the
// storage backend holds it) and hashes it.
func volumeSHA256(l *libvirt.Libvirt, vol libvirt.StorageVol) (string, int64, error) {
	h := sha256.New()
	cw := &countWriter{w: h}
	if err := l.StorageVolDownload(vol, cw, 0, 0, 0); err != nil {
		return "", cw.n, err
	}
	return hex.EncodeToString(h.Sum(nil)), cw.n, nil
}

// libvirtMeta is bake's element in the domain's <metadata>.
type libvirtMeta struct {
	XMLName     xml.Name `xml:"https://github.com/bakeimg/bake/publish/libvirt/1 publish"`
	Image       string   `xml:"image,attr"`
	ImageSHA256 string   `xml:"image-sha256,attr"`
	Recipe      string   `xml:"recipe,attr"`
	Bake        string   `xml:"bake,attr,omitempty"`
}

func readMeta(d *libvirtxml.Domain) (*libvirtMeta, bool) {
	if d.Metadata == nil {
		return nil, false
	}
	dec := xml.NewDecoder(strings.NewReader(d.Metadata.XML))
	for {
		tok, err := dec.Token()
		if err != nil {
			return nil, false
		}
		if se, ok := tok.(xml.StartElement); ok && se.Name.Space == LibvirtMetadataNS && se.Name.Local == "publish" {
			var m libvirtMeta
			if dec.DecodeElement(&m, &se) != nil {
				return nil, false
			}
			return &m, true
		}
	}
}

// publishLibvirt: the image goes into POOL as NAME.image.qcow2 (uploaded,
// read back and compared with the local SHA-256), the domain's disk
// NAME.qcow2 is a qcow2 overlay on it (the image volume stays equal to the
// image however long the domain runs), the seed NAME.seed; the domain NAME
// is defined last and read back. Anything that fails removes what this run
// made. A domain NAME that bake defined from this very image is a no-op.
func publishLibvirt(ctx context.Context, opts Options) (*Result, error) {
	lo := opts.Libvirt
	if lo.URI == "" {
		lo.URI = DefaultLibvirtURI
	}
	poolName, name, err := ParseLibvirt(opts.To)
	if err != nil {
		return nil, err
	}
	switch lo.Firmware {
	case FirmwareBIOS, FirmwareUEFI:
	default:
		return nil, usage("firmware %q: want %s or %s", lo.Firmware, FirmwareBIOS, FirmwareUEFI)
	}
	switch lo.VirtType {
	case "kvm", "qemu":
	default:
		return nil, usage("--virt-type %q: want kvm or qemu", lo.VirtType)
	}
	netKind, netName, _ := strings.Cut(lo.Network, ":")
	switch {
	case lo.Network == "user":
	case (netKind == "network" || netKind == "bridge") && netName != "":
		if lo.SSHForward != 0 {
			return nil, usage("--ssh-forward is for --network user (passt forwards the port); a %s has its own addresses", netKind)
		}
	default:
		return nil, usage("--network %q: want user, network:NAME or bridge:NAME", lo.Network)
	}
	if lo.MemoryMiB < 256 || lo.CPUs < 1 || lo.CPUs > 64 {
		return nil, usage("memory %d MiB, %d vCPUs: want at least 256 MiB and 1 to 64 vCPUs", lo.MemoryMiB, lo.CPUs)
	}
	// The image: a self-contained qcow2 bake made, its SHA-256 listed.
	m, f, fi, in, err := openImage(opts.Image)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	if in.Format != imgfile.Qcow2 {
		return nil, usage("%s: not a qcow2: the libvirt destination uploads a qcow2 (a raw disk would be uploaded at its full size); make one with `bake convert %s --format qcow2`", opts.Image, opts.Image)
	}
	vsize, err := qcow2VirtualSize(f)
	if err != nil {
		return nil, usage("%s: %v", opts.Image, err)
	}
	t0 := time.Now()
	sum, size, err := sha256File(opts.Image)
	if err != nil {
		return nil, err
	}
	if size != fi.Size() {
		return nil, fmt.Errorf("%s changed while it was read", opts.Image)
	}
	if err := checkListed(opts.Image, m, sum); err != nil {
		return nil, usageError{err}
	}
	var seedSum string
	var seedSize int64
	if lo.Seed != "" {
		if seedSum, seedSize, err = sha256File(lo.Seed); err != nil {
			return nil, usage("seed: %v", err)
		}
	}
	fmt.Fprintf(opts.Stdout, "%s: sha256 %s (%d bytes, virtual size %d) in %.1fs\n", opts.Image, sum, size, vsize, time.Since(t0).Seconds())

	imgVol, diskVol, seedVol := libvirtNames(name)
	rec := Record{
		Destination: opts.To,
		ImageSHA256: sum,
		Libvirt: &LibvirtRecord{
			URI: lo.URI, Pool: poolName, Domain: name, DomainType: lo.VirtType, Firmware: lo.Firmware,
			Image:   LibvirtVolume{Name: imgVol, Format: "qcow2", Bytes: size},
			Disk:    LibvirtVolume{Name: diskVol, Format: "qcow2"},
			Network: lo.Network,
		},
	}
	if lo.Firmware == FirmwareUEFI {
		rec.Libvirt.SecureBoot = "off"
	}

	l, err := connectLibvirt(lo.URI)
	if err != nil {
		return nil, err
	}
	defer l.Disconnect()
	where := fmt.Sprintf("libvirt %s", lo.URI)
	if lo.SSHForward != 0 {
		ver, err := l.ConnectGetLibVersion()
		if err != nil {
			return nil, lvErr(where, err)
		}
		lo.Passt = ver >= 9002000
		how := "QEMU user networking (slirp) hostfwd, through <qemu:commandline> (libvirt before 9.2 has no passt portForward)"
		if lo.Passt {
			how = "passt portForward"
		}
		rec.Libvirt.SSHForward = fmt.Sprintf("127.0.0.1:%d -> %d (%s)", lo.SSHForward, lo.SSHPort, how)
	}

	pool, err := l.StoragePoolLookupByName(poolName)
	if err != nil {
		if isLibvirtCode(err, libvirt.ErrNoStoragePool) {
			return nil, fmt.Errorf("%s has no storage pool %q (it has: %s); nothing was changed", where, poolName, poolList(l))
		}
		return nil, lvErr(where+": storage pool "+poolName, err)
	}
	state, _, _, avail, err := l.StoragePoolGetInfo(pool)
	if err != nil {
		return nil, lvErr(where+": storage pool "+poolName, err)
	}
	if libvirt.StoragePoolState(state) != libvirt.StoragePoolRunning {
		return nil, fmt.Errorf("%s: storage pool %q is not active (start it: virsh pool-start %s); nothing was changed", where, poolName, poolName)
	}
	if err := l.StoragePoolRefresh(pool, 0); err != nil {
		return nil, lvErr(where+": refreshing storage pool "+poolName, err)
	}

	// What is there already.
	dom, err := l.DomainLookupByName(name)
	switch {
	case err == nil:
		return libvirtExisting(ctx, l, opts, lo, dom, pool, rec)
	case !isLibvirtCode(err, libvirt.ErrNoDomain):
		return nil, lvErr(where+": looking up domain "+name, err)
	}
	for _, v := range []string{imgVol, diskVol, seedVol} {
		if _, err := l.StorageVolLookupByName(pool, v); err == nil {
			return nil, fmt.Errorf("%s: storage pool %q already has a volume %s but there is no domain %s (left by another tool, or by a bake publish killed before it finished): nothing was changed; delete it (virsh vol-delete %s --pool %s) or choose another NAME", where, poolName, v, name, v, poolName)
		} else if !isLibvirtCode(err, libvirt.ErrNoStorageVol) {
			return nil, lvErr(where+": looking up volume "+v, err)
		}
	}
	if need := uint64(size) + uint64(seedSize) + 1<<20; avail < need {
		return nil, fmt.Errorf("%s: storage pool %q has %d bytes free, the image needs %d; nothing was changed", where, poolName, avail, need)
	}

	// From here on, whatever fails removes what was made.
	var made []libvirt.StorageVol
	var defined *libvirt.Domain
	ok := false
	defer func() {
		if ok {
			return
		}
		if defined != nil {
			l.DomainDestroy(*defined)
			l.DomainUndefineFlags(*defined, libvirt.DomainUndefineNvram|libvirt.DomainUndefineManagedSave)
		}
		for i := len(made) - 1; i >= 0; i-- {
			if err := l.StorageVolDelete(made[i], 0); err != nil {
				fmt.Fprintf(opts.Stdout, "could not remove volume %s: %v\n", made[i].Name, err)
			}
		}
	}()

	// The image volume: created, uploaded, read back.
	create := func(sv libvirtxml.StorageVolume) (libvirt.StorageVol, error) {
		x, err := sv.Marshal()
		if err != nil {
			return libvirt.StorageVol{}, err
		}
		v, err := l.StorageVolCreateXML(pool, x, 0)
		if err != nil {
			return v, lvErr(fmt.Sprintf("%s: creating volume %s in pool %s", where, sv.Name, poolName), err)
		}
		made = append(made, v)
		return v, nil
	}
	mode := &libvirtxml.StorageVolumeTargetPermissions{Mode: "0600"}
	iv, err := create(libvirtxml.StorageVolume{
		Name:       imgVol,
		Capacity:   &libvirtxml.StorageVolumeSize{Unit: "bytes", Value: uint64(vsize)},
		Allocation: &libvirtxml.StorageVolumeSize{Unit: "bytes", Value: 0},
		Target:     &libvirtxml.StorageVolumeTarget{Format: &libvirtxml.StorageVolumeTargetFormat{Type: "qcow2"}, Permissions: mode},
	})
	if err != nil {
		return nil, err
	}
	if err := uploadVolume(ctx, l, iv, opts.Image, sum, size, opts.Progress, "upload "+poolName+"/"+imgVol); err != nil {
		return nil, fmt.Errorf("%s: %w; nothing was left in pool %s", where, err, poolName)
	}
	if rec.Libvirt.Image.Path, err = l.StorageVolGetPath(iv); err != nil {
		return nil, lvErr(where, err)
	}
	rec.Libvirt.Image.SHA256 = sum
	rec.Libvirt.UploadedSize = size
	fmt.Fprintf(opts.Stdout, "uploaded %s to pool %s (%s); read back: sha256 equal\n", imgVol, poolName, rec.Libvirt.Image.Path)

	// The domain's disk: an overlay on the image volume.
	dv, err := create(libvirtxml.StorageVolume{
		Name:     diskVol,
		Capacity: &libvirtxml.StorageVolumeSize{Unit: "bytes", Value: uint64(vsize)},
		Target:   &libvirtxml.StorageVolumeTarget{Format: &libvirtxml.StorageVolumeTargetFormat{Type: "qcow2"}, Permissions: mode},
		BackingStore: &libvirtxml.StorageVolumeBackingStore{
			Path: rec.Libvirt.Image.Path, Format: &libvirtxml.StorageVolumeTargetFormat{Type: "qcow2"},
		},
	})
	if err != nil {
		return nil, err
	}
	if rec.Libvirt.Disk.Path, err = l.StorageVolGetPath(dv); err != nil {
		return nil, lvErr(where, err)
	}

	// The seed.
	if lo.Seed != "" {
		sv, err := create(libvirtxml.StorageVolume{
			Name:     seedVol,
			Capacity: &libvirtxml.StorageVolumeSize{Unit: "bytes", Value: uint64(seedSize)},
			Target:   &libvirtxml.StorageVolumeTarget{Format: &libvirtxml.StorageVolumeTargetFormat{Type: "raw"}, Permissions: mode},
		})
		if err != nil {
			return nil, err
		}
		if err := uploadVolume(ctx, l, sv, lo.Seed, seedSum, seedSize, nil, ""); err != nil {
			return nil, fmt.Errorf("%s: seed: %w; nothing was left in pool %s", where, err, poolName)
		}
		p, err := l.StorageVolGetPath(sv)
		if err != nil {
			return nil, lvErr(where, err)
		}
		rec.Libvirt.Seed = &LibvirtVolume{Name: seedVol, Path: p, Format: lo.SeedKind, Bytes: seedSize, SHA256: seedSum}
	}

	// The domain, defined last and read back.
	dx, err := DomainXML(name, m, sum, filepath.Base(opts.Image), lo, rec.Libvirt)
	if err != nil {
		return nil, err
	}
	d, err := l.DomainDefineXMLFlags(dx, libvirt.DomainDefineValidate)
	if err != nil {
		return nil, lvErr(fmt.Sprintf("%s: defining domain %s", where, name), err)
	}
	defined = &d
	if err := checkDomain(l, d, sum, lo, rec.Libvirt); err != nil {
		return nil, fmt.Errorf("%s: domain %s as defined: %w", where, name, err)
	}
	rec.Libvirt.UUID = uuidString(d.UUID)
	if lo.Start {
		if err := l.DomainCreate(d); err != nil {
			return nil, lvErr(fmt.Sprintf("%s: starting domain %s", where, name), err)
		}
		rec.Libvirt.Started = true
		fmt.Fprintf(opts.Stdout, "started domain %s\n", name)
	}
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	ok = true
	rec.Checked = libvirtChecked
	fmt.Fprintf(opts.Stdout, "published %s: domain %s (%s, %s firmware) on %s, disk %s over %s\n", opts.To, name, lo.VirtType, lo.Firmware, lo.URI, diskVol, imgVol)
	receipt := ReceiptPath(opts.Image)
	if _, err := writeReceipt(receipt, opts.Image, rec, time.Now(), false); err != nil {
		return nil, fmt.Errorf("published %s, but the receipt: %w", opts.To, err)
	}
	return &Result{Record: rec, Receipt: receipt}, nil
}

const libvirtChecked = "image volume downloaded back from libvirt: its SHA-256 and size equal the local image's; the seed volume likewise; the domain's XML read back: firmware, disks (overlay on the image volume, seed) and bake's metadata naming the image's SHA-256"

// libvirtExisting handles a domain NAME that exists: bake's, from this
// very image (checked again at the destination), is a no-op; anything
// else is refused.
func libvirtExisting(ctx context.Context, l *libvirt.Libvirt, opts Options, lo Libvirt, dom libvirt.Domain, pool libvirt.StoragePool, rec Record) (*Result, error) {
	where := fmt.Sprintf("libvirt %s", lo.URI)
	name := dom.Name
	x, err := l.DomainGetXMLDesc(dom, 0)
	if err != nil {
		return nil, lvErr(where+": reading domain "+name, err)
	}
	var d libvirtxml.Domain
	if err := d.Unmarshal(x); err != nil {
		return nil, fmt.Errorf("%s: domain %s: %v", where, name, err)
	}
	meta, ok := readMeta(&d)
	if !ok {
		return nil, fmt.Errorf("%w: %s: domain %s exists and bake publish did not define it; nothing was changed (choose another NAME)", ErrConflict, where, name)
	}
	if meta.ImageSHA256 != rec.ImageSHA256 {
		return nil, fmt.Errorf("%w: %s: domain %s exists, defined from another image (%s, sha256 %s); this image is %s; nothing was changed (undefine it and delete its volumes first, or choose another NAME)", ErrConflict, where, name, meta.Image, meta.ImageSHA256, rec.ImageSHA256)
	}
	// The same image: check its volume at the destination again.
	imgVol, _, seedVol := libvirtNames(name)
	iv, err := l.StorageVolLookupByName(pool, imgVol)
	if err != nil {
		return nil, lvErr(fmt.Sprintf("%s: domain %s exists but its image volume %s", where, name, imgVol), err)
	}
	got, n, err := volumeSHA256(l, iv)
	if err != nil {
		return nil, lvErr(fmt.Sprintf("%s: reading volume %s back", where, imgVol), err)
	}
	if got != rec.ImageSHA256 || n != rec.Libvirt.Image.Bytes {
		return nil, fmt.Errorf("%s: domain %s names this image, but its volume %s holds sha256 %s (%d bytes), not %s: changed behind bake's back; nothing was changed", where, name, imgVol, got, n, rec.ImageSHA256)
	}
	rec.Libvirt.Image.SHA256 = got
	rec.Libvirt.Image.Path, _ = l.StorageVolGetPath(iv)
	_, diskVol, _ := libvirtNames(name)
	if dv, err := l.StorageVolLookupByName(pool, diskVol); err == nil {
		rec.Libvirt.Disk.Path, _ = l.StorageVolGetPath(dv)
	}
	if sv, err := l.StorageVolLookupByName(pool, seedVol); err == nil {
		p, _ := l.StorageVolGetPath(sv)
		ss, sn, err := volumeSHA256(l, sv)
		if err != nil {
			return nil, lvErr(fmt.Sprintf("%s: reading volume %s back", where, seedVol), err)
		}
		rec.Libvirt.Seed = &LibvirtVolume{Name: seedVol, Path: p, Bytes: sn, SHA256: ss}
	}
	rec.Libvirt.UUID = uuidString(dom.UUID)
	if d.Type != "" {
		rec.Libvirt.DomainType = d.Type
	}
	if d.OS != nil && d.OS.Firmware == "efi" {
		rec.Libvirt.Firmware, rec.Libvirt.SecureBoot = FirmwareUEFI, "off"
	}
	rec.Libvirt.UploadedSize = 0
	msg := fmt.Sprintf("domain %s on %s already runs this image (%s): nothing to upload or define; volume %s read back, sha256 equal", name, lo.URI, rec.ImageSHA256, imgVol)
	if lo.Seed != "" {
		msg += "; its seed is kept (the new one was not attached)"
	}
	fmt.Fprintln(opts.Stdout, msg)
	if lo.Start {
		st, _, err := l.DomainGetState(dom, 0)
		if err != nil {
			return nil, lvErr(where, err)
		}
		if libvirt.DomainState(st) != libvirt.DomainRunning {
			if err := l.DomainCreate(dom); err != nil {
				return nil, lvErr(fmt.Sprintf("%s: starting domain %s", where, name), err)
			}
			fmt.Fprintf(opts.Stdout, "started domain %s\n", name)
		}
		rec.Libvirt.Started = true
	}
	rec.Checked = libvirtChecked
	receipt := ReceiptPath(opts.Image)
	written, err := writeReceipt(receipt, opts.Image, rec, time.Now(), true)
	if err != nil {
		return nil, err
	}
	if !written {
		receipt = ""
	}
	return &Result{Record: rec, Unchanged: true, Receipt: receipt}, nil
}

// uploadVolume streams path into vol and reads it back: the SHA-256 and
// size of what libvirt holds must equal the local ones.
func uploadVolume(ctx context.Context, l *libvirt.Libvirt, vol libvirt.StorageVol, path, sum string, size int64, progW io.Writer, label string) error {
	f, _, err := imgfile.OpenRegular(path)
	if err != nil {
		return err
	}
	defer f.Close()
	var prog *progress
	if progW != nil {
		prog = newProgress(progW, label)
	}
	cr := &uploadReader{ctx: ctx, r: f, h: sha256.New()}
	if prog != nil {
		cr.prog = func(n int64) { prog.update(n, size) }
	}
	err = l.StorageVolUpload(vol, cr, 0, uint64(size), 0)
	if prog != nil {
		prog.finish(err == nil)
	}
	if ctx.Err() != nil {
		return ctx.Err()
	}
	if err != nil {
		return lvErr("uploading "+vol.Name, err)
	}
	if up := hex.EncodeToString(cr.h.Sum(nil)); up != sum || cr.n != size {
		return fmt.Errorf("%s changed while it was uploaded (sha256 %s, %d bytes; want %s)", path, up, cr.n, sum)
	}
	got, n, err := volumeSHA256(l, vol)
	if err != nil {
		return lvErr("reading "+vol.Name+" back", err)
	}
	if got != sum || n != size {
		return fmt.Errorf("volume %s read back: sha256 %s, %d bytes; the local file is %s, %d bytes", vol.Name, got, n, sum, size)
	}
	return nil
}

// DomainXML is the domain bake publish defines: the image's firmware
// (UEFI: libvirt picks OVMF from the firmware descriptors, Secure Boot
// off, as bake's UEFI boot path is not signed), virtio disk, NIC and RNG,
// the seed as a read-only virtio disk, a serial
// console, and bake's metadata naming the image.
func DomainXML(name string, m *BuildManifest, sum, image string, lo Libvirt, r *LibvirtRecord) (string, error) {
	meta, err := xml.Marshal(libvirtMeta{Image: image, ImageSHA256: sum, Recipe: m.Recipe.Name, Bake: m.Bake})
	if err != nil {
		return "", err
	}
	d := libvirtxml.Domain{
		Type:        lo.VirtType,
		Name:        name,
		Description: fmt.Sprintf("%s (recipe %s), published by bake from %s (sha256 %s)", name, m.Recipe.Name, image, sum),
		Metadata:    &libvirtxml.DomainMetadata{XML: string(meta)},
		Memory:      &libvirtxml.DomainMemory{Value: uint(lo.MemoryMiB), Unit: "MiB"},
		VCPU:        &libvirtxml.DomainVCPU{Value: uint(lo.CPUs)},
		OS: &libvirtxml.DomainOS{
			Type: &libvirtxml.DomainOSType{Type: "hvm", Arch: "x86_64", Machine: "q35"},
		},
		Features:   &libvirtxml.DomainFeatureList{ACPI: &libvirtxml.DomainFeature{}, APIC: &libvirtxml.DomainFeatureAPIC{}},
		OnPoweroff: "destroy",
		OnReboot:   "restart",
		OnCrash:    "destroy",
		Devices:    &libvirtxml.DomainDeviceList{},
	}
	if lo.VirtType == "kvm" {
		d.CPU = &libvirtxml.DomainCPU{Mode: "host-passthrough"}
	}
	if lo.Firmware == FirmwareUEFI {
		d.OS.Firmware = "efi"
		d.OS.FirmwareInfo = &libvirtxml.DomainOSFirmwareInfo{Features: []libvirtxml.DomainOSFirmwareFeature{
			{Name: "secure-boot", Enabled: "no"},
			{Name: "enrolled-keys", Enabled: "no"},
		}}
	}
	dev := d.Devices
	dev.Disks = append(dev.Disks, libvirtxml.DomainDisk{
		Device: "disk",
		Driver: &libvirtxml.DomainDiskDriver{Name: "qemu", Type: "qcow2", Discard: "unmap"},
		Source: &libvirtxml.DomainDiskSource{File: &libvirtxml.DomainDiskSourceFile{File: r.Disk.Path}},
		Target: &libvirtxml.DomainDiskTarget{Dev: "vda", Bus: "virtio"},
		Boot:   &libvirtxml.DomainDeviceBoot{Order: 1},
	})
	if r.Seed != nil {
		seed := libvirtxml.DomainDisk{
			Driver:   &libvirtxml.DomainDiskDriver{Name: "qemu", Type: "raw"},
			Source:   &libvirtxml.DomainDiskSource{File: &libvirtxml.DomainDiskSourceFile{File: r.Seed.Path}},
			ReadOnly: &libvirtxml.DomainDiskReadOnly{},
		}
		// A read-only virtio disk, ISO or FAT alike, as bake verify and
		// bake run attach it: every kernel bake boots has virtio-blk, a
		// cloud kernel may lack AHCI CD-ROM support.
		seed.Device, seed.Target = "disk", &libvirtxml.DomainDiskTarget{Dev: "vdb", Bus: "virtio"}
		dev.Disks = append(dev.Disks, seed)
	}
	iface := libvirtxml.DomainInterface{Model: &libvirtxml.DomainInterfaceModel{Type: "virtio"}}
	kind, nname, _ := strings.Cut(lo.Network, ":")
	switch kind {
	case "user":
		iface.Source = &libvirtxml.DomainInterfaceSource{User: &libvirtxml.DomainInterfaceSourceUser{}}
		if lo.SSHForward != 0 && lo.Passt {
			iface.Backend = &libvirtxml.DomainInterfaceBackend{Type: "passt"}
			iface.PortForward = []libvirtxml.DomainInterfaceSourcePortForward{{
				Proto: "tcp", Address: "127.0.0.1",
				Ranges: []libvirtxml.DomainInterfaceSourcePortForwardRange{{Start: uint(lo.SSHForward), To: uint(lo.SSHPort)}},
			}}
		}
	case "network":
		iface.Source = &libvirtxml.DomainInterfaceSource{Network: &libvirtxml.DomainInterfaceSourceNetwork{Network: nname}}
	case "bridge":
		iface.Source = &libvirtxml.DomainInterfaceSource{Bridge: &libvirtxml.DomainInterfaceSourceBridge{Bridge: nname}}
	}
	if kind == "user" && lo.SSHForward != 0 && !lo.Passt {
		// libvirt before 9.2: QEMU's user networking with the forward,
		// the same virtio NIC, given to QEMU directly.
		d.QEMUCommandline = &libvirtxml.DomainQEMUCommandline{Args: []libvirtxml.DomainQEMUCommandlineArg{
			{Value: "-netdev"}, {Value: SlirpNetdev(lo.SSHForward, lo.SSHPort)},
			{Value: "-device"}, {Value: slirpDevice},
		}}
	} else {
		dev.Interfaces = append(dev.Interfaces, iface)
	}
	port := uint(0)
	dev.Serials = append(dev.Serials, libvirtxml.DomainSerial{Source: &libvirtxml.DomainChardevSource{Pty: &libvirtxml.DomainChardevSourcePty{}}, Target: &libvirtxml.DomainSerialTarget{Port: &port}})
	dev.Consoles = append(dev.Consoles, libvirtxml.DomainConsole{Source: &libvirtxml.DomainChardevSource{Pty: &libvirtxml.DomainChardevSourcePty{}}, Target: &libvirtxml.DomainConsoleTarget{Type: "serial", Port: &port}})
	dev.RNGs = append(dev.RNGs, libvirtxml.DomainRNG{Model: "virtio", Backend: &libvirtxml.DomainRNGBackend{Random: &libvirtxml.DomainRNGBackendRandom{Device: "/dev/urandom"}}})
	return d.Marshal()
}

const slirpID = "bakenet0"

// slirpDevice is the NIC on it: a slot of its own on the root bus (QEMU
// sees these arguments before libvirt's devices, which take slot 1 and up:
// without an address the NIC took slot 1 and the first root port failed).
const slirpDevice = "virtio-net-pci,netdev=" + slirpID + ",bus=pcie.0,addr=0x10"

// SlirpNetdev is the -netdev of the SSH forward on libvirt before 9.2.
func SlirpNetdev(hostPort, guestPort int) string {
	return fmt.Sprintf("user,id=%s,hostfwd=tcp:127.0.0.1:%d-:%d", slirpID, hostPort, guestPort)
}

// checkDomain reads the defined domain back and checks what bake asked for.
func checkDomain(l *libvirt.Libvirt, dom libvirt.Domain, sum string, lo Libvirt, r *LibvirtRecord) error {
	x, err := l.DomainGetXMLDesc(dom, libvirt.DomainXMLInactive)
	if err != nil {
		return lvErr("reading it back", err)
	}
	var d libvirtxml.Domain
	if err := d.Unmarshal(x); err != nil {
		return err
	}
	return CheckDomain(&d, sum, lo, r)
}

// CheckDomain checks a domain's XML as libvirt returns it against what
// bake publish defines: type, firmware (Secure Boot off for UEFI), the
// disk an overlay volume on virtio, the seed read-only, a virtio NIC, and
// bake's metadata naming the image's SHA-256.
func CheckDomain(d *libvirtxml.Domain, sum string, lo Libvirt, r *LibvirtRecord) error {
	var bad []string
	if d.Type != lo.VirtType {
		bad = append(bad, fmt.Sprintf("type %q, want %q", d.Type, lo.VirtType))
	}
	if m, ok := readMeta(d); !ok || m.ImageSHA256 != sum {
		bad = append(bad, "bake's metadata does not name image sha256 "+sum)
	}
	efi := d.OS != nil && d.OS.Firmware == "efi"
	if lo.Firmware == FirmwareUEFI {
		sbOff := false
		if efi && d.OS.FirmwareInfo != nil {
			for _, f := range d.OS.FirmwareInfo.Features {
				if f.Name == "secure-boot" && f.Enabled == "no" {
					sbOff = true
				}
			}
		}
		if !efi || !sbOff {
			bad = append(bad, "firmware: want efi with secure-boot off")
		}
	} else if efi || d.OS != nil && d.OS.Loader != nil {
		bad = append(bad, "firmware: want the BIOS (no efi, no loader)")
	}
	var disks []string
	okDisk, okSeed := false, r.Seed == nil
	if d.Devices != nil {
		for _, k := range d.Devices.Disks {
			if k.Source == nil || k.Source.File == nil || k.Target == nil {
				continue
			}
			disks = append(disks, k.Source.File.File)
			switch k.Source.File.File {
			case r.Disk.Path:
				okDisk = k.Device == "disk" && k.Target.Bus == "virtio" && k.Driver != nil && k.Driver.Type == "qcow2" && k.ReadOnly == nil
			case r.Image.Path:
				bad = append(bad, "the image volume itself is a disk: the domain would write to it")
			}
			if r.Seed != nil && k.Source.File.File == r.Seed.Path {
				okSeed = k.ReadOnly != nil
			}
		}
		if lo.Network == "user" && lo.SSHForward != 0 && !lo.Passt {
			args := ""
			if d.QEMUCommandline != nil {
				for _, a := range d.QEMUCommandline.Args {
					args += a.Value + " "
				}
			}
			if len(d.Devices.Interfaces) != 0 || !strings.Contains(args, "-netdev "+SlirpNetdev(lo.SSHForward, lo.SSHPort)+" -device "+slirpDevice) {
				bad = append(bad, fmt.Sprintf("want one virtio NIC on QEMU's user network with the forward (qemu:commandline %q)", args))
			}
		} else if len(d.Devices.Interfaces) != 1 || d.Devices.Interfaces[0].Model == nil || d.Devices.Interfaces[0].Model.Type != "virtio" {
			bad = append(bad, "want one virtio NIC")
		}
	}
	if !okDisk {
		bad = append(bad, fmt.Sprintf("no writable virtio qcow2 disk %s (disks: %s)", r.Disk.Path, strings.Join(disks, ", ")))
	}
	if !okSeed {
		bad = append(bad, "the seed is not attached read-only")
	}
	if len(bad) > 0 {
		return errors.New(strings.Join(bad, "; "))
	}
	return nil
}

func poolList(l *libvirt.Libvirt) string {
	pools, _, err := l.ConnectListAllStoragePools(1, 0)
	if err != nil {
		return "?"
	}
	var names []string
	for _, p := range pools {
		names = append(names, p.Name)
	}
	sort.Strings(names)
	if len(names) == 0 {
		return "none"
	}
	return strings.Join(names, ", ")
}

func uuidString(u libvirt.UUID) string {
	h := hex.EncodeToString(u[:])
	return h[0:8] + "-" + h[8:12] + "-" + h[12:16] + "-" + h[16:20] + "-" + h[20:]
}
