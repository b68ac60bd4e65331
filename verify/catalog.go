package verify

import (
	"context"
	"fmt"
	"io"
	"slices"
	"strings"
	"text/tabwriter"

	"github.com/bakeimg/bake/claims"
	"github.com/bakeimg/bake/vm"
)

// Scope says where a check runs.
type Scope string

const (
	// ScopeFirmware: once per firmware, on its instances (bios/ID, uefi/ID).
	ScopeFirmware Scope = "firmware"
	// ScopeImage: once, on the image file (image/ID).
	ScopeImage Scope = "image"
	// ScopeRun: the verification itself (it passes or fails, never skips).
	ScopeRun Scope = "run"
)

// Check is one entry of the catalog: a claim of the image and how bake
// verify proves it. Each check's ID is written once, in its Check (a test
// holds the package to that); every other place names the Check.
type Check struct {
	ID    string // AREA.NAME, as reports and --allow-skip name it
	Scope Scope
	// Needs says what the check needs from the host or the run (for
	// `bake verify --list`); a check whose need is missing fails (or is
	// skipped and so fails the run unless allowed).
	Needs string
	// claim words the claim from the spec (the report's title).
	claim func(s Spec, gw *GatewaySpec) string
	// planned reports whether a run of spec with that many instances
	// plans the check; nil: always.
	planned func(s Spec, instances int) bool
	// byRequest: with one instance the check is not run by the user's
	// choice (reported as skipped by request, not as a failure).
	byRequest bool
	// tailnet: planned only with --tailnet (Options.Tailnet), on the
	// last instance of each firmware.
	tailnet bool
	// run proves the claim on one instance; nil for the checks that a
	// group records (login, isolation, identity, the image's own).
	run func(c *checker, ctx context.Context) (Status, string)
	// ssh: run needs the SSH session; outside: the outside namespace.
	ssh, outside bool
	// upgrade: a check of an upgrade run (--upgrade-from) only.
	upgrade bool
}

// Area is the first part of the ID (ssh, firewall, gateway, ...).
func (k *Check) Area() string { a, _, _ := strings.Cut(k.ID, "."); return a }

// Title is the claim, worded for spec.
func (k *Check) Title(s Spec) string {
	gw := s.Gateway
	if gw == nil {
		gw = claims.Default().Gateway
	}
	return k.claim(s, gw)
}

// catalog is every check, in the order a run plans, runs and reports them.
var catalog = []*Check{
	&checkSSHKeyLogin, &checkSystemRunning, &checkSSHEffective, &checkSSHPassword, &checkSSHRoot,
	&checkFirewallRules,
	&checkTailscaleDaemon,
	&checkTailscaleJoined, &checkTailscaleKeyGone, &checkTailscaleServe, &checkTailscaleReboot,
	&checkStateNoVolume,
	&checkGatewayConfig, &checkGatewayProcess, &checkGatewayListen, &checkGatewayAuth, &checkGatewayOffline,
	&checkNetworkScan, &checkNetworkUDP,
	&checkIsolationLoopback, &checkIsolationOutside, &checkIsolationViaMAC, &checkIsolationMetadata, &checkIsolationDockerGroup,
	&checkIdentityUnique, &checkIdentityReboot,
	&checkSecretsSeedCopies, &checkImageClaims, &checkSecretsDisk,
	&checkUpgradeOld, &checkUpgradeIdentity, &checkUpgradeNewImage, &checkUpgradeRootSecrets, &checkUpgradeRollback, &checkUpgradeTailnet,
	&checkImageFormat, &checkVerifyTimeout,
}

// The run's own checks.
var (
	checkImageFormat = Check{ID: "image.format", Scope: ScopeRun, Needs: "qemu-img",
		claim: func(Spec, *GatewaySpec) string {
			return "the image is a regular file, raw or a self-contained qcow2 (no backing or data file, no snapshots, tables and clusters inside the file, none shared)"
		}}
	checkVerifyTimeout = Check{ID: "verify.timeout", Scope: ScopeRun,
		claim: func(Spec, *GatewaySpec) string { return "the verification finished in time" }}
)

// lookup is the catalog entry of id, or nil.
func lookup(id string) *Check {
	for _, k := range catalog {
		if k.ID == id {
			return k
		}
	}
	return nil
}

// title is the claim a check proves, worded from the spec.
func title(s Spec, id string) string {
	if k := lookup(id); k != nil {
		return k.Title(s)
	}
	return id
}

// Plan lists the checks of one firmware for spec, in the order they run.
// identity.* need two instances or more: with one they are not run, and
// the report lists them as skipped by request (ByRequest), not as
// failures.
func Plan(s Spec, instances int) []string { return PlanTailnet(s, instances, false) }

// PlanTailnet is Plan of a run with --tailnet (tailnet true) or without:
// the tailscale.joined, key-gone, serve and reboot checks are planned only
// with it.
func PlanTailnet(s Spec, instances int, tailnet bool) []string {
	var ids []string
	for _, k := range catalog {
		if k.tailnet && !tailnet {
			continue
		}
		if k.Scope == ScopeFirmware && !k.upgrade && (k.planned == nil || k.planned(s, instances)) {
			ids = append(ids, k.ID)
		}
	}
	return ids
}

// ByRequest lists the checks of one firmware that a run of that many
// instances leaves out by the user's choice: identity.* with one.
func ByRequest(instances int) []string {
	if instances >= 2 {
		return nil
	}
	var ids []string
	for _, k := range catalog {
		if k.byRequest {
			ids = append(ids, k.ID)
		}
	}
	return ids
}

// imageChecks are the checks of the image file itself (no firmware).
func imageChecks() []string {
	var ids []string
	for _, k := range catalog {
		if k.Scope == ScopeImage {
			ids = append(ids, k.ID)
		}
	}
	return ids
}

// Catalog lists every check verify has that can be skipped: those of a
// firmware (each run once per firmware) and those of the image file.
// image.format and verify.timeout are not in it: they pass or fail.
func Catalog() (firmware, image []string) {
	for _, k := range catalog {
		switch k.Scope {
		case ScopeFirmware:
			firmware = append(firmware, k.ID)
		case ScopeImage:
			image = append(image, k.ID)
		}
	}
	return firmware, image
}

// List writes the catalog as `bake verify --list` prints it: each check's
// ID, whether a run of spec with that many instances plans it, where it
// runs, what it needs and its claim (worded for spec).
func List(w io.Writer, s Spec, instances int) error {
	tw := tabwriter.NewWriter(w, 0, 8, 2, ' ', 0)
	fmt.Fprintln(tw, "CHECK\tPLANNED\tRUNS\tNEEDS\tCLAIM")
	for _, k := range catalog {
		planned, where, needs := k.listed(s, instances)
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\n", k.ID, planned, where, needs, k.Title(s))
	}
	return tw.Flush()
}

// ListMarkdown writes the catalog as a Markdown table (ID, where it runs,
// what it needs, the claim for spec): the README's list of checks.
func ListMarkdown(w io.Writer, s Spec) {
	fmt.Fprintln(w, "| check | runs | needs | claim |")
	fmt.Fprintln(w, "|---|---|---|---|")
	for _, k := range catalog {
		_, where, needs := k.listed(s, 2)
		cell := func(x string) string { return strings.ReplaceAll(x, "|", "\\|") }
		fmt.Fprintf(w, "| `%s` | %s | %s | %s |\n", k.ID, cell(where), cell(needs), cell(k.Title(s)))
	}
}

// Claims lists every check's ID and its claim for s, in catalog order.
func Claims(s Spec) [][2]string {
	var out [][2]string
	for _, k := range catalog {
		out = append(out, [2]string{k.ID, k.Title(s)})
	}
	return out
}

// listed is how List shows k: planned for s and instances, where it runs,
// what it needs.
func (k *Check) listed(s Spec, instances int) (planned, where, needs string) {
	planned = "yes"
	switch {
	case k.byRequest && instances < 2:
		planned = "by request"
	case k.planned != nil && !k.planned(s, instances):
		planned = "no"
	case k.upgrade && k.tailnet:
		planned = "--upgrade-from with --tailnet-*"
	case k.upgrade:
		planned = "--upgrade-from"
	case k.tailnet:
		planned = "with --tailnet-*"
	}
	switch {
	case k.upgrade:
		where = "an upgrade run (--upgrade-from)"
	case k.Scope == ScopeFirmware && k.tailnet:
		where = "each firmware's last instance, with --tailnet-*"
	case k.Scope == ScopeFirmware && k.byRequest:
		where = "each firmware, --instances 2+"
	case k.Scope == ScopeFirmware:
		where = "each firmware"
	case k.Scope == ScopeImage:
		where = "the image file"
	case k.Scope == ScopeRun:
		where = "the run (never skipped)"
	default:
		where = string(k.Scope)
	}
	needs = k.Needs
	if needs == "" {
		needs = "-"
	}
	return planned, where, needs
}

// ResolveAllowSkip checks an --allow-skip ID against the catalog: a check
// ID (network.scan, secrets.disk) or a key as the report names it
// ("bios/network.scan", "uefi/identity.reboot", "image/secrets.disk").
// It returns the ID trimmed, or an error naming the valid IDs.
func ResolveAllowSkip(id string) (string, error) {
	id = strings.TrimSpace(id)
	fwChecks, imgChecks := Catalog()
	prefix, check, keyed := strings.Cut(id, "/")
	if !keyed {
		check = id
	}
	switch {
	case !keyed && (slices.Contains(fwChecks, check) || slices.Contains(imgChecks, check)):
		return id, nil
	case keyed && (prefix == vm.BIOS || prefix == vm.UEFI) && slices.Contains(fwChecks, check):
		return id, nil
	case keyed && prefix == "image" && slices.Contains(imgChecks, check):
		return id, nil
	}
	why := "names no check of bake verify"
	switch {
	case lookup(check) != nil && lookup(check).Scope == ScopeRun:
		why = "names a check that never skips (it passes or fails)"
	case keyed && prefix != vm.BIOS && prefix != vm.UEFI && prefix != "image":
		why = fmt.Sprintf("%q is no firmware (%s, %s) nor \"image\"", prefix, vm.BIOS, vm.UEFI)
	case keyed && slices.Contains(fwChecks, check):
		why = fmt.Sprintf("%s is a check of each firmware: prefix it with %s/ or %s/, or give it bare", check, vm.BIOS, vm.UEFI)
	case keyed && slices.Contains(imgChecks, check):
		why = fmt.Sprintf("%s is a check of the image file: image/%s, or give it bare", check, check)
	}
	return "", fmt.Errorf("%q %s; the checks: %s (each firmware's, as CHECK or FIRMWARE/CHECK), %s (the image's, as CHECK or image/CHECK)",
		id, why, strings.Join(fwChecks, ", "), strings.Join(imgChecks, ", "))
}

// fillSkipped records every planned check that has no result yet as Skip.
func (r *runner) fillSkipped(reason string) {
	for _, fw := range r.o.Firmwares {
		for _, id := range r.plan() {
			if !r.has(fw, id) {
				r.record(fw, id, Skip, reason, 0)
			}
		}
	}
	for _, id := range imageChecks() {
		if r.o.UpgradeFrom != "" && id == checkSecretsDisk.ID {
			// An upgrade run scans the upgraded root disk instead
			// (upgrade.root-disk-secrets).
			continue
		}
		if !r.has("", id) {
			r.record("", id, Skip, reason, 0)
		}
	}
}
