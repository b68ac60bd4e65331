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
//   - s3://BUCKET/KEY: the image file as one object (AWS S3, or an
//     S3-compatible store at Options.Endpoint), its SHA-256 in the object's
//     metadata (bake-sha256). A small image is one PUT with its SHA-256; a
//     larger one a multipart upload, parts streamed from the file with
//     their SHA-256s, completed last and aborted on any failure or
//     cancellation; an unfinished upload of the same image that a killed
//     run left is resumed. The object is then checked (HEAD: size,
//     metadata and the store's own checksum; read back when the store
//     reports none). Credentials come from the environment or an AWS
//     credentials file, never from the command line.
//
//   - libvirt://POOL/NAME (over --connect URI): the qcow2 uploaded into a
//     storage pool as NAME.image.qcow2 and read back, the domain's disk
//     NAME.qcow2 a qcow2 overlay on it, a NoCloud seed NAME.seed made by
//     bake seed's writer, and the domain NAME defined last (the image's
//     firmware, virtio devices), checked, optionally started. A failure
//     removes every volume it made.
package publish
