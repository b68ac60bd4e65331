// Package publish owns bake's last stage, publish: a finished image (a
// qcow2 that bake build wrote, with its NAME.manifest.json beside it) is
// delivered to a destination, atomically and idempotently, checked there
// against the local digests, and a JSON receipt is written beside the image.
//
// Destinations:
//
//   - oci://REGISTRY/REPO:TAG: the image as a KubeVirt containerDisk, one
//     uncompressed, reproducible layer holding /disk/NAME.qcow2 owned
//     107:107 (the qemu user of KubeVirt's virt-launcher). Blobs and the
//     manifest (by digest) go first, the manifest is read back and compared,
//     and only then is the tag pushed: the tag never names a partial or
//     unchecked image.
//
// Other destinations (s3://, libvirt) are not implemented yet.
package publish
