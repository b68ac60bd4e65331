package rootfs

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"regexp"
	"strconv"
	"strings"

	"github.com/bakeimg/bake/internal/safepath"
)

// Account names must be valid for Debian's useradd and for sudoers.
var accountNameRE = regexp.MustCompile(`^[a-z_][a-z0-9_.-]*$`)

// PasswdEntry is one line of the tree's /etc/passwd.
type PasswdEntry struct {
	Name     string
	UID, GID int
	Home     string
	Shell    string
}

// GroupEntry is one line of the tree's /etc/group.
type GroupEntry struct {
	Name    string
	GID     int
	Members []string
}

// ReadPasswd parses TREE/etc/passwd (read inside the tree, never the
// host's: uids in an image are the image's).
func ReadPasswd(tree string) ([]PasswdEntry, error) {
	lines, err := readColonFile(tree, "/etc/passwd", 7)
	if err != nil {
		return nil, err
	}
	var out []PasswdEntry
	for _, f := range lines {
		uid, err1 := strconv.Atoi(f[2])
		gid, err2 := strconv.Atoi(f[3])
		if err1 != nil || err2 != nil {
			return nil, fmt.Errorf("/etc/passwd: bad ids for %s", f[0])
		}
		out = append(out, PasswdEntry{Name: f[0], UID: uid, GID: gid, Home: f[5], Shell: f[6]})
	}
	return out, nil
}

// ReadGroup parses TREE/etc/group.
func ReadGroup(tree string) ([]GroupEntry, error) {
	lines, err := readColonFile(tree, "/etc/group", 4)
	if err != nil {
		return nil, err
	}
	var out []GroupEntry
	for _, f := range lines {
		gid, err := strconv.Atoi(f[2])
		if err != nil {
			return nil, fmt.Errorf("/etc/group: bad gid for %s", f[0])
		}
		var members []string
		if f[3] != "" {
			members = strings.Split(f[3], ",")
		}
		out = append(out, GroupEntry{Name: f[0], GID: gid, Members: members})
	}
	return out, nil
}

func readColonFile(tree, name string, nfields int) ([][]string, error) {
	root, err := safepath.Open(tree)
	if err != nil {
		return nil, err
	}
	defer root.Close()
	b, err := root.ReadFile(name)
	if err != nil {
		return nil, err
	}
	var out [][]string
	sc := bufio.NewScanner(bytes.NewReader(b))
	for sc.Scan() {
		line := sc.Text()
		if line == "" || strings.HasPrefix(line, "#") || strings.HasPrefix(line, "+") || strings.HasPrefix(line, "-") {
			continue
		}
		f := strings.Split(line, ":")
		if len(f) < nfields {
			return nil, fmt.Errorf("%s: malformed line %q", name, line)
		}
		out = append(out, f)
	}
	return out, sc.Err()
}

// LookupOwner resolves "user[:group]" against the tree's /etc/passwd and
// /etc/group (never the build host's, whose uids mean nothing in the image).
// Without a group the user's primary group is used. Numeric ids are taken
// as they are; "" is root:root.
func LookupOwner(tree, owner string) (uid, gid int, err error) {
	if owner == "" {
		return 0, 0, nil
	}
	user, group, hasGroup := strings.Cut(owner, ":")
	if n, err := strconv.Atoi(user); err == nil && n >= 0 {
		uid, gid = n, n
	} else {
		pw, err := ReadPasswd(tree)
		if err != nil {
			return 0, 0, err
		}
		found := false
		for _, e := range pw {
			if e.Name == user {
				uid, gid, found = e.UID, e.GID, true
				break
			}
		}
		if !found {
			return 0, 0, fmt.Errorf("owner %q: no user %q in the image's /etc/passwd", owner, user)
		}
	}
	if !hasGroup {
		if _, err := strconv.Atoi(user); err == nil {
			return 0, 0, fmt.Errorf("owner %q: a numeric user needs a group (uid:gid)", owner)
		}
		return uid, gid, nil
	}
	if n, err := strconv.Atoi(group); err == nil && n >= 0 {
		return uid, n, nil
	}
	gr, err := ReadGroup(tree)
	if err != nil {
		return 0, 0, err
	}
	for _, e := range gr {
		if e.Name == group {
			return uid, e.GID, nil
		}
	}
	return 0, 0, fmt.Errorf("owner %q: no group %q in the image's /etc/group", owner, group)
}

// AddGroup creates a group with the tree's groupadd. A group that already
// exists (a package may have made it) is accepted when its gid matches gid
// (or gid is nil).
func AddGroup(ctx context.Context, ch *Chroot, name string, gid *int, system bool) error {
	if !accountNameRE.MatchString(name) {
		return fmt.Errorf("group %q: invalid name", name)
	}
	groups, err := ReadGroup(ch.Tree())
	if err != nil {
		return err
	}
	for _, g := range groups {
		if g.Name == name {
			if gid != nil && *gid != g.GID {
				return fmt.Errorf("group %s exists in the image with gid %d, recipe wants %d", name, g.GID, *gid)
			}
			return nil
		}
	}
	args := []string{"groupadd"}
	if gid != nil {
		args = append(args, "--gid", strconv.Itoa(*gid))
	}
	if system {
		args = append(args, "--system")
	}
	return ch.Run(ctx, append(args, "--", name)...)
}

// UserOptions describe an account made in the tree.
type UserOptions struct {
	Name   string
	UID    *int
	Groups []string // supplementary groups; must exist
	Shell  string   // default /bin/bash, /usr/sbin/nologin for system users
	Home   string   // default /home/NAME
	System bool
	// SudoNopasswd writes a sudoers drop-in granting passwordless sudo.
	SudoNopasswd   bool
	AuthorizedKeys []string
}

// AddUser creates a user with the tree's useradd, so the uid comes from the
// image's own allocation and names resolve against its /etc/passwd. The
// user gets a group of its own name (or joins an existing group of that
// name). A login user's password field is "*" (no password, but not
// "locked": a "!" would make sshd without PAM refuse even key logins).
// Homes are made for login users, and for system users when Home is given.
func AddUser(ctx context.Context, ch *Chroot, u UserOptions) error {
	if !accountNameRE.MatchString(u.Name) {
		return fmt.Errorf("user %q: invalid name", u.Name)
	}
	pw, err := ReadPasswd(ch.Tree())
	if err != nil {
		return err
	}
	for _, e := range pw {
		if e.Name != u.Name {
			continue
		}
		// A system account a package made (postgres, _chrony, ...) is
		// the one a recipe declaring it with system: true means: it is
		// used as it is (its uid must be the recipe's, if the recipe
		// gives one), and joins the recipe's groups. A login user is
		// the recipe's own and never taken over.
		if !u.System {
			return fmt.Errorf("user %s already exists in the image", u.Name)
		}
		if u.UID != nil && *u.UID != e.UID {
			return fmt.Errorf("user %s exists in the image with uid %d, recipe wants %d", u.Name, e.UID, *u.UID)
		}
		if len(u.Groups) > 0 {
			if err := ch.Run(ctx, "usermod", "--append", "--groups", strings.Join(u.Groups, ","), "--", u.Name); err != nil {
				return fmt.Errorf("user %s: joining %s: %w", u.Name, strings.Join(u.Groups, ","), err)
			}
		}
		return nil
	}
	groups, err := ReadGroup(ch.Tree())
	if err != nil {
		return err
	}
	shell := u.Shell
	if shell == "" {
		shell = "/bin/bash"
		if u.System {
			shell = "/usr/sbin/nologin"
		}
	}
	home := u.Home
	if home == "" {
		home = "/home/" + u.Name
	}
	args := []string{"useradd", "--shell", shell, "--home-dir", home}
	if u.UID != nil {
		args = append(args, "--uid", strconv.Itoa(*u.UID))
	}
	if u.System {
		args = append(args, "--system")
	} else {
		args = append(args, "--password", "*")
	}
	if !u.System || u.Home != "" {
		args = append(args, "--create-home")
	} else {
		args = append(args, "--no-create-home")
	}
	ownGroup := false
	for _, g := range groups {
		if g.Name == u.Name {
			ownGroup = true
		}
	}
	if ownGroup {
		args = append(args, "--gid", u.Name)
	} else {
		args = append(args, "--user-group")
	}
	if len(u.Groups) > 0 {
		args = append(args, "--groups", strings.Join(u.Groups, ","))
	}
	if err := ch.Run(ctx, append(args, "--", u.Name)...); err != nil {
		return fmt.Errorf("adding user %s: %w", u.Name, err)
	}
	if u.SudoNopasswd {
		if err := addSudoers(ctx, ch, u.Name); err != nil {
			return err
		}
	}
	if len(u.AuthorizedKeys) > 0 {
		if err := writeAuthorizedKeys(ch.Tree(), u.Name, u.AuthorizedKeys); err != nil {
			return err
		}
	}
	return nil
}

// SudoersFile is the drop-in path for user. sudo skips files in
// /etc/sudoers.d whose names contain a '.', so dots become '_'.
func SudoersFile(user string) string {
	return "/etc/sudoers.d/90-bake-" + strings.ReplaceAll(user, ".", "_")
}

func addSudoers(ctx context.Context, ch *Chroot, user string) error {
	root := ch.Root()
	if ok, _ := root.Exists("/usr/sbin/visudo"); !ok {
		return fmt.Errorf("user %s: passwordless sudo needs the sudo package in the image", user)
	}
	name := SudoersFile(user)
	content := fmt.Sprintf("# Written by bake.\n%s ALL=(ALL:ALL) NOPASSWD: ALL\n", user)
	if err := root.WriteFile(name, []byte(content), 0o440, rootUID, rootGID); err != nil {
		return err
	}
	// The tree's visudo checks the syntax with the tree's sudo version; a
	// broken drop-in would lock every sudo user out.
	if err := ch.Run(ctx, "visudo", "-c", "-q", "-f", name); err != nil {
		_ = root.Remove(name)
		return fmt.Errorf("sudoers drop-in for %s: %w", user, err)
	}
	return nil
}

func writeAuthorizedKeys(tree, user string, keys []string) error {
	pw, err := ReadPasswd(tree)
	if err != nil {
		return err
	}
	var e *PasswdEntry
	for i := range pw {
		if pw[i].Name == user {
			e = &pw[i]
		}
	}
	if e == nil {
		return fmt.Errorf("user %s not in the image's /etc/passwd", user)
	}
	root, err := safepath.Open(tree)
	if err != nil {
		return err
	}
	defer root.Close()
	if err := root.MkdirAll(e.Home, 0o755, e.UID, e.GID); err != nil {
		return err
	}
	ssh := e.Home + "/.ssh"
	if err := root.Mkdir(ssh, 0o700, e.UID, e.GID); err != nil {
		return err
	}
	// Mkdir leaves an existing directory as it was; sshd's StrictModes
	// wants it private and the user's.
	if err := root.Lchown(ssh, e.UID, e.GID); err != nil {
		return err
	}
	if err := root.Chmod(ssh, 0o700); err != nil {
		return err
	}
	var b strings.Builder
	for _, k := range keys {
		b.WriteString(strings.TrimSpace(k) + "\n")
	}
	return root.WriteFile(ssh+"/authorized_keys", []byte(b.String()), 0o600, e.UID, e.GID)
}
