package disk

import (
	"bytes"
	"strings"
	"text/template"
)

// grubCfg is what bake's one grub.cfg says: PrepareTree renders it for a
// disk bake assembles (GRUB from the tree's own grub-mkimage), and
// PrepareCloudBoot for a cloud image base whose kernel changed (GRUB kept
// from the base). The two differ only in these fields.
type grubCfg struct {
	// Note follows "written by bake" in the header comment.
	Note string
	// Modules are loaded before the search: the partition table and the
	// filesystem, and for bake's own GRUB images all_video (BOOTX64.EFI
	// has it built in, and BIOS normal mode loads it from /boot/grub).
	Modules []string
	// EntryModules are loaded in the entry before Linux (gzio for a cloud
	// base, as its own grub.cfg loads it).
	EntryModules  []string
	Title         string // the menu entry's title
	KernelVersion string // /boot/vmlinuz-<KernelVersion>
	// SearchUUID is the filesystem that holds the kernel (root's, or a
	// separate /boot's), and Dir the kernel's directory on it: "/boot",
	// or "" on a separate /boot.
	SearchUUID, Dir string
	// Args is the kernel command line (root=, ro, the recipe's).
	Args   []string
	Initrd bool // load /boot/initrd.img-<KernelVersion>
}

var grubCfgTemplate = template.Must(template.New("grub.cfg").Funcs(template.FuncMap{
	"join": func(a []string) string { return strings.Join(a, " ") },
}).Parse(`# /boot/grub/grub.cfg written by bake{{.Note}}; rebuilt with every image, do not edit.
serial --unit=0 --speed=115200 --word=8 --parity=no --stop=1
terminal_input serial console
terminal_output serial console
set timeout_style=menu
set timeout=1
set default=0

{{range .Modules}}insmod {{.}}
{{end -}}
search --no-floppy --fs-uuid --set=root {{.SearchUUID}}

menuentry '{{.Title}}' --id bake-default {
{{- range .EntryModules}}
	insmod {{.}}
{{- end}}
	echo 'Loading Linux {{.KernelVersion}} ...'
	linux {{.Dir}}/vmlinuz-{{.KernelVersion}} {{join .Args}}
{{- if .Initrd}}
	echo 'Loading initial ramdisk ...'
	initrd {{.Dir}}/initrd.img-{{.KernelVersion}}
{{- end}}
}
`))

// renderGrubCfg renders c, refusing a kernel command line GRUB would
// interpret (kernelArgSafe).
func renderGrubCfg(c grubCfg) ([]byte, error) {
	if err := kernelArgSafe(strings.Join(c.Args, " ")); err != nil {
		return nil, err
	}
	var b bytes.Buffer
	if err := grubCfgTemplate.Execute(&b, c); err != nil {
		return nil, err
	}
	return b.Bytes(), nil
}
