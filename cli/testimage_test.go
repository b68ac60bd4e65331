package cli

import (
	"os"
	"testing"

	"github.com/diskfs/go-diskfs/partition/gpt"
)

// gptImage writes a sparse 32 MiB raw disk laid out as bake's (BIOS boot,
// ESP, Linux root) with a few marks in it.
func gptImage(t *testing.T, path string) {
	t.Helper()
	const size = 32 << 20
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	f.Truncate(size)
	last := uint64(size/512) - 34
	tb := &gpt.Table{LogicalSectorSize: 512, PhysicalSectorSize: 512, ProtectiveMBR: true, GUID: "5F0B6F1E-2C39-4B43-9E4E-6C1F8C2A9D10"}
	tb.Partitions = []*gpt.Partition{
		{Index: 1, Start: 20480, End: last, Type: gpt.LinuxFilesystem, Name: "root", GUID: "0B5B3C7A-6D0E-4D8A-9A55-3A1E6B0D7F21"},
		{Index: 14, Start: 2048, End: 4095, Type: gpt.BIOSBoot, Name: "bios", GUID: "1C2D3E4F-5A6B-4C7D-8E9F-0A1B2C3D4E5F"},
		{Index: 15, Start: 4096, End: 20479, Type: gpt.EFISystemPartition, Name: "esp", GUID: "2D3E4F5A-6B7C-4D8E-9FA0-1B2C3D4E5F60"},
	}
	for _, p := range tb.Partitions {
		p.Size = (p.End - p.Start + 1) * 512
	}
	if err := tb.Write(f, size); err != nil {
		t.Fatal(err)
	}
	f.WriteAt([]byte("bake boot code"), 0)
	f.WriteAt([]byte("root data"), 20480*512+12345)
}
