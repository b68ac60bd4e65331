package dpkg

import (
	"os"
	"path/filepath"
	"reflect"
	"testing"
)

const dpkgStatus = `Package: libc6
Status: install ok installed
Priority: optional
Architecture: amd64
Multi-Arch: same
Version: 2.36-9+deb12u10
Description: GNU C Library: Shared libraries
 Contains the standard libraries
 .
 Status: not a field

Package: removed-pkg
Status: deinstall ok config-files
Architecture: amd64
Version: 1.0

Package: base-files
Essential: yes
Status: hold ok installed
Architecture: amd64
Version: 12.4+deb12u11

Package: libc6
Status: install ok installed
Architecture: i386
Version: 2.36-9+deb12u10
`

func TestInstalledPackages(t *testing.T) {
	tree := t.TempDir()
	if err := os.MkdirAll(filepath.Join(tree, "var/lib/dpkg"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(tree, "var/lib/dpkg/status"), []byte(dpkgStatus), 0o644); err != nil {
		t.Fatal(err)
	}
	got, err := InstalledPackages(tree)
	if err != nil {
		t.Fatal(err)
	}
	want := []Package{
		{"base-files", "12.4+deb12u11", "amd64"},
		{"libc6", "2.36-9+deb12u10", "amd64"},
		{"libc6", "2.36-9+deb12u10", "i386"},
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("got %+v", got)
	}
}
