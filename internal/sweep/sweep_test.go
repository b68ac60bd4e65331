package sweep

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"
)

func TestLeadingPID(t *testing.T) {
	for _, c := range []struct {
		name, prefix string
		pid          int
		ok           bool
	}{
		{"bake-link-1234-98765", "bake-link-", 1234, true},
		{"bake-link-3490247584", "bake-link-", 0, false}, // before owners were recorded
		{"bake-link-1234-", "bake-link-", 0, false},
		{"bake-link-x-1", "bake-link-", 0, false},
		{"bake-link-0012-1", "bake-link-", 0, false},
		{"bake-verify-1234-5", "bake-link-", 0, false},
		{".bake-work-77-boottest-123", ".bake-work-", 77, true},
		{".bake-work-boottest-123", ".bake-work-", 0, false},
	} {
		pid, ok := LeadingPID(c.name, c.prefix)
		if pid != c.pid || ok != c.ok {
			t.Errorf("LeadingPID(%q, %q) = %d, %v; want %d, %v", c.name, c.prefix, pid, ok, c.pid, c.ok)
		}
	}
}

func TestAlive(t *testing.T) {
	if !Alive(os.Getpid()) || !Alive(OwnerPID()) {
		t.Error("this process is not alive")
	}
	// Above any pid_max (at most 2^22): no such process.
	if Alive(1<<30) || Alive(0) || Alive(-1) {
		t.Error("a PID that cannot exist is alive")
	}
	// A zombie (exited, not yet reaped) is not alive: its work dir is free.
	cmd := exec.Command("true")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	pid := cmd.Process.Pid
	defer cmd.Wait()
	deadline := time.Now().Add(10 * time.Second)
	for {
		b, _ := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
		if i := bytes.LastIndexByte(b, ')'); i >= 0 && i+2 < len(b) && b[i+2] == 'Z' {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("process %d never became a zombie: %s", pid, b)
		}
		time.Sleep(10 * time.Millisecond)
	}
	if Alive(pid) {
		t.Errorf("zombie %d counts as alive", pid)
	}
}

func TestMkdirTempNamesItsOwner(t *testing.T) {
	d, err := MkdirTemp(t.TempDir(), "bake-x-")
	if err != nil {
		t.Fatal(err)
	}
	pid, ok := LeadingPID(filepath.Base(d), "bake-x-")
	if !ok || pid != OwnerPID() {
		t.Errorf("%s: owner %d, %v; want %d", d, pid, ok, OwnerPID())
	}
	if pid != os.Getpid() {
		// Outside a PID namespace of its own, /proc and os agree.
		t.Logf("OwnerPID %d, os.Getpid %d (a PID namespace)", pid, os.Getpid())
	}
	if fi, err := os.Stat(d); err != nil || fi.Mode().Perm() != 0o700 {
		t.Errorf("%v %v", fi, err)
	}
}

// The policy, case by case: only dirs of this prefix whose owner is shown
// gone go; a live owner's, ours, a kept one, a locked one, an ownerless
// one younger than MaxAge, a file, and a dir that cannot be removed (a
// mount below it) stay.
func TestSweep(t *testing.T) {
	tmp := t.TempDir()
	const dead, live = 4000001, 4000002
	self := OwnerPID()
	mk := func(name string, files ...string) string {
		p := filepath.Join(tmp, name)
		os.MkdirAll(filepath.Join(p, "sub"), 0o755)
		os.WriteFile(filepath.Join(p, "sub", "disk.qcow2"), []byte("x"), 0o644)
		for _, f := range files {
			os.WriteFile(filepath.Join(p, f), nil, 0o644)
		}
		return p
	}
	gone := mk(fmt.Sprintf("bake-w-%d-1", dead))
	mk(fmt.Sprintf("bake-w-%d-2", live))
	mk(fmt.Sprintf("bake-w-%d-3", self))
	mk(fmt.Sprintf("bake-w-%d-4", dead), ".kept")
	locked := mk(fmt.Sprintf("bake-w-%d-5", dead), ".lock")
	freeLock := mk(fmt.Sprintf("bake-w-%d-6", dead), ".lock")
	mounted := mk(fmt.Sprintf("bake-w-%d-7", dead))
	// Its owner's PID still shows, but its lock (which exists only once
	// locked) is free: the owner has ended (a killed build whose PID
	// namespace the kernel is still tearing down).
	liveFreeLock := mk(fmt.Sprintf("bake-w-%d-9", live), ".lock")
	mk("bake-w-2393829905")                          // no owner, young
	legacyFree := mk("bake-w-2393829906", ".lock")   // no owner, its lock free: dead
	legacyLocked := mk("bake-w-2393829907", ".lock") // no owner, locked: alive
	old := mk("bake-w-1111111111")
	past := time.Now().Add(-2 * time.Hour)
	os.Chtimes(old, past, past)
	mk(fmt.Sprintf("bake-other-%d-1", dead))
	os.WriteFile(filepath.Join(tmp, fmt.Sprintf("bake-w-%d-8", dead)), nil, 0o644) // a file

	for _, d := range []string{locked, legacyLocked} {
		f, err := os.Open(filepath.Join(d, ".lock"))
		if err != nil {
			t.Fatal(err)
		}
		defer f.Close()
		if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX); err != nil {
			t.Fatal(err)
		}
	}

	s := Sweep{Dir: tmp, Prefix: "bake-w-", MaxAge: time.Hour, Keep: ".kept", Lock: ".lock",
		Alive: func(pid int) bool { return pid == live },
		Remove: func(p string) error {
			if p == mounted {
				return fmt.Errorf("mount points below directory %s: %s/x", p, p)
			}
			return os.RemoveAll(p)
		},
	}
	removed, err := s.Run()
	if err == nil || !strings.Contains(err.Error(), mounted) {
		t.Errorf("error %v, want one naming the dir with a mount below it", err)
	}
	want := []string{gone, freeLock, old, legacyFree, liveFreeLock}
	slices.Sort(want)
	slices.Sort(removed)
	if !slices.Equal(removed, want) {
		t.Errorf("removed %v, want %v", removed, want)
	}
	ents, _ := os.ReadDir(tmp)
	if len(ents) != 9 {
		var n []string
		for _, e := range ents {
			n = append(n, e.Name())
		}
		t.Errorf("left %v, want 9 entries", n)
	}

	// Without MaxAge an ownerless dir never goes; by default a dir with a
	// mount below it is refused by mounts.RemoveAllSafe, which reads the
	// real mount table: a plain dir of a dead owner goes.
	s = Sweep{Dir: tmp, Prefix: "bake-w-", Lock: ".lock", Alive: func(pid int) bool { return pid == live }}
	os.Chtimes(filepath.Join(tmp, "bake-w-2393829905"), past, past)
	removed, err = s.Run()
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range removed {
		if !strings.HasPrefix(filepath.Base(p), fmt.Sprintf("bake-w-%d-", dead)) || p == locked {
			t.Errorf("removed %s", p)
		}
	}
	if _, err := os.Stat(filepath.Join(tmp, "bake-w-2393829905")); err != nil {
		t.Error("an ownerless dir went with MaxAge 0")
	}
}

// A dir that another sweep removed between the listing and the removal is
// not an error.
func TestSweepRace(t *testing.T) {
	tmp := t.TempDir()
	os.Mkdir(filepath.Join(tmp, "bake-w-4000001-1"), 0o755)
	removed, err := Sweep{Dir: tmp, Prefix: "bake-w-", Alive: func(int) bool { return false },
		Remove: func(p string) error {
			os.RemoveAll(p)
			return errors.New("vanished")
		}}.Run()
	if err != nil || len(removed) != 0 {
		t.Errorf("removed %v, %v", removed, err)
	}
	// A missing Dir has nothing stale.
	if removed, err := (Sweep{Dir: filepath.Join(tmp, "none"), Prefix: "x"}).Run(); err != nil || removed != nil {
		t.Errorf("%v %v", removed, err)
	}
}

// TestClaim: a name is held until released; a second claim fails while
// it is held; release is idempotent.
func TestClaim(t *testing.T) {
	rel, ok := Claim("bake-test-claim-1")
	if !ok {
		t.Fatal("first claim refused")
	}
	if _, ok := Claim("bake-test-claim-1"); ok {
		t.Fatal("second claim of a held name granted")
	}
	if r2, ok := Claim("bake-test-claim-2"); !ok {
		t.Fatal("another name refused")
	} else {
		r2()
	}
	rel()
	rel()
	rel3, ok := Claim("bake-test-claim-1")
	if !ok {
		t.Fatal("a released name refused")
	}
	rel3()
}
