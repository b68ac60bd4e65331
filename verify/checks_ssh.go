package verify

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"time"

	"golang.org/x/crypto/ssh"

	"github.com/bakeimg/bake/appliance"
	"github.com/bakeimg/bake/vm"
)

// sshContexts are the connection contexts sshd's effective settings are
// read for (appliance.SSHContexts, the matrix the build runs in the tree
// too): sshd -T alone; the admin, root and a user with no account, each
// from the guest's link, loopback, IPv6, a private LAN and the tailnet's
// CGNAT range; and one context built to satisfy each Match block in the
// guest's sshd_config and sshd_config.d files (config, groups: what
// sshdConfigScript read).
func (c *checker) sshContexts(config, groups string) []string {
	laddr := "10.0.2.15"
	if c.in.link != nil && c.in.ipv4.IsValid() {
		laddr = c.in.ipv4.String()
	}
	link := "10.0.2.2"
	if c.in.link != nil {
		link = vm.LinkHostIPv4.Addr().String()
	}
	return appliance.SSHContexts(c.spec.AdminUser, c.spec.SSHPort, appliance.SSHFroms(link, laddr),
		appliance.ParseSSHDMatch(config), groupMember(groups))
}

// sshdConfigScript prints the guest's sshd configuration files and its
// group database, separated by a marker line.
const sshdConfigScript = "cat /etc/ssh/sshd_config /etc/ssh/sshd_config.d/*.conf 2>/dev/null; echo '@@bake-groups@@'; getent group"

// groupMember returns, for a group, a member of it in getent group's
// output ("" when it has none listed).
func groupMember(getent string) func(string) string {
	return func(group string) string {
		for _, l := range strings.Split(getent, "\n") {
			f := strings.Split(l, ":")
			if len(f) == 4 && f[0] == group && f[3] != "" {
				return strings.Split(f[3], ",")[0]
			}
		}
		return ""
	}
}

func (c *checker) sshdEffective(ctx context.Context) (Status, string) {
	var ev evidence
	conf, err := c.in.sudo(ctx, sshdConfigScript)
	if err != nil {
		return Fail, err.Error()
	}
	config, groups, _ := strings.Cut(conf.Stdout, "@@bake-groups@@\n")
	matches := appliance.ParseSSHDMatch(config)
	for _, m := range matches {
		ev.add("Match block in the guest's configuration: %s", m.Line)
	}
	ctxs := c.sshContexts(config, groups)
	res, err := c.in.sudo(ctx, appliance.SSHDMatrixScript(ctxs, ""))
	if err != nil {
		return Fail, err.Error()
	}
	ev.cmd(res)
	return sshdVerdict(res.Stdout, len(ctxs), ev, c.spec.AdminUser, c.spec.SSHPort, len(matches))
}

// sshdVerdict judges the matrix's output (appliance.JudgeSSHDMatrix): in
// every context password and keyboard-interactive logins are off, root may
// not log in, public keys are on, authenticationmethods allows nothing but
// publickey, and sshd listens on the claimed port.
func sshdVerdict(out string, contexts int, ev evidence, admin string, port, matches int) (Status, string) {
	problems := appliance.JudgeSSHDMatrix(out, contexts, port)
	return verdict(problems, ev, fmt.Sprintf("passwordauthentication no, kbdinteractiveauthentication no, permitrootlogin no, pubkeyauthentication yes, permitemptypasswords no, authenticationmethods publickey only, port %d, in all %d contexts (sshd -T, and -C for %s, root and a user with no account from the link, loopback, IPv6, a LAN and the tailnet, and one for each of the %d Match blocks)", port, contexts, admin, matches))
}

func randomPassword() string {
	t, _ := NewToken()
	return "Bv-" + t[:20]
}

func describeAttempt(who, how string, a authAttempt, err error) string {
	switch {
	case err != nil:
		return fmt.Sprintf("%s with %s: connection problem: %v", who, how, err)
	case a.LoggedIn:
		return fmt.Sprintf("%s with %s: LOGGED IN", who, how)
	}
	return fmt.Sprintf("%s with %s: refused; methods the server let the client try: [%s] (%s)", who, how, strings.Join(a.Attempted, " "), a.Err)
}

func offered(a authAttempt, methods ...string) []string {
	var out []string
	for _, m := range methods {
		for _, x := range a.Attempted {
			if x == m {
				out = append(out, m)
			}
		}
	}
	return out
}

// setPasswordScript (sudo, stdin "USER:PASSWORD") prints USER's password
// hash (to put it back afterwards) as "hash:HASH", then gives USER the
// password from stdin (chpasswd: never on a command line) and prints
// "password-set"; without a hash to put back it sets nothing. One
// command: reading the hash and setting the password were two sudo round
// trips.
func setPasswordScript(user string) string {
	return `h=$(getent shadow ` + shellQuote(user) + ` | cut -d: -f2)
[ -n "$h" ] || exit 3
echo "hash:$h"
chpasswd && echo password-set`
}

// hideHash is a result of setPasswordScript fit for the report: its hash
// line not shown.
func hideHash(r cmdResult) cmdResult {
	var out []string
	for _, l := range strings.Split(r.Stdout, "\n") {
		if strings.HasPrefix(l, "hash:") {
			l = "hash:(not shown)"
		}
		out = append(out, l)
	}
	r.Stdout = strings.Join(out, "\n")
	return r
}

// passwordSet reads setPasswordScript's output: the old hash, and whether
// the password was set (both known, or ok is false).
func passwordSet(out string) (hash string, ok bool) {
	found, set := false, false
	for _, l := range strings.Split(out, "\n") {
		if h, isHash := strings.CutPrefix(l, "hash:"); isHash && !found {
			hash, found = h, true
		}
		if l == "password-set" {
			set = true
		}
	}
	return hash, found && hash != "" && set
}

// restoreHashScript puts user's password hash back.
func restoreHashScript(user, hash string) string {
	return "usermod -p " + shellQuote(hash) + " " + shellQuote(user)
}

func (c *checker) passwordRefused(ctx context.Context) (Status, string) {
	user := c.spec.AdminUser
	var ev evidence
	var problems []string
	check := func(how string, a authAttempt, err error) {
		ev.add("%s", describeAttempt(user, how, a, err))
		if err != nil {
			problems = append(problems, fmt.Sprintf("could not attempt a %s login: %v", how, err))
			return
		}
		if a.LoggedIn {
			problems = append(problems, fmt.Sprintf("%s logged in with %s", user, how))
		}
		if o := offered(a, "password", "keyboard-interactive"); len(o) > 0 {
			problems = append(problems, fmt.Sprintf("the server offers %s authentication to %s", strings.Join(o, " and "), user))
		}
	}
	pw := randomPassword()
	a, err := tryLogin(ctx, c.in.dialSSH, c.in.sshTarget(), user, 20*time.Second, passwordMethods(pw)...)
	check("a wrong password", a, err)

	// Now give the admin a password and try it: refusing a wrong password
	// proves nothing about the right one.
	res, err := c.in.runT(ctx, "sudo -n sh -c "+shellQuote(setPasswordScript(user)), []byte(user+":"+pw+"\n"), time.Minute)
	old, ok := passwordSet(res.Stdout)
	if err != nil || !res.OK() || !ok {
		ev.add("could not set a password for %s to try the right one: %v %s", user, err, res.Stderr)
		problems = append(problems, "could not set a known password (sudo chpasswd) to try it")
		if ok {
			c.in.sudo(ctx, restoreHashScript(user, old))
		}
		return verdict(problems, ev, "")
	}
	ev.add("set a throwaway password for %s (sudo chpasswd, from stdin)", user)
	a, err = tryLogin(ctx, c.in.dialSSH, c.in.sshTarget(), user, 20*time.Second, passwordMethods(pw)...)
	check("the right password", a, err)
	if r, err := c.in.sudo(ctx, restoreHashScript(user, old)); err != nil || !r.OK() {
		ev.add("warning: could not restore %s's password hash: %v %s", user, err, r.Stderr)
	} else {
		ev.add("restored %s's password hash", user)
	}
	return verdict(problems, ev, fmt.Sprintf("%s refused with a wrong and with the right password; the server never offered password or keyboard-interactive", user))
}

// rootSetupScript (sudo, stdin "root:PASSWORD") authorizes key for root
// (root's authorized_keys kept aside first) and prints "key-added", then
// is setPasswordScript for root: one command where there were four.
func rootSetupScript(key string) string {
	return `( umask 077; mkdir -p /root/.ssh && touch /root/.ssh/authorized_keys &&
cp -p /root/.ssh/authorized_keys /root/.ssh/.authorized_keys.bake-verify &&
printf '%s\n' ` + shellQuote(key) + ` >> /root/.ssh/authorized_keys ) && echo key-added
` + setPasswordScript("root")
}

func (c *checker) rootRefused(ctx context.Context) (Status, string) {
	var ev evidence
	var problems []string
	// Authorize the throwaway key for root and give root a known password,
	// then try both: with PermitRootLogin no, sshd refuses root whatever
	// its keys and password.
	pw := randomPassword()
	res, err := c.in.runT(ctx, "sudo -n sh -c "+shellQuote(rootSetupScript(c.in.key.AuthorizedKey)), []byte("root:"+pw+"\n"), time.Minute)
	if err != nil {
		return Fail, err.Error()
	}
	keyAdded := slices.Contains(strings.Split(res.Stdout, "\n"), "key-added")
	old, pwSet := passwordSet(res.Stdout)
	if keyAdded {
		ev.add("added the throwaway key to /root/.ssh/authorized_keys")
	} else {
		ev.add("could not add the key to root's authorized_keys (trying anyway):\n%s", hideHash(res).Evidence())
		problems = append(problems, "could not authorize the key for root to try it (sudo)")
	}
	a, err := tryLogin(ctx, c.in.dialSSH, c.in.sshTarget(), "root", 20*time.Second, ssh.PublicKeys(c.in.key.Signer))
	ev.add("%s", describeAttempt("root", "an authorized key", a, err))
	if err != nil {
		problems = append(problems, fmt.Sprintf("could not attempt a root login: %v", err))
	} else if a.LoggedIn {
		problems = append(problems, "root logged in with an authorized key")
	}
	if pwSet {
		a, err := tryLogin(ctx, c.in.dialSSH, c.in.sshTarget(), "root", 20*time.Second, passwordMethods(pw)...)
		ev.add("%s", describeAttempt("root", "the right password", a, err))
		if err == nil && a.LoggedIn {
			problems = append(problems, "root logged in with its password")
		}
		if o := offered(a, "password", "keyboard-interactive"); err == nil && len(o) > 0 {
			problems = append(problems, "the server offers "+strings.Join(o, " and ")+" authentication to root")
		}
	} else {
		ev.add("could not set a root password to try it")
	}
	// Both put back in one command.
	var restore []string
	if keyAdded {
		restore = append(restore, "mv /root/.ssh/.authorized_keys.bake-verify /root/.ssh/authorized_keys && echo keys-restored")
	}
	if old != "" {
		restore = append(restore, restoreHashScript("root", old))
	}
	if len(restore) > 0 {
		if r, err := c.in.sudo(ctx, strings.Join(restore, "\n")); err == nil && slices.Contains(strings.Split(r.Stdout, "\n"), "keys-restored") {
			ev.add("restored root's authorized_keys")
		}
	}
	return verdict(problems, ev, "root refused with an authorized key and with its password")
}

// The SSH checks.
var (
	checkSSHKeyLogin = Check{ID: "ssh.key-login", Scope: ScopeFirmware, Needs: "QEMU, the outside namespace (root, dnsmasq)",
		claim: func(s Spec, _ *GatewaySpec) string {
			return fmt.Sprintf("SSH key login as %s with the seed's key works on every instance, whichever seed path (--seed-via) delivered the key", s.AdminUser)
		}}
	checkSSHEffective = Check{ID: "ssh.effective-config", Scope: ScopeFirmware, Needs: "an SSH session",
		claim: func(Spec, *GatewaySpec) string {
			return "effective sshd settings in every connection context (sshd -T -C: the admin, root, an unknown user; link, loopback, IPv6, LAN, tailnet; one context for each Match block of sshd_config and its includes; the build checks the same matrix in the tree): passwordauthentication no, kbdinteractiveauthentication no, permitrootlogin no, authenticationmethods publickey only, the claimed port"
		},
		run: (*checker).sshdEffective, ssh: true}
	checkSSHPassword = Check{ID: "ssh.password-refused", Scope: ScopeFirmware, Needs: "an SSH session",
		claim: func(Spec, *GatewaySpec) string {
			return "password and keyboard-interactive logins are refused, even with the right password"
		},
		run: (*checker).passwordRefused, ssh: true}
	checkSSHRoot = Check{ID: "ssh.root-refused", Scope: ScopeFirmware, Needs: "an SSH session",
		claim: func(Spec, *GatewaySpec) string {
			return "root cannot log in over SSH, even with an authorized key or the right password"
		},
		run: (*checker).rootRefused, ssh: true}
)
