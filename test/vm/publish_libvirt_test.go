//go:build vm

package vmtest

import (
	"crypto/ed25519"
	"crypto/rand"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	libvirt "github.com/digitalocean/go-libvirt"
	"golang.org/x/crypto/ssh"

	"github.com/bakeimg/bake/internal/libvirttest"
	"github.com/bakeimg/bake/vm"
)

// TestPublishLibvirtBoot: `bake publish IMAGE --to libvirt://POOL/NAME
// --start` on a real libvirtd (Debian's, private, started by the test in
// a namespace of its own: libvirttest) boots the domain it defined: the
// seed bake made from --admin-key reaches the guest, and that key logs
// in over SSH through the forward of 127.0.0.1:PORT (user-mode
// networking: nothing but loopback; on Debian 12's libvirt 9.0, QEMU's user
// network with a hostfwd passed through <qemu:commandline>, as libvirt
// before 9.2 has no passt backend). The image volume still holds the
// image's bytes after the guest ran (the guest writes to the overlay);
// a re-publish changes nothing. Everything libvirtd started (QEMU,
// virtlogd) dies with its namespace when the test ends.
//
// The image is the Debian cloud fixture (cloud-init, sshd, the user
// debian; the boot-test image has no sshd), with a build manifest written
// beside a copy of it.
func TestPublishLibvirtBoot(t *testing.T) {
	parallel(t) // slot by its BENCHMARKS.md budget
	requireTools(t, "qemu-img", "qemu-system-x86_64", "libvirtd", "virtlogd")
	fx := debianFixture(t)
	dir := t.TempDir()
	img := filepath.Join(dir, "debian.qcow2")
	if out, err := exec.Command("cp", "--sparse=always", fx.path, img).CombinedOutput(); err != nil {
		t.Fatalf("%v: %s", err, out)
	}
	sum := fileSum(t, img)
	m := map[string]any{
		"bake_version": "test", "recipe": map[string]any{"name": "debian-cloud-fixture"}, "source_date_epoch": 1700000000,
		"outputs": []map[string]any{{"file": "debian.qcow2", "format": "qcow2", "sha256": sum}},
	}
	mb, _ := json.Marshal(m)
	if err := os.WriteFile(filepath.Join(dir, "debian.manifest.json"), mb, 0o644); err != nil {
		t.Fatal(err)
	}
	pub, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	signer, _ := ssh.NewSignerFromKey(priv)
	sp, _ := ssh.NewPublicKey(pub)
	keyFile := filepath.Join(dir, "admin.pub")
	if err := os.WriteFile(keyFile, ssh.MarshalAuthorizedKey(sp), 0o644); err != nil {
		t.Fatal(err)
	}

	d := libvirttest.Start(t)
	poolDir := d.DirPool(t, "bake")
	port, err := vm.FreePort()
	if err != nil {
		t.Fatal(err)
	}
	t0 := time.Now()
	args := []string{"publish", img, "--to", "libvirt://bake/deb", "--connect", d.URI, "--virt-type", "qemu",
		"--admin-key", keyFile, "--ssh-forward", strconv.Itoa(port), "--start",
		"--memory", "1024", "--cpus", strconv.Itoa(vmCPUs(vm.BIOS))}
	out, err := exec.Command(bake(t), args...).CombinedOutput()
	if err != nil {
		t.Fatalf("bake publish: %v\n%s", err, out)
	}
	t.Logf("bake publish (%s):\n%s", since(t0), out)
	l, err := d.Connect()
	if err != nil {
		t.Fatal(err)
	}
	defer l.Disconnect()
	dom, err := l.DomainLookupByName("deb")
	if err != nil {
		t.Fatal(err)
	}
	if st, _, err := l.DomainGetState(dom, 0); err != nil || libvirt.DomainState(st) != libvirt.DomainRunning {
		t.Fatalf("domain deb: state %d (%v), want running", st, err)
	}

	deadline := time.Now().Add(10 * time.Minute)
	var client *ssh.Client
	for {
		client, err = dialSSH(port, "debian", ssh.PublicKeys(signer))
		if err == nil {
			break
		}
		if st, _, e := l.DomainGetState(dom, 0); e != nil || libvirt.DomainState(st) != libvirt.DomainRunning {
			t.Fatalf("domain deb stopped (state %d, %v) before SSH answered", st, e)
		}
		if time.Now().After(deadline) {
			t.Fatalf("no SSH login as debian on 127.0.0.1:%d: %v", port, err)
		}
		time.Sleep(3 * time.Second)
	}
	t.Logf("logged in after %s", since(t0))
	sess, err := client.NewSession()
	if err != nil {
		t.Fatal(err)
	}
	got, err := sess.CombinedOutput("id -un; echo libvirt-$((6*7)); cat /sys/class/net/*/device/uevent 2>/dev/null | grep -c virtio; ls /sys/block")
	sess.Close()
	client.Close()
	if err != nil || !strings.HasPrefix(string(got), "debian\nlibvirt-42\n") || !strings.Contains(string(got), "vda") {
		t.Errorf("over SSH: %v, output %q; want debian, libvirt-42 and a virtio disk vda", err, got)
	}
	// The guest wrote to the overlay, never to the image volume.
	if s := fileSum(t, filepath.Join(poolDir, "deb.image.qcow2")); s != sum {
		t.Errorf("image volume after the boot: sha256 %s, image %s", s, sum)
	}
	// A re-publish: nothing done, the domain keeps running.
	out, err = exec.Command(bake(t), args...).CombinedOutput()
	if err != nil || !strings.Contains(string(out), "nothing to upload or define") {
		t.Errorf("re-publish: %v\n%s", err, out)
	}
	if st, _, err := l.DomainGetState(dom, 0); err != nil || libvirt.DomainState(st) != libvirt.DomainRunning {
		t.Errorf("domain deb after the re-publish: state %d (%v), want running", st, err)
	}
}
