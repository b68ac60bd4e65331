package verify

import "testing"

func TestAutoCPUs(t *testing.T) {
	for _, c := range []struct {
		n, host     int
		kvm         bool
		fw          string
		uefiReboots bool
		want        int
	}{
		{1, 2, false, "bios", false, 2}, {2, 2, false, "bios", false, 1}, {3, 2, false, "bios", false, 1}, {2, 8, false, "bios", false, 2},
		{1, 1, false, "bios", false, 1}, {0, 2, false, "bios", false, 2}, {4, 2, true, "bios", false, 2},
		// OVMF under TCG with one vCPU never comes back from a reboot
		// on QEMU 7.2; on 10.0 it does.
		{2, 2, false, "uefi", false, 2}, {4, 1, false, "uefi", false, 2},
		{2, 2, false, "uefi", true, 1}, {1, 2, false, "uefi", true, 2}, {2, 2, true, "uefi", true, 2},
	} {
		if got := AutoCPUs(c.n, c.kvm, c.host, c.fw, c.uefiReboots); got != c.want {
			t.Errorf("AutoCPUs(%d, kvm %v, %d host CPUs, %s, UEFI reboots with one %v) = %d, want %d", c.n, c.kvm, c.host, c.fw, c.uefiReboots, got, c.want)
		}
	}
}
