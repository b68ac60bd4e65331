package disk

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/diskfs/go-diskfs/partition/gpt"
	"github.com/google/uuid"
)

func TestDeriveLayoutDeterministic(t *testing.T) {
	a := DeriveLayout("sha256:1111")
	b := DeriveLayout("sha256:1111")
	if a != b {
		t.Fatalf("same seed, different layouts:\n%+v\n%+v", a, b)
	}
	c := DeriveLayout("sha256:2222")
	if a.DiskGUID == c.DiskGUID || a.RootFSUUID == c.RootFSUUID || a.ESPVolumeID == c.ESPVolumeID {
		t.Fatalf("different seeds share identifiers:\n%+v\n%+v", a, c)
	}
	if err := a.Validate(); err != nil {
		t.Fatal(err)
	}
	for _, s := range []string{a.DiskGUID, a.BIOSPartUUID, a.ESPPartUUID, a.RootPartUUID, a.RootFSUUID} {
		u := uuid.MustParse(s)
		if u.Version() != 5 || u.Variant() != uuid.RFC4122 {
			t.Errorf("%s: version %d variant %v, want a RFC 4122 v5 UUID", s, u.Version(), u.Variant())
		}
		if s != strings.ToLower(s) {
			t.Errorf("%s is not lower case (blkid and /dev/disk/by-* are)", s)
		}
	}
}

func TestDeriveLayoutPinned(t *testing.T) {
	got := DeriveLayout("bake")
	golden(t, "layout-bake.golden", []byte(strings.Join([]string{
		"DiskGUID " + got.DiskGUID,
		"BIOSPartUUID " + got.BIOSPartUUID,
		"ESPPartUUID " + got.ESPPartUUID,
		"RootPartUUID " + got.RootPartUUID,
		"RootFSUUID " + got.RootFSUUID,
		"ESPSerial " + got.ESPSerial(),
	}, "\n")+"\n"))
}

func TestLayoutValidate(t *testing.T) {
	l := DeriveLayout("x")
	l.RootFSUUID = "not-a-uuid"
	l.ESPPartUUID = l.DiskGUID
	err := l.Validate()
	if err == nil {
		t.Fatal("invalid layout accepted")
	}
	for _, want := range []string{"RootFSUUID", "ESPPartUUID: same UUID as layout.DiskGUID"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not mention %q", err, want)
		}
	}
}

func TestPlanDisk(t *testing.T) {
	l := DeriveLayout("plan")
	p, err := planDisk(l, 2*gib, 64*mib)
	if err != nil {
		t.Fatal(err)
	}
	sectors := uint64(2 * gib / 512)
	want := []PartitionInfo{
		{Number: 14, Name: "bios", Type: TypeBIOSBoot, GUID: l.BIOSPartUUID, FirstLBA: 2048, LastLBA: 4095, Offset: mib, Size: mib},
		{Number: 15, Name: "esp", Type: TypeESP, GUID: l.ESPPartUUID, FirstLBA: 4096, LastLBA: 4096 + 131072 - 1, Offset: 2 * mib, Size: 64 * mib},
		{Number: 1, Name: "root", Type: TypeRootX8664, GUID: l.RootPartUUID, FirstLBA: 4096 + 131072, LastLBA: sectors - 34,
			Offset: 66 * mib, Size: int64(sectors-34-(4096+131072)+1) * 512},
	}
	got := p.partitions()
	for i := range want {
		if got[i] != want[i] {
			t.Errorf("partition %d:\n got %+v\nwant %+v", i, got[i], want[i])
		}
	}
	// Every partition starts on a 1 MiB boundary and none overlap.
	for i, pi := range got {
		if pi.Offset%mib != 0 {
			t.Errorf("%s not 1 MiB aligned", pi.Name)
		}
		if i > 0 && pi.FirstLBA <= got[i-1].LastLBA {
			t.Errorf("%s overlaps %s", pi.Name, got[i-1].Name)
		}
	}
	if p.firstUsable != 34 || p.last != sectors-34 {
		t.Errorf("usable LBAs %d..%d", p.firstUsable, p.last)
	}

	for _, bad := range []struct {
		size, esp int64
		want      string
	}{
		{2*gib + 512, 64 * mib, "whole number of MiB"},
		{2 * gib, 32 * mib, "FAT32 minimum"},
		{2 * gib, 64*mib + 4096, "whole number of MiB"},
		{100 * mib, 64 * mib, "no room"},
	} {
		if _, err := planDisk(l, bad.size, bad.esp); err == nil || !strings.Contains(err.Error(), bad.want) {
			t.Errorf("planDisk(%d, %d) = %v, want error with %q", bad.size, bad.esp, err, bad.want)
		}
	}
}

// fat32Clusters mirrors go-diskfs's fat32.Create geometry: 32 reserved
// sectors, two FATs of totalClusters/128 sectors, 1 sector per cluster up to
// 260 MB.
func fat32Clusters(size int64) int64 {
	total := size / 512
	data := total - 32
	fatSectors := data / 128
	return total - 32 - 2*fatSectors
}

func TestMinESPSizeIsFAT32(t *testing.T) {
	if c := fat32Clusters(MinESPSize); c < 65525 {
		t.Fatalf("MinESPSize gives %d clusters; FAT32 needs at least 65525", c)
	}
	if c := fat32Clusters(MinESPSize - mib); c >= 65525 {
		t.Fatalf("MinESPSize is not the minimum: %d MiB already gives %d clusters", (MinESPSize-mib)/mib, c)
	}
}

func TestWriteGPTRoundTrip(t *testing.T) {
	l := DeriveLayout("gpt")
	size := 1 * gib
	p, err := planDisk(l, size, 64*mib)
	if err != nil {
		t.Fatal(err)
	}
	f, err := os.Create(filepath.Join(t.TempDir(), "disk.raw"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if err := f.Truncate(size); err != nil {
		t.Fatal(err)
	}
	// Boot code that is already there must survive the GPT write.
	if _, err := f.WriteAt([]byte("BOOTCODE"), 0); err != nil {
		t.Fatal(err)
	}
	if err := writeGPT(f, l, p); err != nil {
		t.Fatal(err)
	}
	mbr := make([]byte, 512)
	if _, err := f.ReadAt(mbr, 0); err != nil {
		t.Fatal(err)
	}
	if string(mbr[:8]) != "BOOTCODE" {
		t.Error("GPT write clobbered the boot code")
	}
	if mbr[446+4] != 0xee || mbr[510] != 0x55 || mbr[511] != 0xaa {
		t.Errorf("no protective MBR: type %#x sig %#x%#x", mbr[446+4], mbr[510], mbr[511])
	}
	tbl, err := gpt.Read(f, 512, 512)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.EqualFold(tbl.GUID, l.DiskGUID) {
		t.Errorf("disk GUID %s, want %s", tbl.GUID, l.DiskGUID)
	}
	byNum := map[int]*gpt.Partition{}
	for _, gp := range tbl.Partitions {
		byNum[gp.Index] = gp
	}
	for _, want := range p.partitions() {
		gp := byNum[want.Number]
		if gp == nil {
			t.Errorf("partition %d missing", want.Number)
			continue
		}
		if !strings.EqualFold(string(gp.Type), want.Type) || !strings.EqualFold(gp.GUID, want.GUID) ||
			gp.Name != want.Name || gp.Start != want.FirstLBA || gp.End != want.LastLBA {
			t.Errorf("partition %d = %+v, want %+v", want.Number, gp, want)
		}
	}
	if len(byNum) != 3 {
		t.Errorf("%d partitions, want 3", len(byNum))
	}
}
