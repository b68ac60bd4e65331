package verify

import (
	"context"
	"encoding/base64"
	"fmt"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"
)

// TailscaledState is where tailscaled keeps its state (the one file the
// design lets hold what the auth key became).
const TailscaledState = "/var/lib/tailscale/tailscaled.state"

// seedSearchScript waits for the boot to finish (the scrub of cloud-init's
// stored user-data runs after cloud-init's last stage), then lists every
// regular file on the guest's disk filesystems (find -xdev from /, /boot
// and /boot/efi: not /proc, /sys, /dev, /run or other memory filesystems)
// and prints "files N"; of those, the files whose inode changed (ctime) at
// or after $1 (seconds since the epoch: verify passes the instance's
// power-on, less a margin) are searched, "changed M": a file the image
// shipped and nothing rewrote since cannot hold a value the instance's
// seed brought (ctime cannot be set from user space; the image's files
// carry the time they were written into it). It prints "found I PATH" for
// each file that holds the value on line I of stdin (grep -F, one pass
// for them all). The values go through a file in /dev/shm (memory),
// removed at once: never on a command line, never on the disk searched,
// never printed.
const seedSearchScript = `case "$1" in ''|*[!0-9]*) echo "since: not a number" >&2; exit 3;; esac
timeout 600 systemctl is-system-running --wait >/dev/null 2>&1
umask 077
d=$(mktemp -d /dev/shm/bake-verify.XXXXXX) || exit 3
trap 'rm -rf "$d"' EXIT
cat >"$d/needles"
find / /boot /boot/efi -xdev -type f -fprint0 "$d/all" -newerct "@$1" -fprint0 "$d/list" 2>/dev/null
echo "files $(tr -cd '\0' <"$d/all" | wc -c)"
echo "changed $(tr -cd '\0' <"$d/list" | wc -c)"
xargs -0 -r -a "$d/list" grep -lsF -f "$d/needles" -- | sort -u >"$d/found"
while IFS= read -r f; do
	grep -ahoF -f "$d/needles" -- "$f" 2>/dev/null | sort -u |
		awk -v f="$f" 'NR == FNR { idx[$0] = NR; next } ($0 in idx) { print "found " idx[$0] " " f }' "$d/needles" -
done <"$d/found"
true`

// seedSearchMargin: the search covers files changed since this long
// before the instance's power-on. The guest's clock starts from the RTC,
// which QEMU sets from the host's clock at power-on (one-second
// resolution), and under emulation it runs slow, not fast: a file written
// in the guest has a ctime at or after its power-on, less the rounding.
// (systemd and timesyncd only ever move a clock forward at boot.)
const seedSearchMargin = 10 * time.Second

// seedSearch is what one search found.
type seedSearch struct {
	Files   int              // regular files on the disk's filesystems
	Changed int              // of those, changed since the power-on: searched
	Found   map[int][]string // by needle (1-based line of stdin): the paths that hold it
}

// parseSeedSearch reads seedSearchScript's output; ok is false without
// its "files N" line (the search did not run).
func parseSeedSearch(out string) (seedSearch, bool) {
	s := seedSearch{Found: map[int][]string{}}
	ok := false
	for _, l := range strings.Split(out, "\n") {
		if n, found := strings.CutPrefix(l, "files "); found {
			if v, err := strconv.Atoi(strings.TrimSpace(n)); err == nil && v >= 0 {
				s.Files, ok = v, true
			}
			continue
		}
		if n, found := strings.CutPrefix(l, "changed "); found {
			if v, err := strconv.Atoi(strings.TrimSpace(n)); err == nil && v >= 0 {
				s.Changed = v
			}
			continue
		}
		rest, found := strings.CutPrefix(l, "found ")
		if !found {
			continue
		}
		num, p, _ := strings.Cut(rest, " ")
		i, err := strconv.Atoi(num)
		if err != nil || i < 1 || p == "" || slices.Contains(s.Found[i], p) {
			continue
		}
		s.Found[i] = append(s.Found[i], p)
	}
	return s, ok
}

// needles are the forms of a value grep looks for: as given, and base64
// as cloud-init's write_files carries bake's values (docs/seed.md): the
// encoding of the value from its first byte, up to its last full group
// (what follows depends on the bytes after it).
func needles(v string) []string {
	b := base64.StdEncoding.EncodeToString([]byte(v))
	return []string{v, b[:len(v)/3*4]}
}

// seedSecret is one secret value to look for, and the files the design
// keeps it in.
type seedSecret struct {
	What    string // "the seed's gateway token"
	Value   string
	Allowed []string
	// NoControl: the Allowed files may hold the value but need not (the
	// search is not required to find it there).
	NoControl bool
	// Private are Allowed files that may hold the value only when they
	// are as private as Allowed[0]: mode 0600 or stricter and the same
	// owner (an application's own backup of the file the design keeps
	// the value in).
	Private []string
}

// searchCopies looks for the secrets on in's disk (one pass): every file
// that holds one outside its allowed files is a problem, named by path.
func (r *runner) searchCopies(ctx context.Context, in *instance, secrets []seedSecret, when string) (problems []string, ev evidence) {
	var lines []string
	owner := map[int]int{} // needle line -> secret
	for si, s := range secrets {
		if len(s.Value) < 16 {
			continue // nothing distinctive to look for
		}
		for _, n := range needles(s.Value) {
			lines = append(lines, n)
			owner[len(lines)] = si
		}
	}
	if len(lines) == 0 {
		return nil, nil
	}
	t0 := time.Now()
	since := in.poweredOn.Add(-seedSearchMargin).Unix()
	res, err := in.runT(ctx, "sudo -n sh -c "+shellQuote(seedSearchScript)+" sh "+strconv.FormatInt(since, 10), []byte(strings.Join(lines, "\n")+"\n"), 10*time.Minute)
	if err != nil {
		return []string{fmt.Sprintf("%s, %s: the search did not run: %v", in.name(), when, err)}, nil
	}
	found, ok := parseSeedSearch(res.Stdout)
	if !ok || found.Files < 100 {
		ev.cmd(res)
		return []string{fmt.Sprintf("%s, %s: the search of the disk did not run (%d files listed)", in.name(), when, found.Files)}, ev
	}
	ev.add("%s, %s: searched the %d of %d files on the disk's filesystems changed since %s (%s before power-on) in %s", in.name(), when, found.Changed, found.Files, time.Unix(since, 0).UTC().Format(time.RFC3339), seedSearchMargin, time.Since(t0).Round(time.Second))
	for si, s := range secrets {
		var kept, copies []string
		for i, paths := range found.Found {
			if oi, ok := owner[i]; !ok || oi != si {
				continue
			}
			for _, p := range paths {
				switch {
				case slices.Contains(s.Allowed, p):
					if !slices.Contains(kept, p) {
						kept = append(kept, p)
					}
				case !slices.Contains(copies, p):
					copies = append(copies, p)
				}
			}
		}
		sort.Strings(kept)
		sort.Strings(copies)
		if len(s.Allowed) > 0 && len(kept) == 0 && !s.NoControl {
			// The control: the value is in the file the design keeps it
			// in, written at first boot; a search that missed it there
			// (a guest clock behind the host's, a broken find) proves
			// nothing about the other files.
			problems = append(problems, fmt.Sprintf("%s, %s: the search did not find %s (%s) in %s, where the design keeps it: the search is not proof", in.name(), when, s.What, redact(s.Value), strings.Join(s.Allowed, ", ")))
		}
		for _, p := range copies {
			problems = append(problems, fmt.Sprintf("%s, %s: %s (%s) has a copy in %s", in.name(), when, s.What, redact(s.Value), p))
		}
		for _, p := range kept {
			if !slices.Contains(s.Private, p) {
				continue
			}
			if msg := privateLike(ctx, in, p, s.Allowed[0]); msg != "" {
				problems = append(problems, fmt.Sprintf("%s, %s: %s (%s) has a copy in %s: %s", in.name(), when, s.What, redact(s.Value), p, msg))
			}
		}
		ev.add("  %s (%s): found in %s (allowed: %s)", s.What, redact(s.Value), orDash(strings.Join(kept, ", ")), orDash(strings.Join(s.Allowed, ", ")))
	}
	return problems, ev
}

// privateLike says what is wrong when p is not as private as ref (mode
// 0600 or stricter, ref's owner), "" when it is. A stat that fails is a
// problem too: the copy is allowed only when its privacy is shown.
func privateLike(ctx context.Context, in *instance, p, ref string) string {
	r, err := in.sudo(ctx, "stat -c '%a %u' -- "+shellQuote(ref)+" "+shellQuote(p))
	if err != nil {
		return "its mode and owner could not be read: " + err.Error()
	}
	f := strings.Fields(r.Stdout)
	if r.Exit != 0 || len(f) != 4 {
		return fmt.Sprintf("its mode and owner could not be read (stat exit %d: %q)", r.Exit, strings.TrimSpace(r.Stdout+r.Stderr))
	}
	mode, err := strconv.ParseUint(f[2], 8, 32)
	if err != nil || mode&0o077 != 0 || f[3] != f[1] {
		return fmt.Sprintf("mode %s owner uid %s, where only mode 0600 (or stricter) and %s's owner (uid %s) are allowed", f[2], f[3], ref, f[1])
	}
	return ""
}

// seedSecrets are the secrets of in's seed (and, without one, the token
// its first boot generated, read from the gateway's config), with the
// files the design keeps each in.
func (r *runner) seedSecrets(ctx context.Context, in *instance) []seedSecret {
	var allowed, private []string
	if g := r.o.Spec.Gateway; g != nil {
		// OpenClaw keeps a copy of its config as it was at its last good
		// start beside it: allowed when as private as the config.
		allowed = append(allowed, g.ConfigPath, g.ConfigPath+LastGoodSuffix)
		private = append(private, g.ConfigPath+LastGoodSuffix)
	}
	var out []seedSecret
	if in.token != "" {
		out = append(out, seedSecret{What: "the seed's gateway token", Value: in.token, Allowed: allowed, Private: private})
	} else if r.o.Spec.Gateway != nil {
		c := &checker{r: r, in: in, spec: r.o.Spec}
		if t, _, err := c.readToken(ctx, in); err == nil && t != "" {
			out = append(out, seedSecret{What: "the gateway token its first boot generated", Value: t, Allowed: allowed, Private: private})
		}
	}
	if in.tailnet {
		// tailscaled's state may hold what the key became (the design
		// keeps that file); nothing else may hold the key.
		out = append(out, seedSecret{What: "the seed's Tailscale auth key", Value: r.o.Tailnet.AuthKey, Allowed: []string{TailscaledState}, NoControl: true})
	}
	if in.canary != "" {
		// Only the user-data holds it: a copy anywhere is cloud-init's
		// stored user-data (user-data.txt, obj.pkl, ...) left on the disk.
		out = append(out, seedSecret{What: "the canary of the seed's user-data", Value: in.canary})
	}
	return out
}

// seedCopies records secrets.seed-copies: the main instance searched after
// its checks, and the rebooted one (with --instances 2 or more) after its
// reboot, its seed still attached.
func (r *runner) seedCopies(ctx context.Context, fw string, main, rebooted *instance) {
	t0 := time.Now()
	var problems []string
	var ev evidence
	searched := 0
	type part struct {
		in       *instance
		when     string
		problems []string
		ev       evidence
		searched bool
	}
	parts := []*part{{in: main, when: "after first boot"}, {in: rebooted, when: "after a reboot with its seed attached"}}
	// The two instances are searched at once (each VM has its own CPUs).
	var wg sync.WaitGroup
	for _, x := range parts {
		if x.in == nil {
			continue
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			if x.in.sess == nil {
				x.problems = append(x.problems, fmt.Sprintf("%s: no SSH session: not searched %s", x.in.name(), x.when))
				return
			}
			secrets := r.seedSecrets(ctx, x.in)
			if len(secrets) == 0 {
				x.ev.add("%s, %s: no seed secret to look for (no token given, no gateway)", x.in.name(), x.when)
				return
			}
			x.problems, x.ev = r.searchCopies(ctx, x.in, secrets, x.when)
			x.searched = true
		}()
	}
	wg.Wait()
	for _, x := range parts {
		problems = append(problems, x.problems...)
		ev = append(ev, x.ev...)
		if x.searched {
			searched++
		}
	}
	if ctx.Err() != nil {
		return
	}
	if searched == 0 && len(problems) == 0 {
		r.record(fw, checkSecretsSeedCopies.ID, Skip, "not run: no SSH session\n"+ev.String(), time.Since(t0))
		return
	}
	if rebooted == nil {
		ev.add("not searched after a reboot: verify reboots only with --instances 2 or more")
	}
	st, text := verdict(problems, ev, "no copy of a seed secret on the disk outside the files the design keeps it in")
	r.record(fw, checkSecretsSeedCopies.ID, st, text, time.Since(t0))
}

var checkSecretsSeedCopies = Check{ID: "secrets.seed-copies", Scope: ScopeFirmware, Needs: "an SSH session (after a reboot too: --instances 2 or more)",
	claim: func(s Spec, gw *GatewaySpec) string {
		return fmt.Sprintf("after first boot (and a reboot with the seed still attached) no file on the guest's disk holds a copy of the seed's gateway token or Tailscale auth key, except %s (the token file the gateway reads), the gateway's own backup of it %s%s when as private (0600, the same owner), and %s, nor of its user-data (cloud-init's stored copies scrubbed)", gw.ConfigPath, gw.ConfigPath, LastGoodSuffix, TailscaledState)
	}}

// LastGoodSuffix names OpenClaw's copy of its config as it was at its last
// good start (openclaw.json.last-good, beside it, written by the gateway).
const LastGoodSuffix = ".last-good"
