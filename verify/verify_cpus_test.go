package verify

import "testing"

func TestAutoCPUs(t *testing.T) {
	for _, c := range []struct {
		n, host int
		kvm     bool
		fw      string
		want    int
	}{
		{1, 2, false, "bios", 2}, {2, 2, false, "bios", 1}, {3, 2, false, "bios", 1}, {2, 8, false, "bios", 2},
		{1, 1, false, "bios", 1}, {0, 2, false, "bios", 2}, {4, 2, true, "bios", 2},
		// OVMF under TCG with one vCPU never comes back from a reboot.
		{2, 2, false, "uefi", 2}, {4, 1, false, "uefi", 2},
	} {
		if got := AutoCPUs(c.n, c.kvm, c.host, c.fw); got != c.want {
			t.Errorf("AutoCPUs(%d, kvm %v, %d host CPUs, %s) = %d, want %d", c.n, c.kvm, c.host, c.fw, got, c.want)
		}
	}
}
