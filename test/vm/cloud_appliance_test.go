//go:build vm

package vmtest

import (
	"context"
	"os"
	"path/filepath"
	"reflect"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/bakeimg/bake/builder/recipe"
	"github.com/bakeimg/bake/verify"
)

const cloudApplianceRecipe = "test/vm/testdata/openclaw-cloud-test.yaml"

// cloudUserData is what a cloud's user-data may say, against the image's
// claims: password login on (cloud-init then writes "PasswordAuthentication
// yes" into sshd's configuration) and root's authorized keys without the
// "Please login as" restriction. The runcmd line shows on the serial
// console what cloud-init made of sshd's configuration.
const cloudUserData = `#cloud-config
# A cloud's user-data, merged by bake verify --user-data into its seed.
ssh_pwauth: true
disable_root: false
runcmd:
  - [sh, -c, 'echo "BAKE-USERDATA sshd: $(grep -rhi "^ *passwordauthentication" /etc/ssh/sshd_config /etc/ssh/sshd_config.d | tr "\n" ";")" >/dev/ttyS0']
`

// TestCloudApplianceVerify bakes the OpenClaw test appliance on the
// Debian-12-genericcloud-shaped fixture (whose cloud-init is live at boot)
// and runs bake verify on it under OVMF, strict, with user-data that turns
// password login on: the image must hold (password and root logins
// refused, every other claim too). Two instances, so that identity (the
// instances differ) and a reboot (each keeps its identity) are proven
// under OVMF too; TestVerifyAppliance (the packages-built appliance under
// SeaBIOS) proves them under SeaBIOS.
func TestCloudApplianceVerify(t *testing.T) {
	parallel(t) // slot by its BENCHMARKS.md budget
	requireTools(t, "nmap", "dnsmasq", "ip", "go", "qemu-img", "qemu-system-x86_64")
	fx := debianFixture(t)
	rp := filepath.Join(repoRoot(), cloudApplianceRecipe)
	baseSum := fileSum(t, fx.path)
	baseSets := []string{"--set", "base_image=" + fx.path, "--set", "base_sha256=" + baseSum}
	recipesInStep(t, fx.path, baseSum)

	// A work dir of this test's own: applianceImage's shared one belongs
	// to the packages-built appliance. BAKE_VMTEST_CLOUD_APPLIANCE_DIR
	// (iterating on the checks) keeps the image there and reuses it.
	work := t.TempDir()
	keep := os.Getenv("BAKE_VMTEST_CLOUD_APPLIANCE_DIR")
	if keep != "" {
		work = keep
		os.MkdirAll(work, 0o700)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Minute)
	defer cancel()
	t0 := time.Now()
	in, err := startApplianceInputs(ctx, work, true)
	if err != nil {
		t.Fatal(err)
	}
	defer in.Close()
	t.Logf("test gateway image and tailscale repository ready in %s", since(t0))
	out := filepath.Join(work, "out")
	img := filepath.Join(out, "openclaw-cloud-test.qcow2")
	if _, err := os.Stat(img); keep == "" || err != nil {
		t0 = time.Now()
		args := append(append([]string{"build", rp}, in.sets...), baseSets...)
		log, code := runBake(t, ctx, append(args, "-o", out)...)
		t.Logf("bake build on the Debian-shaped cloud image (%s):\n%s", since(t0), log)
		if code != 0 {
			t.Fatalf("bake build failed (%d)", code)
		}
	}
	in.Close()
	in.removeFiles()
	sum := fileSum(t, img)

	ud := filepath.Join(work, "user-data")
	if err := os.WriteFile(ud, []byte(cloudUserData), 0o644); err != nil {
		t.Fatal(err)
	}
	run := runVerify(t, ctx, append([]string{img, "--recipe", rp, "--set", "gateway_image=" + in.ref}, append(baseSets,
		"--user-data", ud, "--firmware", "uefi", "--instances", "2", "--strict", "--timeout", "40m",
		// Instance 1, the rebooted one, has SMBIOS credentials only, under
		// OVMF (was TestApplianceCredentialsUEFI's own boot): its login
		// and its token prove that path (and that the base's network
		// comes up with no datasource), identity.reboot that first boot
		// applied them once (its journal says "nothing to do" after the
		// reboot, the credentials still given).
		"--seed-via", "nocloud,smbios")...)...)
	requireAllPass(t, run)
	if a, b := run.report.Seeds["uefi-0"], run.report.Seeds["uefi-1"]; a != "nocloud" || b != "smbios" {
		t.Errorf("seeds %q: want uefi-0 nocloud, uefi-1 smbios", run.report.Seeds)
	}
	for _, x := range run.report.Results {
		if x.Firmware == "uefi" && x.ID == "identity.unique" && !strings.Contains(x.Evidence, "uefi-1 (seed via smbios) was given a token: its gateway has it") {
			t.Errorf("uefi/identity.unique evidence does not show the SMBIOS token arriving:\n%s", x.Evidence)
		}
	}
	for _, x := range run.report.Results {
		if x.Firmware == "uefi" && x.ID == "identity.reboot" && !strings.Contains(x.Evidence, "nothing to do") {
			t.Errorf("uefi/identity.reboot evidence does not show first boot doing nothing after the reboot:\n%s", x.Evidence)
		}
	}
	rec, err := recipe.LoadIn(repoRoot(), rp, map[string]string{"gateway_image": in.ref, "base_image": fx.path, "base_sha256": baseSum})
	if err != nil {
		t.Fatal(err)
	}
	spec, err := verify.SpecFromRecipe(rec)
	if err != nil {
		t.Fatal(err)
	}
	for _, id := range verify.Plan(spec, 2) {
		if st := run.report.status("uefi", id); st != "pass" {
			t.Errorf("uefi/%s: %q", id, st)
		}
	}
	if st := run.report.status("", "secrets.disk"); st != "pass" {
		t.Errorf("secrets.disk: %q", st)
	}
	if run.report.SHA256 != sum || fileSum(t, img) != sum {
		t.Errorf("report sha256 %s, image %s (it must not change)", run.report.SHA256, sum)
	}
	// The user-data reached cloud-init, which did turn password login on
	// in sshd's files: the checks above passed in spite of it.
	serial, err := os.ReadFile(filepath.Join(run.dir, "serial-uefi-0.log"))
	if err != nil {
		t.Fatalf("serial log: %v", err)
	}
	m := regexp.MustCompile(`BAKE-USERDATA sshd: ([^\r\n]*)`).FindSubmatch(serial)
	switch {
	case m == nil:
		t.Error("no BAKE-USERDATA line on the serial console: the user-data's runcmd did not run")
	case !regexp.MustCompile(`(?i)passwordauthentication\s+yes`).Match(m[1]):
		t.Errorf("cloud-init did not write PasswordAuthentication yes (ssh_pwauth: true): %s", m[1])
	default:
		t.Logf("sshd's files after cloud-init: %s", m[1])
	}
	assertVerifyCleanedUp(t, run.out)
}

// recipesInStep: the cloud-image recipe is the packages-built one with
// another base; everything else must stay the same in both files.
func recipesInStep(t *testing.T, baseImage, baseSHA string) {
	t.Helper()
	sets := map[string]string{"base_image": baseImage, "base_sha256": baseSHA}
	// Their context is the repository, above this package's folder.
	c, err := recipe.LoadIn(repoRoot(), filepath.Join(repoRoot(), cloudApplianceRecipe), sets)
	if err != nil {
		t.Fatal(err)
	}
	p, err := recipe.LoadIn(repoRoot(), filepath.Join(repoRoot(), applianceRecipe), nil)
	if err != nil {
		t.Fatal(err)
	}
	if p.Base.Debian == nil || c.Base.Image == nil {
		t.Fatal("bases: want debian in " + applianceRecipe + " and image in " + cloudApplianceRecipe)
	}
	// The one deliberate difference: the firewall backend, so that make
	// test boots and verifies the iptables-persistent backend too (here)
	// and ufw (the packages-built appliance).
	if c.Firewall == nil || p.Firewall == nil || c.Firewall.Backend != "iptables-persistent" || p.Firewall.Backend != "ufw" {
		t.Fatalf("firewall backends: want iptables-persistent in %s and ufw in %s", cloudApplianceRecipe, applianceRecipe)
	}
	cfw := *c.Firewall
	cfw.Backend = p.Firewall.Backend
	same := map[string][2]any{
		"apt.packages (base.debian.packages)": {c.Apt.Packages, p.Base.Debian.Packages},
		"apt.repositories":                    {c.Apt.Repositories, p.Apt.Repositories},
		"context":                             {c.Context, p.Context},
		"groups":                              {c.Groups, p.Groups},
		"users":                               {c.Users, p.Users},
		"overlays":                            {c.Overlays, p.Overlays},
		"files":                               {c.Files, p.Files},
		"systemd":                             {c.Systemd, p.Systemd},
		"kernel":                              {c.Kernel, p.Kernel},
		"disk":                                {c.Disk, p.Disk},
		"outputs":                             {c.Outputs, p.Outputs},
		"ssh":                                 {c.SSH, p.SSH},
		"firewall (but its backend)":          {&cfw, p.Firewall},
		"containers":                          {c.Containers, p.Containers},
		"gateway":                             {c.Gateway, p.Gateway},
		"tailscale":                           {c.Tailscale, p.Tailscale},
		"firstboot":                           {c.Firstboot, p.Firstboot},
	}
	for what, v := range same {
		if !reflect.DeepEqual(v[0], v[1]) {
			t.Errorf("%s differs between %s and %s:\n%#v\n%#v", what, cloudApplianceRecipe, applianceRecipe, v[0], v[1])
		}
	}
	for k, v := range p.Variables {
		if k == "mirror" || k == "build_mirror" {
			continue // base.debian's
		}
		if cv, ok := c.Variables[k]; !ok || cv != v {
			t.Errorf("variable %s: %q in %s, %q in %s", k, cv, cloudApplianceRecipe, v, applianceRecipe)
		}
	}
}
