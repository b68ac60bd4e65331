package appliance

import (
	"encoding/json"
	"fmt"
	"sort"
	"strings"
)

// Container file locations.
const (
	ContainerImageScript = LibDir + "/container-image"
	ContainersRecord     = ShareDir + "/containers.json"
	containerEnvDir      = EtcDir + "/containers"
	// TmpMount puts /tmp on a tmpfs in an image with containers (enabled
	// by the containers stage as TmpMountName).
	TmpMount     = UnitDir + "/" + TmpMountName
	TmpMountName = "tmp.mount"
)

// tmpMount is /tmp on a tmpfs, as systemd's own tmp.mount (which Debian 12
// ships but does not enable). Why an appliance with containers needs it:
// Docker's runtime writes every `docker exec`'s process spec, its command
// line and environment, to a temp file in /tmp (go-runc's Exec, in
// containerd's runc shim, os.CreateTemp with no XDG_RUNTIME_DIR) and
// removes it once runc has read it. On the root disk a secret on an exec's
// command line (a health probe's --token, docker exec -e TOKEN=...) could
// reach a data block before the removal and stay there in a free block:
// verify's scan of an upgraded instance's root disk found the gateway token
// once in a free block, 133 bytes into it: where verify's health probe's
// spec, {"user":{"uid":999,"gid":995,"additionalGids":[995]},"args":
// ["openclaw","gateway","health","--url","ws://127.0.0.1:18789","--token",
// has it (seen in a guest: /tmp/runc-process*, the token at byte 133). On
// a tmpfs it never reaches a disk. mode 1777 and nosuid,nodev as on any Debian /tmp;
// half the memory at most, as systemd's default.
const tmpMount = `[Unit]
Description=Temporary Directory /tmp (a tmpfs: nothing written there reaches a disk)
Documentation=https://systemd.io/TEMPORARY_DIRECTORIES
ConditionPathIsSymbolicLink=!/tmp
DefaultDependencies=no
Conflicts=umount.target
Before=local-fs.target umount.target
After=swap.target

[Mount]
What=tmpfs
Where=/tmp
Type=tmpfs
Options=mode=1777,strictatime,nosuid,nodev,size=50%%,nr_inodes=1m

[Install]
WantedBy=local-fs.target
`

// ContainerUnitName is the systemd unit that runs container name.
func ContainerUnitName(name string) string { return "bake-container-" + name + ".service" }

// ContainerEnvFile holds the container's environment (docker --env-file).
func ContainerEnvFile(name string) string { return containerEnvDir + "/" + name + ".env" }

// ContainerSpec is one container as it runs on the appliance.
type ContainerSpec struct {
	Name string
	Ref  string // as the recipe wrote it
	// ImageID is the image's config digest (sha256:...), which Docker
	// keeps as the image ID: the unit runs exactly this image, which the
	// build preloaded into Docker's store in the disk.
	ImageID string
	// Digest is the manifest digest the reference resolved to (recorded).
	Digest   string
	UID, GID int
	Publish  []string // docker -p values, e.g. 127.0.0.1:18789:18789
	Env      map[string]string
	Volumes  []string // docker -v values
	Command  []string
	Restart  string // always, on-failure, no
	// Requires are units that must be active first (bake-docker-user:
	// no port is published before isolation is in place).
	Requires []string
	// After are further units ordered before it (first boot, which
	// writes the gateway's config).
	After []string
}

// RunArgs is the `docker run` command line (without the program): the
// pinned image ID, never a name that could resolve to something else; the
// container's own uid; no new privileges; no capabilities; --rm so that a
// restart starts from the image again.
func (c ContainerSpec) RunArgs() []string {
	a := []string{"run", "--rm", "--name", c.Name,
		"--user", fmt.Sprintf("%d:%d", c.UID, c.GID),
		"--security-opt", "no-new-privileges",
		"--cap-drop", "ALL",
	}
	for _, p := range c.Publish {
		a = append(a, "--publish", p)
	}
	if len(c.Env) > 0 {
		a = append(a, "--env-file", ContainerEnvFile(c.Name))
	}
	for _, v := range c.Volumes {
		a = append(a, "--volume", v)
	}
	a = append(a, c.ImageID)
	return append(a, c.Command...)
}

// EnvFile is docker's env-file format: NAME=VALUE lines, taken literally.
func (c ContainerSpec) EnvFile() string {
	keys := make([]string, 0, len(c.Env))
	for k := range c.Env {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	var b strings.Builder
	b.WriteString(Header)
	for _, k := range keys {
		b.WriteString(k + "=" + c.Env[k] + "\n")
	}
	return b.String()
}

// Unit renders the container's systemd unit.
func (c ContainerSpec) Unit() string {
	requires := append([]string{"docker.service"}, c.Requires...)
	after := append(append([]string{}, requires...), c.After...)
	var b strings.Builder
	b.WriteString(Header)
	b.WriteString("[Unit]\n")
	fmt.Fprintf(&b, "Description=bake: container %s (%s)\n", c.Name, c.Ref)
	fmt.Fprintf(&b, "Requires=%s\n", strings.Join(requires, " "))
	fmt.Fprintf(&b, "After=%s\n", strings.Join(after, " "))
	b.WriteString("StartLimitIntervalSec=0\n")
	b.WriteString("\n[Service]\nType=exec\n")
	// Pulling an image is never needed (it is in Docker's store), but
	// dockerd's first start under software emulation is slow.
	b.WriteString("TimeoutStartSec=10min\n")
	fmt.Fprintf(&b, "ExecStartPre=%s %s %s\n", ContainerImageScript, c.Name, c.ImageID)
	// A container left by an unclean stop would hold the name.
	fmt.Fprintf(&b, "ExecStartPre=-/usr/bin/docker rm --force %s\n", c.Name)
	args := []string{"/usr/bin/docker"}
	for _, a := range c.RunArgs() {
		args = append(args, unitQuote(a))
	}
	fmt.Fprintf(&b, "ExecStart=%s\n", strings.Join(args, " "))
	fmt.Fprintf(&b, "ExecStop=/usr/bin/docker stop --time 20 %s\n", c.Name)
	restart := c.Restart
	if restart == "" {
		restart = "always"
	}
	fmt.Fprintf(&b, "Restart=%s\n", restart)
	if restart != "no" {
		b.WriteString("RestartSec=5s\n")
	}
	b.WriteString("\n[Install]\nWantedBy=multi-user.target\n")
	return b.String()
}

// containerImageScript checks, before the container starts, that Docker
// has the pinned image ID. The build preloaded it into Docker's store in the
// disk; nothing is ever pulled, so a missing image (/var/lib/docker wiped
// or replaced) is an error that says so instead of a silent pull.
const containerImageScript = `#!/bin/sh
# bake: make sure Docker has the pinned image of a container.
# usage: container-image NAME IMAGE_ID
set -eu
name=$1 id=$2
if docker image inspect --format '{{.Id}}' "$id" >/dev/null 2>&1; then
	exit 0
fi
echo "bake: Docker's store has no image $id for container $name; it was preloaded into /var/lib/docker when the image was built, and bake never pulls: rebuild the disk image" >&2
exit 1
`

// ContainerRecord is what the image records about each container
// (/usr/share/bake/containers.json), for checks run against the instance.
type ContainerRecord struct {
	Name    string `json:"name"`
	Ref     string `json:"ref"`
	Digest  string `json:"digest"`
	ImageID string `json:"image_id"`
	Unit    string `json:"unit"`
	User    string `json:"user"`
	// Versions are what the image's bake labels say it holds (an image
	// bake built: npm package and version, node, Debian suite).
	Versions map[string]string `json:"versions,omitempty"`
}

// Record returns c's record.
func (c ContainerSpec) Record() ContainerRecord {
	return ContainerRecord{Name: c.Name, Ref: c.Ref, Digest: c.Digest, ImageID: c.ImageID,
		Unit: ContainerUnitName(c.Name), User: fmt.Sprintf("%d:%d", c.UID, c.GID)}
}

// ContainerFiles are the files of the containers stage (the images are
// preloaded into Docker's store separately).
func ContainerFiles(specs []ContainerSpec) []File {
	fs := []File{file(ContainerImageScript, containerImageScript, execMode), file(TmpMount, Header+tmpMount, unitMode)}
	var recs []ContainerRecord
	for _, c := range specs {
		fs = append(fs, file(UnitDir+"/"+ContainerUnitName(c.Name), c.Unit(), unitMode))
		if len(c.Env) > 0 {
			fs = append(fs, file(ContainerEnvFile(c.Name), c.EnvFile(), privMode))
		}
		recs = append(recs, c.Record())
	}
	b, _ := json.MarshalIndent(recs, "", "  ")
	fs = append(fs, file(ContainersRecord, string(b)+"\n", unitMode))
	return fs
}
