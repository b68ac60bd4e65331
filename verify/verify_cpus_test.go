package verify

import "testing"

func TestAutoCPUs(t *testing.T) {
	for _, c := range []struct {
		n, host int
		kvm     bool
		want    int
	}{
		{1, 2, false, 2}, {2, 2, false, 1}, {3, 2, false, 1}, {2, 8, false, 2},
		{1, 1, false, 1}, {0, 2, false, 2}, {4, 2, true, 2},
	} {
		if got := AutoCPUs(c.n, c.kvm, c.host); got != c.want {
			t.Errorf("AutoCPUs(%d, kvm %v, %d host CPUs) = %d, want %d", c.n, c.kvm, c.host, got, c.want)
		}
	}
}
