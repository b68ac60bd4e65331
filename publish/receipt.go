package publish

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"time"
)

// ReceiptPath is where the receipt of IMAGE's publications is written:
// IMAGE.publish.json beside it (e.g. out/openclaw.qcow2.publish.json).
func ReceiptPath(image string) string { return image + ".publish.json" }

// Receipt is IMAGE.publish.json: one record per destination, the latest
// publication to each.
type Receipt struct {
	Image       string   `json:"image"`
	ImageSHA256 string   `json:"image_sha256"`
	Publishes   []Record `json:"publishes"`
}

// Record is one publication: what went where, with its digests.
type Record struct {
	Destination string `json:"destination"` // as given: oci://REGISTRY/REPO:TAG, s3://BUCKET/KEY or libvirt://POOL/NAME

	// oci://
	Reference      string `json:"reference,omitempty"`       // REGISTRY/REPO:TAG
	Pinned         string `json:"pinned,omitempty"`          // REGISTRY/REPO@sha256:... (what to deploy)
	ManifestDigest string `json:"manifest_digest,omitempty"` // the tag's digest
	ConfigDigest   string `json:"config_digest,omitempty"`
	LayerDigest    string `json:"layer_digest,omitempty"`
	LayerBytes     int64  `json:"layer_bytes,omitempty"`
	LayerMediaType string `json:"layer_media_type,omitempty"`
	DiskPath       string `json:"disk_path,omitempty"`  // the qcow2's path in the containerDisk
	DiskOwner      string `json:"disk_owner,omitempty"` // uid:gid

	// s3://
	Bucket       string `json:"bucket,omitempty"`
	Key          string `json:"key,omitempty"`
	Endpoint     string `json:"endpoint,omitempty"` // https://HOST[:PORT]; empty for AWS S3
	Region       string `json:"region,omitempty"`
	Format       string `json:"format,omitempty"` // as the build manifest lists it (qcow2, raw, vhd, ...)
	ObjectBytes  int64  `json:"object_bytes,omitempty"`
	ETag         string `json:"etag,omitempty"`            // not a digest for a multipart upload
	VersionID    string `json:"version_id,omitempty"`      // in a versioned bucket
	Checksum     string `json:"checksum_sha256,omitempty"` // the store's ChecksumSHA256: the object's, or of its parts' ("-N")
	UploadID     string `json:"upload_id,omitempty"`       // the multipart upload that made it
	Parts        int    `json:"parts,omitempty"`
	PartSize     int64  `json:"part_size,omitempty"`
	ResumedParts int    `json:"resumed_parts,omitempty"` // parts an earlier, unfinished upload of this image had sent

	// libvirt://
	Libvirt *LibvirtRecord `json:"libvirt,omitempty"`

	ImageSHA256 string `json:"image_sha256"`
	Replaced    string `json:"replaced,omitempty"` // what --force replaced: a digest (oci), the old image's SHA-256 (s3)
	Checked     string `json:"checked"`            // what was checked at the destination
	Time        string `json:"time"`               // when (RFC 3339, UTC)
	Unchanged   bool   `json:"unchanged,omitempty"`
}

// writeReceipt records rec in path (atomically: a temporary file renamed).
// unchanged: the destination already held the image; the receipt is left
// alone when it already records this very publication.
func writeReceipt(path, image string, rec Record, now time.Time, unchanged bool) (bool, error) {
	var r Receipt
	if b, err := os.ReadFile(path); err == nil {
		if err := json.Unmarshal(b, &r); err != nil {
			return false, fmt.Errorf("%s: %w; not rewriting it", path, err)
		}
	} else if !errors.Is(err, os.ErrNotExist) {
		return false, err
	}
	if r.ImageSHA256 != rec.ImageSHA256 {
		// Another image now has this name: its receipts no longer apply.
		r.Publishes = nil
	}
	r.Image, r.ImageSHA256 = filepath.Base(image), rec.ImageSHA256
	rec.Time = now.UTC().Format(time.RFC3339)
	rec.Unchanged = unchanged
	replaced := false
	for i, o := range r.Publishes {
		if o.Destination == rec.Destination {
			if unchanged && o.ManifestDigest == rec.ManifestDigest && o.ETag == rec.ETag && o.ImageSHA256 == rec.ImageSHA256 {
				return false, nil
			}
			r.Publishes[i], replaced = rec, true
		}
	}
	if !replaced {
		r.Publishes = append(r.Publishes, rec)
	}
	b, err := json.MarshalIndent(r, "", "  ")
	if err != nil {
		return false, err
	}
	tmp, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".tmp-")
	if err != nil {
		return false, err
	}
	defer os.Remove(tmp.Name())
	if _, err := tmp.Write(append(b, '\n')); err != nil {
		tmp.Close()
		return false, err
	}
	if err := tmp.Chmod(0o644); err != nil {
		tmp.Close()
		return false, err
	}
	if err := tmp.Close(); err != nil {
		return false, err
	}
	return true, os.Rename(tmp.Name(), path)
}
