package recipe

import (
	"path"
	"regexp"
	"slices"
	"strings"

	"github.com/bakeimg/bake/appliance"
)

// DefaultStateLabel is the state volume's file system label.
const DefaultStateLabel = "bake-state"

// MinStatePartition is the smallest state partition (state.partition.size).
const MinStatePartition = 64 << 20

// Label is the state's ext4 label (and, for a partition, its GPT name).
func (s *State) Label() string {
	if s.Partition != nil {
		return s.Partition.Label
	}
	return s.Volume.Label
}

// FirstbootStampDir holds first boot's once-per-instance stamps; it is
// always on the state volume, so a new image on an old volume does not
// apply the seed again (a new token, new admin keys).
const FirstbootStampDir = appliance.StateDir + "/firstboot"

// DefaultStatePaths are the instance-owned paths of an appliance, in the
// order first boot binds them. Why each:
//   - the gateway's state directory (Gateway.StateDir): its token and
//     openclaw.json, paired devices, sessions, channel settings;
//   - /var/lib/tailscale: the node's identity (a new one is a new node
//     that needs a new auth key);
//   - /etc/ssh/ssh_host_*: the host keys (a new one makes every client
//     refuse the host: "host key changed"); files, not /etc/ssh, whose
//     sshd_config the image owns;
//   - the admin's ~/.ssh (authorized_keys from the seed): the directory,
//     not the file, because first boot replaces authorized_keys by
//     rename(2), which a file bind mount refuses (EBUSY);
//   - /var/lib/docker/volumes: the containers' named volumes (the
//     images in /var/lib/docker are the image's own);
//   - /etc/machine-id: networkd derives the DHCP client ID from it (a
//     new one is a new address) and first boot keys its stamp by it;
//   - /var/lib/cloud: cloud-init's instance record (without it a new
//     image re-runs the per-instance modules).
//
// Left out: /var/log (the journal is per boot; keep it elsewhere when it
// matters), /home of other users (the recipe owns them), /etc as a whole
// (the image owns its configuration).
func (r *Recipe) DefaultStatePaths() []string {
	var ps []string
	if g := r.Gateway; g != nil && g.StateDir != "" {
		ps = append(ps, g.StateDir)
	}
	if t := r.Tailscale; t != nil && t.Enabled {
		ps = append(ps, "/var/lib/tailscale")
	}
	if r.SSH != nil || r.Firstboot != nil {
		ps = append(ps, "/etc/ssh/ssh_host_*")
	}
	if fb := r.Firstboot; fb != nil {
		if u := r.UserByName(fb.AdminUser); u != nil {
			ps = append(ps, path.Join(u.HomeDir(), ".ssh"))
		}
	}
	if len(r.Containers) > 0 {
		ps = append(ps, "/var/lib/docker/volumes")
	}
	ps = append(ps, "/etc/machine-id")
	if r.Firstboot.HasSeed("cloud-init") || r.Base.Image != nil {
		ps = append(ps, "/var/lib/cloud")
	}
	return ps
}

// stateDefaults fills state.volume.label and state.paths; it runs after
// the gateway's paths are known. The first-boot stamps are always added.
func (r *Recipe) stateDefaults() {
	s := r.State
	if s == nil {
		return
	}
	if p := s.Partition; p != nil {
		if p.Label == "" {
			p.Label = DefaultStateLabel
		}
		p.SizeBytes, _ = ParseSize(p.Size) // validated
	} else if s.Volume.Label == "" {
		s.Volume.Label = DefaultStateLabel
	}
	if len(s.Paths) == 0 {
		s.Paths = r.DefaultStatePaths()
	}
	if !slices.Contains(s.Paths, FirstbootStampDir) {
		s.Paths = append(s.Paths, FirstbootStampDir)
	}
}

var (
	stateLabelRe  = regexp.MustCompile(`^[A-Za-z0-9_.-]{1,16}$`)
	stateSerialRe = regexp.MustCompile(`^[A-Za-z0-9_.-]{1,20}$`)
	statePathRe   = regexp.MustCompile(`^/[A-Za-z0-9_.@+/-]*\*?[A-Za-z0-9_.@+-]*$`)
)

// stateForbidden are trees a state path may not be in or over: the
// image's own (/usr, /boot, /bin...), and what is never on disk.
var stateForbidden = []string{"/usr", "/boot", "/bin", "/sbin", "/lib", "/lib64", "/proc", "/sys", "/dev", "/run", "/tmp", "/etc/bake", "/usr/share/bake"}

func (v *validator) stateSection() {
	s := v.r.State
	if s == nil {
		return
	}
	if l := s.Volume.Label; l != "" && !stateLabelRe.MatchString(l) {
		v.errorf("state.volume.label", "an ext4 label: 1 to 16 of A-Z a-z 0-9 _ . -, e.g. bake-state", "%q is not a usable file system label", l)
	}
	if sr := s.Volume.Serial; sr != "" && !stateSerialRe.MatchString(sr) {
		v.errorf("state.volume.serial", "a virtio serial: 1 to 20 of A-Z a-z 0-9 _ . -, e.g. bake-state", "%q is not a usable disk serial", sr)
	}
	if p := s.Partition; p != nil {
		if s.Volume.Label != "" || s.Volume.Serial != "" {
			v.errorf("state.partition", "keep state.volume (a second disk) or state.partition (a partition of the root disk), not both: e.g. state: {partition: {size: 2GiB}}", "state.volume and state.partition are both set")
		}
		if l := p.Label; l != "" && !stateLabelRe.MatchString(l) {
			v.errorf("state.partition.label", "an ext4 label: 1 to 16 of A-Z a-z 0-9 _ . -, e.g. bake-state", "%q is not a usable file system label", l)
		}
		switch n, err := ParseSize(p.Size); {
		case p.Size == "":
			v.errorf("state.partition", "give its size, e.g. partition: {size: 2GiB}", "state.partition has no size")
		case err != nil:
			v.errorf("state.partition.size", sizeHint, "%v", err)
		case n%(1<<20) != 0 || n < MinStatePartition:
			v.errorf("state.partition.size", "a whole number of MiB, at least 64MiB, e.g. 2GiB", "%s is not a usable state partition size", p.Size)
		}
	}
	seen := map[string]int{}
	for i, p := range s.Paths {
		at := indexPath("state.paths", i)
		switch {
		case !statePathRe.MatchString(p) || path.Clean(p) != p || p == "/" || strings.Contains(path.Dir(p), "*"):
			v.errorf(at, "an absolute, clean path, e.g. /var/lib/tailscale; a * only in the last part, e.g. /etc/ssh/ssh_host_*", "%q is not a usable state path", p)
			continue
		}
		for _, f := range stateForbidden {
			if p == f || strings.HasPrefix(p, f+"/") || strings.HasPrefix(f, p+"/") {
				v.errorf(at, "keep instance state under /var, /etc or /home; "+f+" belongs to the image or is never on disk", "%q overlaps %s", p, f)
				break
			}
		}
		if j, ok := seen[p]; ok {
			v.errorf(at, "list each path once", "%q is also state.paths[%d]", p, j)
			continue
		}
		for q, j := range seen {
			if strings.HasPrefix(p, q+"/") || strings.HasPrefix(q, p+"/") {
				v.errorf(at, "list the outer directory only: nested paths would be bound twice", "%q and state.paths[%d] %q nest", p, j, q)
			}
		}
		seen[p] = i
	}
}
