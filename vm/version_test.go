package vm

import "testing"

func TestParseQEMUVersion(t *testing.T) {
	for _, c := range []struct {
		in         string
		maj, min   int
		shouldFail bool
	}{
		{"QEMU emulator version 10.0.2 (Debian 1:10.0.2+ds-2+deb13u1~bpo12+1)\nCopyright (c) 2003-2025 Fabrice Bellard\n", 10, 0, false},
		{"QEMU emulator version 7.2.22 (Debian 1:7.2+dfsg-7+deb12u18+b3)\n", 7, 2, false},
		{"QEMU emulator version 8.2.2 (Debian 1:8.2.2+ds-0ubuntu1)", 8, 2, false},
		{"qemu-img version 10.0.2\n", 0, 0, true},
		{"", 0, 0, true},
		{"QEMU emulator version 99999999999999999999.1", 0, 0, true},
	} {
		maj, min, err := parseQEMUVersion(c.in)
		if (err != nil) != c.shouldFail || maj != c.maj || min != c.min {
			t.Errorf("parseQEMUVersion(%q) = %d, %d, %v", c.in, maj, min, err)
		}
	}
}
