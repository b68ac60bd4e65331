//go:build vm

package vm

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// As root, everything QEMU uses that only root may open reaches it as a
// descriptor: in a 0700 root directory, an OVMF guest with a Snapshot
// overlay over a raw disk, a seed, a qcow2 extra drive, an SMBIOS
// credential file (0600, root's: QEMU reads it at start or refuses to
// run), bake run's console FIFOs (OVMF's first lines come out of the
// output FIFO through Start's relay, and are logged) and the QMP socket
// (system_powerdown through it). Nothing of QEMU's is left after Stop.
func TestStartPassesDescriptors(t *testing.T) {
	needRootAndQEMU(t)
	d := t.TempDir()
	if err := os.Chmod(d, 0o700); err != nil {
		t.Fatal(err)
	}
	disk := filepath.Join(d, "disk.raw")
	data := filepath.Join(d, "data.qcow2")
	for _, c := range [][]string{{"create", "-q", "-f", "raw", disk, "64M"}, {"create", "-q", "-f", "qcow2", data, "16M"}} {
		if out, err := exec.Command("qemu-img", c...).CombinedOutput(); err != nil {
			t.Fatalf("qemu-img: %v %s", err, out)
		}
	}
	seed := filepath.Join(d, "seed.iso")
	cred := filepath.Join(d, "cred")
	for p, b := range map[string][]byte{seed: make([]byte, 1<<20), cred: []byte("io.systemd.credential:a=b")} {
		if err := os.WriteFile(p, b, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	pipe := filepath.Join(d, "console")
	var fifos []*os.File
	for _, ext := range []string{".in", ".out"} {
		if err := unix.Mkfifo(pipe+ext, 0o600); err != nil {
			t.Fatal(err)
		}
		f, err := os.OpenFile(pipe+ext, os.O_RDWR, 0)
		if err != nil {
			t.Fatal(err)
		}
		defer f.Close()
		fifos = append(fifos, f)
	}
	qmp := filepath.Join(d, "qmp.sock")
	v, err := Start(t.Context(), Config{Firmware: UEFI, Accel: AccelTCG, MemoryMiB: 256, Disk: disk, Snapshot: true, SeedISO: seed,
		ExtraDrives: []Drive{{Path: data, Format: "qcow2"}}, ExtraArgs: []string{"-smbios", "type=11,path=" + cred},
		SerialPipe: pipe, SerialLog: filepath.Join(d, "serial.log"), QMPSocket: qmp, NoReboot: true})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { v.Stop() })
	t.Logf("argv: %s", strings.Join(v.Args, " "))
	assertUnprivileged(t, v)
	for _, want := range []string{" -smbios type=11,path=/proc/self/fd/", " -chardev socket,id=serial0,fd=", " -chardev socket,id=qmp,fd="} {
		if !strings.Contains(strings.Join(v.Args, " "), want) {
			t.Errorf("argv lacks %q", want)
		}
	}
	if err := v.WaitSerial(t.Context(), "BdsDxe", time.Minute); err != nil {
		t.Fatal(err)
	}
	var got []byte
	buf := make([]byte, 4096)
	fifos[1].SetReadDeadline(time.Now().Add(10 * time.Second))
	for !bytes.Contains(got, []byte("BdsDxe")) {
		n, err := fifos[1].Read(buf)
		if err != nil {
			t.Fatalf("console output FIFO: %v after %q", err, got)
		}
		got = append(got, buf[:n]...)
	}
	if err := QMPCommand(t.Context(), qmp, "quit"); err != nil {
		t.Fatal(err)
	}
	select {
	case <-v.Exited():
	case <-time.After(30 * time.Second):
		t.Fatal("QEMU still runs 30 s after QMP quit")
	}
	if err := v.Stop(); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Lstat(qmp); !os.IsNotExist(err) {
		t.Errorf("QMP socket left after Stop: %v", err)
	}
	if _, err := os.Stat(v.Dir()); !os.IsNotExist(err) {
		t.Errorf("VM dir left after Stop: %v", err)
	}
}
