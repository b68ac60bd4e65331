package verify

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"strings"
	"time"

	"golang.org/x/crypto/ssh"

	"github.com/bakeimg/bake/vm"
)

// guestAddr is the address the guest's SSH connections come from and go
// to, for sshd -T -C.
// sshContexts are the connection contexts sshd's effective settings are
// read for (sshd -T -C): a Match block in any sshd_config.d file can give
// one user, group or address other settings than 00-bake.conf gives
// everyone, so every kind of client is asked for: the admin (group sudo),
// root, a user with no account, each from the guest's link, loopback,
// IPv6, a private LAN and the tailnet's CGNAT range.
func (c *checker) sshContexts() []string {
	laddr := "10.0.2.15"
	if c.in.link != nil && c.in.ipv4.IsValid() {
		laddr = c.in.ipv4.String()
	}
	link := "10.0.2.2"
	if c.in.link != nil {
		link = vm.LinkHostIPv4.Addr().String()
	}
	froms := []struct{ addr, laddr string }{
		{link, laddr}, {"127.0.0.1", "127.0.0.1"}, {"fd77::1", "fd77::2"}, {"192.168.1.10", laddr}, {"100.100.1.1", laddr},
	}
	ctxs := []string{""}
	for _, user := range []string{c.spec.AdminUser, "root", "bake-verify-nouser"} {
		for _, f := range froms {
			ctxs = append(ctxs, fmt.Sprintf("user=%s,host=outside.invalid,addr=%s,laddr=%s,lport=%d", user, f.addr, f.laddr, c.spec.SSHPort))
		}
	}
	return ctxs
}

// sshdKeys are the settings sshdEffective reads.
const sshdKeys = "passwordauthentication|kbdinteractiveauthentication|challengeresponseauthentication|permitrootlogin|pubkeyauthentication|authenticationmethods|permitemptypasswords|usepam|port"

func sshdScript(ctxs []string) string {
	var b strings.Builder
	b.WriteString("sshd=$(command -v sshd || echo /usr/sbin/sshd)\n")
	for _, cx := range ctxs {
		if cx == "" {
			b.WriteString("echo '== sshd -T'; $sshd -T 2>&1 | grep -Ei '^(" + sshdKeys + ") '\n")
			continue
		}
		b.WriteString("echo '== sshd -T -C " + cx + "'; $sshd -T -C " + shellQuote(cx) + " 2>&1 | grep -Ei '^(" + sshdKeys + ") '\n")
	}
	return b.String()
}

func (c *checker) sshdEffective(ctx context.Context) (Status, string) {
	ctxs := c.sshContexts()
	res, err := c.in.sudo(ctx, sshdScript(ctxs))
	if err != nil {
		return Fail, err.Error()
	}
	var ev evidence
	ev.cmd(res)
	return sshdVerdict(res.Stdout, len(ctxs), ev, c.spec.AdminUser)
}

// sshdVerdict judges sshdScript's output: in every context password and
// keyboard-interactive logins are off, root may not log in, public keys
// are on, and authenticationmethods allows nothing but publickey.
func sshdVerdict(out string, contexts int, ev evidence, admin string) (Status, string) {
	want := map[string]string{"passwordauthentication": "no", "kbdinteractiveauthentication": "no", "permitrootlogin": "no", "pubkeyauthentication": "yes"}
	keys := make([]string, 0, len(want))
	for k := range want {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	var problems []string
	type section struct {
		what string
		got  map[string]string
	}
	var secs []*section
	for _, l := range strings.Split(out, "\n") {
		if w, ok := strings.CutPrefix(l, "== "); ok {
			secs = append(secs, &section{what: w, got: map[string]string{}})
			continue
		}
		if f := strings.Fields(l); len(f) >= 2 && len(secs) > 0 {
			secs[len(secs)-1].got[strings.ToLower(f[0])] = strings.ToLower(strings.Join(f[1:], " "))
		}
	}
	if len(secs) != contexts {
		problems = append(problems, fmt.Sprintf("read %d of %d connection contexts", len(secs), contexts))
	}
	for _, s := range secs {
		if len(s.got) == 0 {
			problems = append(problems, s.what+": failed")
			continue
		}
		for _, k := range keys {
			if s.got[k] != want[k] {
				problems = append(problems, fmt.Sprintf("%s: %s is %q, want %q", s.what, k, s.got[k], want[k]))
			}
		}
		if s.got["permitemptypasswords"] == "yes" {
			problems = append(problems, s.what+": permitemptypasswords yes")
		}
		if m := s.got["authenticationmethods"]; m != "" && m != "any" {
			for _, list := range strings.Fields(m) {
				for _, meth := range strings.Split(list, ",") {
					if meth != "publickey" {
						problems = append(problems, fmt.Sprintf("%s: authenticationmethods %q allows %q (only publickey)", s.what, m, meth))
					}
				}
			}
		}
	}
	return verdict(problems, ev, fmt.Sprintf("passwordauthentication no, kbdinteractiveauthentication no, permitrootlogin no, pubkeyauthentication yes, authenticationmethods publickey only, in all %d contexts (sshd -T, and -C for %s, root and a user with no account from the link, loopback, IPv6, a LAN and the tailnet)", len(secs), admin))
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

// shadowHash reads user's password hash (to put it back afterwards). err
// is Run's (a connection problem, or output cut).
func (c *checker) shadowHash(ctx context.Context, user string) (string, bool, error) {
	r, err := c.in.sudo(ctx, "getent shadow "+shellQuote(user)+" | cut -d: -f2")
	if err != nil || !r.OK() {
		return "", false, err
	}
	return strings.TrimSpace(r.Stdout), true, nil
}

// setPassword gives user a known password (through stdin: never on a
// command line).
func (c *checker) setPassword(ctx context.Context, user, pw string) (cmdResult, error) {
	return c.in.runT(ctx, "sudo -n chpasswd", []byte(user+":"+pw+"\n"), time.Minute)
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
	old, ok, _ := c.shadowHash(ctx, user)
	res, err := c.setPassword(ctx, user, pw)
	if err != nil || !res.OK() || !ok {
		ev.add("could not set a password for %s to try the right one: %v %s", user, err, res.Stderr)
		problems = append(problems, "could not set a known password (sudo chpasswd) to try it")
		return verdict(problems, ev, "")
	}
	ev.add("set a throwaway password for %s (sudo chpasswd, from stdin)", user)
	a, err = tryLogin(ctx, c.in.dialSSH, c.in.sshTarget(), user, 20*time.Second, passwordMethods(pw)...)
	check("the right password", a, err)
	if r, err := c.in.sudo(ctx, "usermod -p "+shellQuote(old)+" "+shellQuote(user)); err != nil || !r.OK() {
		ev.add("warning: could not restore %s's password hash: %v %s", user, err, r.Stderr)
	} else {
		ev.add("restored %s's password hash", user)
	}
	return verdict(problems, ev, fmt.Sprintf("%s refused with a wrong and with the right password; the server never offered password or keyboard-interactive", user))
}

func (c *checker) rootRefused(ctx context.Context) (Status, string) {
	var ev evidence
	var problems []string
	// Authorize the throwaway key for root, then try it: with
	// PermitRootLogin no, sshd refuses root whatever its keys.
	add := `umask 077; mkdir -p /root/.ssh; touch /root/.ssh/authorized_keys
cp -p /root/.ssh/authorized_keys /root/.ssh/.authorized_keys.bake-verify
printf '%s\n' ` + shellQuote(c.in.key.AuthorizedKey) + ` >> /root/.ssh/authorized_keys`
	res, err := c.in.sudo(ctx, add)
	if err != nil {
		return Fail, err.Error()
	}
	keyAdded := res.OK()
	if keyAdded {
		ev.add("added the throwaway key to /root/.ssh/authorized_keys")
	} else {
		ev.add("could not add the key to root's authorized_keys (trying anyway):\n%s", res.Evidence())
		problems = append(problems, "could not authorize the key for root to try it (sudo)")
	}
	a, err := tryLogin(ctx, c.in.dialSSH, c.in.sshTarget(), "root", 20*time.Second, ssh.PublicKeys(c.in.key.Signer))
	ev.add("%s", describeAttempt("root", "an authorized key", a, err))
	if err != nil {
		problems = append(problems, fmt.Sprintf("could not attempt a root login: %v", err))
	} else if a.LoggedIn {
		problems = append(problems, "root logged in with an authorized key")
	}
	if keyAdded {
		if r, err := c.in.sudo(ctx, "mv /root/.ssh/.authorized_keys.bake-verify /root/.ssh/authorized_keys"); err == nil && r.OK() {
			ev.add("restored root's authorized_keys")
		}
	}
	old, ok, herr := c.shadowHash(ctx, "root")
	pw := randomPassword()
	if r, err := c.setPassword(ctx, "root", pw); err == nil && r.OK() && ok {
		a, err := tryLogin(ctx, c.in.dialSSH, c.in.sshTarget(), "root", 20*time.Second, passwordMethods(pw)...)
		ev.add("%s", describeAttempt("root", "the right password", a, err))
		if err == nil && a.LoggedIn {
			problems = append(problems, "root logged in with its password")
		}
		if o := offered(a, "password", "keyboard-interactive"); err == nil && len(o) > 0 {
			problems = append(problems, "the server offers "+strings.Join(o, " and ")+" authentication to root")
		}
		c.in.sudo(ctx, "usermod -p "+shellQuote(old)+" root")
	} else {
		ev.add("could not set a root password to try it")
		for _, e := range []error{herr, err} {
			if errors.Is(e, errOutputCut) {
				problems = append(problems, "could not try root's password: "+e.Error())
			}
		}
	}
	return verdict(problems, ev, "root refused with an authorized key and with its password")
}

// The SSH checks.
var (
	checkSSHKeyLogin = Check{ID: "ssh.key-login", Scope: ScopeFirmware, Needs: "QEMU, the outside namespace (root, dnsmasq)",
		claim: func(s Spec, _ *GatewaySpec) string {
			return fmt.Sprintf("SSH key login as %s with the seed's key works", s.AdminUser)
		}}
	checkSSHEffective = Check{ID: "ssh.effective-config", Scope: ScopeFirmware, Needs: "an SSH session",
		claim: func(Spec, *GatewaySpec) string {
			return "effective sshd settings in every connection context (sshd -T -C: the admin, root, an unknown user; link, loopback, IPv6, LAN, tailnet): passwordauthentication no, kbdinteractiveauthentication no, permitrootlogin no, authenticationmethods publickey only"
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
