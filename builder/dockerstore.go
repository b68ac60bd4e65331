package builder

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/bakeimg/bake/internal/execx"
	"github.com/bakeimg/bake/internal/mounts"
	"github.com/bakeimg/bake/rootfs"
)

// Preloading container images into Docker's own store (containers stage).
//
// An instance must run its containers from its first second, with no
// network. Storing a `docker save` archive in the disk and loading it at
// first boot works, but costs the first boot minutes for a large image
// (the gateway's 750 MiB take 3-4 minutes under software emulation, 20-30 s
// on real hardware) and keeps the image twice on the disk. Instead the
// containers stage runs the image's own dockerd in the tree once, loads
// every archive into /var/lib/docker and stops it: the store on the disk is
// written by exactly the Docker version that reads it at boot, and bake
// never writes Docker's on-disk format itself.
//
// The daemon runs chrooted into the tree, in network and mount namespaces
// of its own (no bridge, no iptables, nothing it does reaches the build
// host's network; its overlay mounts vanish with it), with a configuration
// file of its own (the image's daemon.json is for the instance) and its
// sockets and state under the chroot's tmpfs /run.
// Only image/ and overlay2/ are kept below /var/lib/docker: containerd's
// state, the network database, and the trust key dockerd makes at start
// (/etc/docker/key.json, a private key that must not be shared by every
// instance) are removed, and Docker makes them again at first boot.

// dockerPreloadHost runs on the build host in the preload's own mount and
// network namespaces (both vanish with it, and with them every mount
// dockerd made): it makes the tree a mount point, shows dockerd the host's
// cgroup hierarchy read-only (Docker refuses to start without its cgroup
// controllers, but loading images creates no cgroup), then enters the
// chroot. Arguments: TREE SCRIPT ARGS...
const dockerPreloadHost = `set -eu
tree=$1 script=$2
shift 2
# Docker's untar helper makes / an rslave mount before it pivots into a
# layer: / must be a mount point.
mount --rbind "$tree" "$tree"
cg="$tree/sys/fs/cgroup"
if mountpoint -q /sys/fs/cgroup; then
	mount --rbind /sys/fs/cgroup "$cg"
	for m in $(findmnt --submounts --noheadings --raw --output TARGET --mountpoint "$cg"); do
		mount -o remount,bind,ro "$m"
	done
fi
exec /usr/sbin/chroot "$tree" /bin/sh -c "$script" sh "$@"
`

// dockerPreloadScript runs in the chroot: sh -c SCRIPT sh ARCHIVE ID
// [ARCHIVE ID ...]. It starts dockerd, loads each archive, checks that
// Docker now has the expected image ID, and stops dockerd, also when it is
// interrupted.
const dockerPreloadScript = `set -eu
run=/run/bake-preload
mkdir -p "$run"
echo '{}' > "$run/daemon.json"
sock="unix://$run/docker.sock"
dockerd --config-file "$run/daemon.json" --data-root /var/lib/docker \
	--exec-root "$run/exec" --pidfile "$run/docker.pid" --host "$sock" \
	--storage-driver overlay2 --bridge none --iptables=false \
	--ip-forward=false --ip-masq=false --log-level warn \
	> "$run/dockerd.log" 2>&1 &
pid=$!
stop() {
	kill -TERM "$pid" 2>/dev/null || true
	wait "$pid" 2>/dev/null || true
}
trap stop EXIT
trap 'exit 130' INT TERM
i=0
until docker --host "$sock" info >/dev/null 2>&1; do
	if ! kill -0 "$pid" 2>/dev/null || [ "$i" -ge 600 ]; then
		echo "bake: dockerd did not start in the image:" >&2
		cat "$run/dockerd.log" >&2
		exit 1
	fi
	i=$((i + 1))
	sleep 0.1
done
driver=$(docker --host "$sock" info --format '{{.Driver}}')
if [ "$driver" != overlay2 ]; then
	echo "bake: dockerd uses storage driver $driver, not overlay2" >&2
	exit 1
fi
while [ $# -ge 2 ]; do
	docker --host "$sock" load --quiet --input "$1"
	got=$(docker --host "$sock" image inspect --format '{{.Id}}' "$2")
	if [ "$got" != "$2" ]; then
		echo "bake: $1 gave image $got, want $2" >&2
		exit 1
	fi
	shift 2
done
stop
trap - EXIT
if [ -s "$run/dockerd.log" ]; then
	echo "bake: dockerd said:" >&2
	cat "$run/dockerd.log" >&2
fi
`

// dockerStoreKeep are the only entries of /var/lib/docker kept after the
// preload: the image and layer metadata, and the layers.
var dockerStoreKeep = map[string]bool{"image": true, "overlay2": true}

// preloadDockerImages loads archives (host paths, each with the image ID
// it must give) into the tree's Docker store. The archives' directory is
// bind-mounted into the chroot for the load, so they never become files of
// the image.
func preloadDockerImages(ctx context.Context, s *State, dir string, archives []string, ids []string) error {
	found := false
	for _, d := range []string{"usr/sbin/dockerd", "usr/bin/dockerd"} {
		if _, err := os.Lstat(filepath.Join(s.Tree, d)); err == nil {
			found = true
		}
	}
	if !found {
		return fmt.Errorf("the image has no dockerd (/usr/sbin or /usr/bin) to preload its containers' images with (install docker.io)")
	}
	if ents, err := os.ReadDir(filepath.Join(s.Tree, "var/lib/docker")); err == nil && len(ents) > 0 {
		var names []string
		for _, e := range ents {
			names = append(names, e.Name())
		}
		return fmt.Errorf("/var/lib/docker in the image is not empty (%s): bake preloads images only into a fresh Docker store", strings.Join(names, ", "))
	}
	_, keyErr := os.Lstat(filepath.Join(s.Tree, "etc/docker/key.json"))
	hadKey := keyErr == nil
	err := withChroot(ctx, s, func(ch *rootfs.Chroot) error {
		const inside = "/run/bake-images"
		unmount, err := ch.BindMount(dir, inside)
		if err != nil {
			return err
		}
		args := []string{"-i", "PATH=" + rootfs.ChrootPath, "LC_ALL=C.UTF-8", "LANG=C.UTF-8", "HOME=/root",
			"/usr/bin/unshare", "--net", "--mount", "--propagation", "private",
			"/bin/sh", "-c", dockerPreloadHost, "sh", ch.Tree(), dockerPreloadScript}
		for i, a := range archives {
			args = append(args, inside+"/"+filepath.Base(a), ids[i])
		}
		cmd := execx.Cmd{Name: "/usr/bin/env", Args: args, Stdout: s.Opts.Stdout}
		runErr := s.Runner.Run(ctx, cmd)
		if err := unmount(); err != nil && runErr == nil {
			runErr = err
		}
		return runErr
	})
	if err != nil {
		return fmt.Errorf("preloading Docker's store: %w", err)
	}
	return tidyDockerStore(s.Tree, hadKey)
}

// tidyDockerStore removes what a dockerd run leaves besides the images.
func tidyDockerStore(tree string, hadKey bool) error {
	root := filepath.Join(tree, "var/lib/docker")
	ents, err := os.ReadDir(root)
	if err != nil {
		return err
	}
	for k := range dockerStoreKeep {
		if st, err := os.Lstat(filepath.Join(root, k)); err != nil || !st.IsDir() {
			return fmt.Errorf("preloading Docker's store: /var/lib/docker/%s is missing after the load", k)
		}
	}
	for _, e := range ents {
		if dockerStoreKeep[e.Name()] {
			continue
		}
		p := filepath.Join(root, e.Name())
		if left, err := mounts.Below(p); err != nil || len(left) > 0 {
			return fmt.Errorf("preloading Docker's store: %s still has mounts below it: %v %v", p, left, err)
		}
		if err := os.RemoveAll(p); err != nil {
			return err
		}
	}
	if !hadKey {
		if err := os.Remove(filepath.Join(tree, "etc/docker/key.json")); err != nil && !os.IsNotExist(err) {
			return err
		}
	}
	return nil
}

// dockerStoreNote is what the plan says about where a container's image goes.
const dockerStoreNote = "preloaded into Docker's store (/var/lib/docker, by the image's own dockerd at build time)"
