package convert

import (
	"bytes"
	"encoding/xml"
	"errors"
	"fmt"
	"io"
	"strconv"
	"strings"
)

// The OVF descriptor: OVF 1.0 (DSP0243 1.x, namespace envelope/1), the
// version VMware's ovftool writes and every importer reads (vSphere,
// Workstation/Fusion, VirtualBox). VMware-specific settings (firmware,
// Secure Boot) are vmw:Config elements, which other importers ignore.
//
// Virtual hardware, chosen for a Debian (or Ubuntu) guest whose kernel has
// the drivers built as modules and an initramfs made with MODULES=most:
//   - disk on an LSI Logic parallel SCSI controller (rasd:ResourceType 6,
//     subtype lsilogic; mptspi), matching the vmdk's ddb.adapterType
//     (VMDKAdapter). SATA/AHCI has no vmdk adapter type to match (qemu-img
//     would write ide), and pvscsi none either.
//   - a VMXNET3 NIC (ResourceType 10; vmxnet3 module): VMware's paravirtual
//     NIC, its recommendation for Linux guests; networkd matches any name.
//   - an IDE controller with an empty CD-ROM drive, where a NoCloud seed
//     ISO (docs/seed.md) is attached (ata_piix, sr_mod).
//   - firmware efi when the image boots UEFI (bake's images boot both; UEFI
//     is chosen then, as vSphere does for new 64-bit Linux VMs), Secure
//     Boot off: BOOTX64.EFI is GRUB from grub-mkimage, unsigned.

const (
	nsOVF  = "http://schemas.dmtf.org/ovf/envelope/1"
	nsRASD = "http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/CIM_ResourceAllocationSettingData"
	nsVSSD = "http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/CIM_VirtualSystemSettingData"
	nsVMW  = "http://www.vmware.com/schema/ovf"
	nsXSI  = "http://www.w3.org/2001/XMLSchema-instance"

	// VMDKStreamFormat is the ovf:format of a streamOptimized vmdk.
	VMDKStreamFormat = "http://www.vmware.com/interfaces/specifications/vmdk.html#streamOptimized"

	// CIM resource types (CIM_ResourceAllocationSettingData.ResourceType).
	rtCPU      = 3
	rtMemory   = 4
	rtIDE      = 5
	rtSCSI     = 6
	rtNIC      = 10
	rtCDROM    = 15
	rtDisk     = 17
	rtSATA     = 20
	ovfNetwork = "VM Network"
	// VirtualSystemType: hardware version 14 (ESXi 6.7, Workstation 15):
	// the oldest that still gets updates and knows EFI with Secure Boot
	// settings.
	ovfHardware = "vmx-14"
	// The NIC's ResourceSubType.
	ovfNIC = "VmxNet3"
)

// ovfControllers maps a disk controller (ResourceType, ResourceSubType) to
// the vmdk ddb.adapterType VMware expects for disks on it.
var ovfControllers = map[string]string{
	"6/lsilogic":          "lsilogic",
	"6/lsilogicsas":       "lsilogic",
	"6/VirtualSCSI":       "lsilogic", // pvscsi
	"6/buslogic":          "buslogic",
	"5/PIIX4":             "ide",
	"5/":                  "ide",
	"20/vmware.sata.ahci": "ide",
}

// guestType is the OVF's operating system: the CIM id and VMware's guest id.
func guestType(osID string) (cim int, vmw, desc string) {
	switch osID {
	case "debian":
		// debian10_64Guest: known to ESXi 6.7 and later (debian12_64Guest
		// only to 8.0); the guest's drivers are what matters.
		return 96, "debian10_64Guest", "Debian GNU/Linux (64-bit)"
	case "ubuntu":
		return 94, "ubuntu64Guest", "Ubuntu Linux (64-bit)"
	}
	return 101, "otherLinux64Guest", "Linux (64-bit)"
}

// OVFSpec is what the descriptor describes.
type OVFSpec struct {
	Name      string
	DiskFile  string // the vmdk's name in the OVA
	DiskBytes int64  // the vmdk file's size
	Capacity  int64  // the disk's virtual size in bytes
	Firmware  Firmware
	OS        string // os-release ID
	OSName    string // PRETTY_NAME, optional
	CPUs      int
	MemoryMiB int
}

// Elements written with their prefixes (encoding/xml writes a tag's name as
// given); ParseOVF reads them back by namespace, independently.
type ovfOut struct {
	XMLName    xml.Name `xml:"Envelope"`
	NS         string   `xml:"xmlns,attr"`
	NSOVF      string   `xml:"xmlns:ovf,attr"`
	NSRASD     string   `xml:"xmlns:rasd,attr"`
	NSVSSD     string   `xml:"xmlns:vssd,attr"`
	NSVMW      string   `xml:"xmlns:vmw,attr"`
	NSXSI      string   `xml:"xmlns:xsi,attr"`
	References struct {
		File []ovfOutFile `xml:"File"`
	} `xml:"References"`
	DiskSection struct {
		Info string       `xml:"Info"`
		Disk []ovfOutDisk `xml:"Disk"`
	} `xml:"DiskSection"`
	NetworkSection struct {
		Info    string `xml:"Info"`
		Network []struct {
			Name        string `xml:"ovf:name,attr"`
			Description string `xml:"Description"`
		} `xml:"Network"`
	} `xml:"NetworkSection"`
	VirtualSystem ovfOutSystem `xml:"VirtualSystem"`
}

type ovfOutFile struct {
	Href string `xml:"ovf:href,attr"`
	ID   string `xml:"ovf:id,attr"`
	Size int64  `xml:"ovf:size,attr"`
}

type ovfOutDisk struct {
	Capacity      int64  `xml:"ovf:capacity,attr"`
	CapacityUnits string `xml:"ovf:capacityAllocationUnits,attr"`
	DiskID        string `xml:"ovf:diskId,attr"`
	FileRef       string `xml:"ovf:fileRef,attr"`
	Format        string `xml:"ovf:format,attr"`
}

type ovfOutSystem struct {
	ID   string `xml:"ovf:id,attr"`
	Info string `xml:"Info"`
	Name string `xml:"Name"`
	OS   struct {
		ID          int    `xml:"ovf:id,attr"`
		OSType      string `xml:"vmw:osType,attr"`
		Info        string `xml:"Info"`
		Description string `xml:"Description"`
	} `xml:"OperatingSystemSection"`
	Hardware struct {
		Info   string `xml:"Info"`
		System struct {
			ElementName string `xml:"vssd:ElementName"`
			InstanceID  int    `xml:"vssd:InstanceID"`
			Identifier  string `xml:"vssd:VirtualSystemIdentifier"`
			Type        string `xml:"vssd:VirtualSystemType"`
		} `xml:"System"`
		Items  []ovfOutItem   `xml:"Item"`
		Config []ovfOutConfig `xml:"vmw:Config"`
	} `xml:"VirtualHardwareSection"`
}

// ovfOutItem's fields are in the CIM schema's (alphabetical) order, which
// schema-validating importers (ovftool) insist on.
type ovfOutItem struct {
	Address             string `xml:"rasd:Address,omitempty"`
	AddressOnParent     string `xml:"rasd:AddressOnParent,omitempty"`
	AllocationUnits     string `xml:"rasd:AllocationUnits,omitempty"`
	AutomaticAllocation string `xml:"rasd:AutomaticAllocation,omitempty"`
	Connection          string `xml:"rasd:Connection,omitempty"`
	Description         string `xml:"rasd:Description,omitempty"`
	ElementName         string `xml:"rasd:ElementName"`
	HostResource        string `xml:"rasd:HostResource,omitempty"`
	InstanceID          int    `xml:"rasd:InstanceID"`
	Parent              string `xml:"rasd:Parent,omitempty"`
	ResourceSubType     string `xml:"rasd:ResourceSubType,omitempty"`
	ResourceType        int    `xml:"rasd:ResourceType"`
	VirtualQuantity     string `xml:"rasd:VirtualQuantity,omitempty"`
}

type ovfOutConfig struct {
	Required string `xml:"ovf:required,attr"`
	Key      string `xml:"vmw:key,attr"`
	Value    string `xml:"vmw:value,attr"`
}

// RenderOVF writes the descriptor of spec.
func RenderOVF(spec OVFSpec) ([]byte, error) {
	if spec.Firmware != BIOS && spec.Firmware != UEFI {
		return nil, fmt.Errorf("ovf: firmware %q: want bios or uefi", spec.Firmware)
	}
	if spec.Capacity <= 0 || spec.DiskBytes <= 0 || spec.DiskFile == "" || spec.Name == "" || spec.CPUs <= 0 || spec.MemoryMiB <= 0 {
		return nil, fmt.Errorf("ovf: incomplete spec %+v", spec)
	}
	e := ovfOut{NS: nsOVF, NSOVF: nsOVF, NSRASD: nsRASD, NSVSSD: nsVSSD, NSVMW: nsVMW, NSXSI: nsXSI}
	e.References.File = []ovfOutFile{{Href: spec.DiskFile, ID: "file1", Size: spec.DiskBytes}}
	e.DiskSection.Info = "Virtual disk information"
	e.DiskSection.Disk = []ovfOutDisk{{Capacity: spec.Capacity, CapacityUnits: "byte", DiskID: "vmdisk1", FileRef: "file1", Format: VMDKStreamFormat}}
	e.NetworkSection.Info = "The list of logical networks"
	e.NetworkSection.Network = append(e.NetworkSection.Network, struct {
		Name        string `xml:"ovf:name,attr"`
		Description string `xml:"Description"`
	}{ovfNetwork, "The " + ovfNetwork + " network"})
	vs := &e.VirtualSystem
	vs.ID, vs.Info, vs.Name = spec.Name, "A virtual machine made by bake", spec.Name
	cim, vmw, desc := guestType(spec.OS)
	if spec.OSName != "" {
		desc = spec.OSName
	}
	vs.OS.ID, vs.OS.OSType, vs.OS.Info, vs.OS.Description = cim, vmw, "The kind of installed guest operating system", desc
	hw := &vs.Hardware
	hw.Info = "Virtual hardware requirements"
	hw.System.ElementName, hw.System.InstanceID, hw.System.Identifier, hw.System.Type = "Virtual Hardware Family", 0, spec.Name, ovfHardware
	hw.Items = []ovfOutItem{
		{AllocationUnits: "hertz * 10^6", Description: "Number of Virtual CPUs", ElementName: fmt.Sprintf("%d virtual CPU(s)", spec.CPUs),
			InstanceID: 1, ResourceType: rtCPU, VirtualQuantity: strconv.Itoa(spec.CPUs)},
		{AllocationUnits: "byte * 2^20", Description: "Memory Size", ElementName: fmt.Sprintf("%dMB of memory", spec.MemoryMiB),
			InstanceID: 2, ResourceType: rtMemory, VirtualQuantity: strconv.Itoa(spec.MemoryMiB)},
		{Address: "0", Description: "SCSI Controller", ElementName: "SCSI controller 0", InstanceID: 3,
			ResourceSubType: "lsilogic", ResourceType: rtSCSI},
		{Address: "0", Description: "IDE Controller", ElementName: "IDE controller 0", InstanceID: 4, ResourceType: rtIDE},
		{AddressOnParent: "0", ElementName: "Hard disk 1", HostResource: "ovf:/disk/vmdisk1", InstanceID: 5, Parent: "3", ResourceType: rtDisk},
		{AddressOnParent: "0", AutomaticAllocation: "false", Description: "CD-ROM drive for a NoCloud seed", ElementName: "CD/DVD drive 1",
			InstanceID: 6, Parent: "4", ResourceType: rtCDROM},
		{AddressOnParent: "7", AutomaticAllocation: "true", Connection: ovfNetwork, Description: "VmxNet3 ethernet adapter on \"" + ovfNetwork + "\"",
			ElementName: "Network adapter 1", InstanceID: 7, ResourceSubType: ovfNIC, ResourceType: rtNIC},
	}
	fw := "bios"
	if spec.Firmware == UEFI {
		fw = "efi"
	}
	hw.Config = []ovfOutConfig{{"false", "firmware", fw}}
	if spec.Firmware == UEFI {
		hw.Config = append(hw.Config, ovfOutConfig{"false", "bootOptions.efiSecureBootEnabled", "false"})
	}
	b, err := xml.MarshalIndent(e, "", "  ")
	if err != nil {
		return nil, err
	}
	return append(append([]byte(xml.Header), b...), '\n'), nil
}

// What ParseOVF reads: the same elements, by namespace.
type ovfIn struct {
	XMLName    xml.Name `xml:"http://schemas.dmtf.org/ovf/envelope/1 Envelope"`
	References struct {
		File []struct {
			Href string `xml:"http://schemas.dmtf.org/ovf/envelope/1 href,attr"`
			ID   string `xml:"http://schemas.dmtf.org/ovf/envelope/1 id,attr"`
			Size string `xml:"http://schemas.dmtf.org/ovf/envelope/1 size,attr"`
		} `xml:"http://schemas.dmtf.org/ovf/envelope/1 File"`
	} `xml:"http://schemas.dmtf.org/ovf/envelope/1 References"`
	Disks []struct {
		Capacity string `xml:"http://schemas.dmtf.org/ovf/envelope/1 capacity,attr"`
		Units    string `xml:"http://schemas.dmtf.org/ovf/envelope/1 capacityAllocationUnits,attr"`
		DiskID   string `xml:"http://schemas.dmtf.org/ovf/envelope/1 diskId,attr"`
		FileRef  string `xml:"http://schemas.dmtf.org/ovf/envelope/1 fileRef,attr"`
		Format   string `xml:"http://schemas.dmtf.org/ovf/envelope/1 format,attr"`
	} `xml:"http://schemas.dmtf.org/ovf/envelope/1 DiskSection>Disk"`
	Networks []struct {
		Name string `xml:"http://schemas.dmtf.org/ovf/envelope/1 name,attr"`
	} `xml:"http://schemas.dmtf.org/ovf/envelope/1 NetworkSection>Network"`
	Systems []struct {
		ID string `xml:"http://schemas.dmtf.org/ovf/envelope/1 id,attr"`
		OS struct {
			ID     string `xml:"http://schemas.dmtf.org/ovf/envelope/1 id,attr"`
			OSType string `xml:"http://www.vmware.com/schema/ovf osType,attr"`
		} `xml:"http://schemas.dmtf.org/ovf/envelope/1 OperatingSystemSection"`
		Hardware []struct {
			System struct {
				Type string `xml:"http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/CIM_VirtualSystemSettingData VirtualSystemType"`
			} `xml:"http://schemas.dmtf.org/ovf/envelope/1 System"`
			Items []struct {
				InstanceID      string `xml:"http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/CIM_ResourceAllocationSettingData InstanceID"`
				ResourceType    string `xml:"http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/CIM_ResourceAllocationSettingData ResourceType"`
				ResourceSubType string `xml:"http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/CIM_ResourceAllocationSettingData ResourceSubType"`
				Parent          string `xml:"http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/CIM_ResourceAllocationSettingData Parent"`
				HostResource    string `xml:"http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/CIM_ResourceAllocationSettingData HostResource"`
				Connection      string `xml:"http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/CIM_ResourceAllocationSettingData Connection"`
				VirtualQuantity string `xml:"http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/CIM_ResourceAllocationSettingData VirtualQuantity"`
			} `xml:"http://schemas.dmtf.org/ovf/envelope/1 Item"`
			Config []struct {
				Key   string `xml:"http://www.vmware.com/schema/ovf key,attr"`
				Value string `xml:"http://www.vmware.com/schema/ovf value,attr"`
			} `xml:"http://www.vmware.com/schema/ovf Config"`
		} `xml:"http://schemas.dmtf.org/ovf/envelope/1 VirtualHardwareSection"`
	} `xml:"http://schemas.dmtf.org/ovf/envelope/1 VirtualSystem"`
}

// OVFInfo is what ParseOVF found, resolved: the one disk, the file it
// refers to, the controller it sits on and the VMware settings.
type OVFInfo struct {
	DiskFile      string // References/File href of the disk
	DiskFileSize  int64
	Capacity      int64 // bytes
	DiskFormat    string
	ControllerRT  int    // the disk's parent item's ResourceType
	ControllerSub string // and ResourceSubType
	Adapter       string // the vmdk adapter type that controller wants
	NICs          []string
	Firmware      string            // vmw:Config firmware (efi, bios)
	Config        map[string]string // every vmw:Config key
	OSType        string
	HardwareType  string
}

// MaxOVFSize bounds the descriptor bake reads back.
const MaxOVFSize = 1 << 20

// capacityUnits turns ovf:capacityAllocationUnits ("byte", "byte * 2^30")
// into a multiplier.
func capacityUnits(u string) (int64, error) {
	u = strings.TrimSpace(u)
	if u == "" || u == "byte" {
		return 1, nil
	}
	base, exp, ok := strings.Cut(strings.ReplaceAll(u, " ", ""), "^")
	if !ok || base != "byte*2" {
		return 0, fmt.Errorf("ovf: capacity units %q not understood", u)
	}
	n, err := strconv.Atoi(exp)
	if err != nil || n < 0 || n > 40 {
		return 0, fmt.Errorf("ovf: capacity units %q not understood", u)
	}
	return 1 << n, nil
}

// ParseOVF parses a descriptor of one virtual system with one disk and
// resolves the disk's file, capacity and controller. It reads at most
// MaxOVFSize bytes.
func ParseOVF(r io.Reader) (*OVFInfo, error) {
	b, err := io.ReadAll(io.LimitReader(r, MaxOVFSize+1))
	if err != nil {
		return nil, err
	}
	if len(b) > MaxOVFSize {
		return nil, fmt.Errorf("ovf: descriptor larger than %d bytes", MaxOVFSize)
	}
	var e ovfIn
	d := xml.NewDecoder(bytes.NewReader(b))
	if err := d.Decode(&e); err != nil {
		return nil, fmt.Errorf("ovf: %w", err)
	}
	if len(e.Systems) != 1 || len(e.Systems[0].Hardware) != 1 {
		return nil, fmt.Errorf("ovf: %d virtual systems, want one with one VirtualHardwareSection", len(e.Systems))
	}
	if len(e.Disks) != 1 || len(e.References.File) != 1 {
		return nil, fmt.Errorf("ovf: %d disks and %d files, want one of each", len(e.Disks), len(e.References.File))
	}
	disk, file := e.Disks[0], e.References.File[0]
	if disk.FileRef != file.ID {
		return nil, fmt.Errorf("ovf: disk refers to file %q, the file is %q", disk.FileRef, file.ID)
	}
	info := &OVFInfo{DiskFile: file.Href, DiskFormat: disk.Format, Config: map[string]string{}, OSType: e.Systems[0].OS.OSType}
	if info.DiskFileSize, err = strconv.ParseInt(file.Size, 10, 64); err != nil || info.DiskFileSize <= 0 {
		return nil, fmt.Errorf("ovf: file size %q", file.Size)
	}
	unit, err := capacityUnits(disk.Units)
	if err != nil {
		return nil, err
	}
	c, err := strconv.ParseInt(disk.Capacity, 10, 64)
	if err != nil || c <= 0 || c > MaxSize/unit {
		return nil, fmt.Errorf("ovf: disk capacity %q", disk.Capacity)
	}
	info.Capacity = c * unit
	hw := e.Systems[0].Hardware[0]
	info.HardwareType = hw.System.Type
	byID := map[string]int{}
	for i, it := range hw.Items {
		byID[strings.TrimSpace(it.InstanceID)] = i
	}
	diskItem := -1
	for i, it := range hw.Items {
		switch strings.TrimSpace(it.ResourceType) {
		case strconv.Itoa(rtDisk):
			if strings.TrimSpace(it.HostResource) == "ovf:/disk/"+disk.DiskID {
				if diskItem >= 0 {
					return nil, errors.New("ovf: the disk is attached twice")
				}
				diskItem = i
			}
		case strconv.Itoa(rtNIC):
			info.NICs = append(info.NICs, strings.TrimSpace(it.ResourceSubType))
		}
	}
	if diskItem < 0 {
		return nil, fmt.Errorf("ovf: no Item attaches ovf:/disk/%s", disk.DiskID)
	}
	pi, ok := byID[strings.TrimSpace(hw.Items[diskItem].Parent)]
	if !ok {
		return nil, fmt.Errorf("ovf: the disk's controller %q is not an Item", hw.Items[diskItem].Parent)
	}
	ctl := hw.Items[pi]
	info.ControllerRT, _ = strconv.Atoi(strings.TrimSpace(ctl.ResourceType))
	info.ControllerSub = strings.TrimSpace(ctl.ResourceSubType)
	if info.Adapter, ok = ovfControllers[fmt.Sprintf("%d/%s", info.ControllerRT, info.ControllerSub)]; !ok {
		return nil, fmt.Errorf("ovf: the disk's controller (ResourceType %d, subtype %q) is not one bake knows", info.ControllerRT, info.ControllerSub)
	}
	for _, c := range hw.Config {
		info.Config[c.Key] = c.Value
	}
	info.Firmware = info.Config["firmware"]
	return info, nil
}

// Check checks the descriptor against the vmdk it came with and the way the
// image boots: the file and its size, the capacity, the streamOptimized
// format, the controller matching the vmdk's adapter type, a NIC, the
// firmware and, for UEFI, Secure Boot off.
func (o *OVFInfo) Check(diskFile string, diskBytes int64, v *VMDKInfo, fw Firmware) error {
	wantFW := map[Firmware]string{BIOS: "bios", UEFI: "efi"}[fw]
	switch {
	case o.DiskFile != diskFile || o.DiskFileSize != diskBytes:
		return fmt.Errorf("ovf: file %q of %d bytes, the OVA holds %q of %d", o.DiskFile, o.DiskFileSize, diskFile, diskBytes)
	case o.DiskFormat != VMDKStreamFormat:
		return fmt.Errorf("ovf: disk format %q, want %s", o.DiskFormat, VMDKStreamFormat)
	case o.Capacity != v.Capacity:
		return fmt.Errorf("ovf: disk capacity %d bytes, the vmdk's is %d", o.Capacity, v.Capacity)
	case o.Adapter != v.Adapter:
		return fmt.Errorf("ovf: the disk's controller (ResourceType %d %q) wants vmdk adapter %q, the vmdk says %q", o.ControllerRT, o.ControllerSub, o.Adapter, v.Adapter)
	case len(o.NICs) == 0:
		return errors.New("ovf: no network adapter")
	case o.Firmware != wantFW:
		return fmt.Errorf("ovf: firmware %q, want %q", o.Firmware, wantFW)
	case fw == UEFI && o.Config["bootOptions.efiSecureBootEnabled"] != "false":
		return fmt.Errorf("ovf: bootOptions.efiSecureBootEnabled %q, want false (the UEFI loader is unsigned)", o.Config["bootOptions.efiSecureBootEnabled"])
	}
	return nil
}
