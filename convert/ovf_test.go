package convert

import (
	"bytes"
	"encoding/xml"
	"io"
	"sort"
	"strings"
	"testing"
)

func testSpec() OVFSpec {
	return OVFSpec{Name: "openclaw", DiskFile: "openclaw-disk1.vmdk", DiskBytes: 123456, Capacity: 8 << 30,
		Firmware: UEFI, OS: "debian", OSName: "Debian GNU/Linux 12 (bookworm)", CPUs: 2, MemoryMiB: 2048}
}

func testVMDK() *VMDKInfo {
	return &VMDKInfo{Version: 3, Capacity: 8 << 30, CreateType: "streamOptimized", Adapter: "lsilogic"}
}

func TestRenderParseOVF(t *testing.T) {
	b, err := RenderOVF(testSpec())
	if err != nil {
		t.Fatal(err)
	}
	s := string(b)
	for _, want := range []string{
		`<?xml version="1.0" encoding="UTF-8"?>`,
		`<Envelope xmlns="http://schemas.dmtf.org/ovf/envelope/1" xmlns:ovf="http://schemas.dmtf.org/ovf/envelope/1"`,
		`<File ovf:href="openclaw-disk1.vmdk" ovf:id="file1" ovf:size="123456">`,
		`<Disk ovf:capacity="8589934592" ovf:capacityAllocationUnits="byte" ovf:diskId="vmdisk1" ovf:fileRef="file1" ovf:format="` + VMDKStreamFormat + `">`,
		`<OperatingSystemSection ovf:id="96" vmw:osType="debian10_64Guest">`,
		`<Description>Debian GNU/Linux 12 (bookworm)</Description>`,
		`<vssd:VirtualSystemType>vmx-14</vssd:VirtualSystemType>`,
		`<rasd:HostResource>ovf:/disk/vmdisk1</rasd:HostResource>`,
		`<vmw:Config ovf:required="false" vmw:key="firmware" vmw:value="efi">`,
		`<vmw:Config ovf:required="false" vmw:key="bootOptions.efiSecureBootEnabled" vmw:value="false">`,
	} {
		if !strings.Contains(s, want) {
			t.Errorf("the OVF lacks %s", want)
		}
	}
	info, err := ParseOVF(bytes.NewReader(b))
	if err != nil {
		t.Fatal(err)
	}
	if info.Capacity != 8<<30 || info.ControllerRT != rtSCSI || info.ControllerSub != "lsilogic" || info.Adapter != "lsilogic" ||
		info.Firmware != "efi" || strings.Join(info.NICs, ",") != "VmxNet3" || info.HardwareType != "vmx-14" || info.OSType != "debian10_64Guest" {
		t.Errorf("%+v", info)
	}
	if err := info.Check("openclaw-disk1.vmdk", 123456, testVMDK(), UEFI); err != nil {
		t.Error(err)
	}

	// BIOS: the firmware says so, nothing about Secure Boot.
	spec := testSpec()
	spec.Firmware, spec.OS, spec.OSName = BIOS, "", ""
	b, _ = RenderOVF(spec)
	if strings.Contains(string(b), "SecureBoot") || !strings.Contains(string(b), `vmw:value="bios"`) || !strings.Contains(string(b), `vmw:osType="otherLinux64Guest"`) {
		t.Errorf("BIOS OVF:\n%s", b)
	}
	info, _ = ParseOVF(bytes.NewReader(b))
	if err := info.Check("openclaw-disk1.vmdk", 123456, testVMDK(), BIOS); err != nil {
		t.Error(err)
	}
	if err := info.Check("openclaw-disk1.vmdk", 123456, testVMDK(), UEFI); err == nil {
		t.Error("a BIOS OVF passed as UEFI")
	}
}

// The CIM schema's elements are a sequence in alphabetical order:
// ovftool refuses an OVF whose rasd or vssd elements are out of order.
func TestOVFElementOrder(t *testing.T) {
	b, _ := RenderOVF(testSpec())
	d := xml.NewDecoder(bytes.NewReader(b))
	var stack []string
	var children [][]string
	for {
		tok, err := d.Token()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		switch e := tok.(type) {
		case xml.StartElement:
			if len(children) > 0 && (e.Name.Space == nsRASD || e.Name.Space == nsVSSD) {
				children[len(children)-1] = append(children[len(children)-1], e.Name.Local)
			}
			stack = append(stack, e.Name.Local)
			children = append(children, nil)
		case xml.EndElement:
			if c := children[len(children)-1]; len(c) > 0 && !sort.StringsAreSorted(c) {
				t.Errorf("%s: children %v not in schema order", stack[len(stack)-1], c)
			}
			stack, children = stack[:len(stack)-1], children[:len(children)-1]
		}
	}
}

func TestOVFCheckRefuses(t *testing.T) {
	b, _ := RenderOVF(testSpec())
	ok, err := ParseOVF(bytes.NewReader(b))
	if err != nil {
		t.Fatal(err)
	}
	for name, tc := range map[string]struct {
		mod  func(o *OVFInfo, v *VMDKInfo)
		want string
	}{
		"file name":   {func(o *OVFInfo, v *VMDKInfo) { o.DiskFile = "other.vmdk" }, "file"},
		"file size":   {func(o *OVFInfo, v *VMDKInfo) { o.DiskFileSize++ }, "file"},
		"capacity":    {func(o *OVFInfo, v *VMDKInfo) { v.Capacity = 4 << 30 }, "capacity"},
		"adapter":     {func(o *OVFInfo, v *VMDKInfo) { v.Adapter = "ide" }, "controller"},
		"format":      {func(o *OVFInfo, v *VMDKInfo) { o.DiskFormat = "vmdk.html#sparse" }, "format"},
		"no NIC":      {func(o *OVFInfo, v *VMDKInfo) { o.NICs = nil }, "network"},
		"firmware":    {func(o *OVFInfo, v *VMDKInfo) { o.Firmware = "bios" }, "firmware"},
		"secure boot": {func(o *OVFInfo, v *VMDKInfo) { o.Config = map[string]string{} }, "SecureBoot"},
	} {
		o, v := *ok, testVMDK()
		tc.mod(&o, v)
		if err := o.Check("openclaw-disk1.vmdk", 123456, v, UEFI); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: %v, want an error about %s", name, err, tc.want)
		}
	}
}

// What ovftool writes (capacity in GiB, pvscsi, prefixes other than bake's)
// parses the same way: ParseOVF goes by namespace, not by prefix.
func TestParseOVFOtherWriters(t *testing.T) {
	doc := `<?xml version="1.0" encoding="UTF-8"?>
<o:Envelope xmlns:o="http://schemas.dmtf.org/ovf/envelope/1" xmlns:r="http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/CIM_ResourceAllocationSettingData" xmlns:v="http://www.vmware.com/schema/ovf">
  <o:References><o:File o:href="x-disk1.vmdk" o:id="f" o:size="42"/></o:References>
  <o:DiskSection><o:Info>d</o:Info><o:Disk o:capacity="16" o:capacityAllocationUnits="byte * 2^30" o:diskId="d1" o:fileRef="f" o:format="` + VMDKStreamFormat + `"/></o:DiskSection>
  <o:VirtualSystem o:id="x"><o:Info>x</o:Info>
    <o:VirtualHardwareSection><o:Info>h</o:Info>
      <o:Item><r:InstanceID>3</r:InstanceID><r:ResourceSubType>VirtualSCSI</r:ResourceSubType><r:ResourceType>6</r:ResourceType></o:Item>
      <o:Item><r:HostResource>ovf:/disk/d1</r:HostResource><r:InstanceID>5</r:InstanceID><r:Parent>3</r:Parent><r:ResourceType>17</r:ResourceType></o:Item>
      <o:Item><r:InstanceID>7</r:InstanceID><r:ResourceSubType>E1000</r:ResourceSubType><r:ResourceType>10</r:ResourceType></o:Item>
      <v:Config o:required="false" v:key="firmware" v:value="efi"/>
      <v:Config o:required="false" v:key="bootOptions.efiSecureBootEnabled" v:value="false"/>
    </o:VirtualHardwareSection>
  </o:VirtualSystem>
</o:Envelope>`
	info, err := ParseOVF(strings.NewReader(doc))
	if err != nil {
		t.Fatal(err)
	}
	if info.Capacity != 16<<30 || info.Adapter != "lsilogic" || info.NICs[0] != "E1000" || info.DiskFileSize != 42 {
		t.Errorf("%+v", info)
	}
	for name, bad := range map[string]string{
		"no disk item":       strings.Replace(doc, "ovf:/disk/d1", "ovf:/disk/d2", 1),
		"orphan disk":        strings.Replace(doc, "<r:Parent>3</r:Parent>", "<r:Parent>9</r:Parent>", 1),
		"unknown controller": strings.Replace(doc, "VirtualSCSI", "nvme", 1),
		"units":              strings.Replace(doc, "byte * 2^30", "kilobyte", 1),
		"file ref":           strings.Replace(doc, `o:fileRef="f"`, `o:fileRef="g"`, 1),
		"capacity":           strings.Replace(doc, `o:capacity="16"`, `o:capacity="-16"`, 1),
		"not OVF":            strings.ReplaceAll(doc, "envelope/1", "envelope/9"),
		"truncated":          doc[:400],
	} {
		if _, err := ParseOVF(strings.NewReader(bad)); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
	if _, err := ParseOVF(io.MultiReader(strings.NewReader(doc), strings.NewReader(strings.Repeat("<!-- -->", MaxOVFSize)))); err == nil {
		t.Error("a descriptor over MaxOVFSize was read")
	}
}

func TestRenderOVFRefuses(t *testing.T) {
	s := testSpec()
	s.Firmware = ""
	if _, err := RenderOVF(s); err == nil {
		t.Error("an OVF without firmware")
	}
	s = testSpec()
	s.Capacity = 0
	if _, err := RenderOVF(s); err == nil {
		t.Error("an OVF without capacity")
	}
	// Names are escaped, not injected.
	s = testSpec()
	s.Name = `a"<b>&`
	b, err := RenderOVF(s)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := ParseOVF(bytes.NewReader(b)); err != nil || strings.Contains(string(b), "<b>") {
		t.Errorf("escaping: %v\n%s", err, b)
	}
}

func FuzzParseOVF(f *testing.F) {
	b, _ := RenderOVF(testSpec())
	f.Add(b)
	f.Fuzz(func(t *testing.T, b []byte) {
		info, err := ParseOVF(bytes.NewReader(b))
		if err != nil {
			return
		}
		if info.Capacity <= 0 || info.Capacity > MaxSize || info.Adapter == "" {
			t.Fatalf("accepted %+v", info)
		}
	})
}
