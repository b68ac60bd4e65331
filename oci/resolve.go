package oci

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/google/go-containerregistry/pkg/v1/match"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
)

// Reference prefixes for images that are not in a registry.
const (
	OCILayoutPrefix     = "oci-layout:"
	DockerArchivePrefix = "docker-archive:"
)

// refNameAnnotation names an image inside an OCI layout.
const refNameAnnotation = "org.opencontainers.image.ref.name"

// Resolve finds the image ref names and returns it with its digest
// ("sha256:..."). ref is one of:
//
//	HOST/REPO:TAG, HOST/REPO@sha256:... (a registry; plain HTTP only for
//	    127.0.0.1, localhost and ::1)
//	oci-layout:DIR[:TAG][@sha256:...] (an OCI image layout directory)
//	docker-archive:FILE[:REPO:TAG][@sha256:...] (a `docker save` tarball)
//
// The digest is the manifest digest, except for a docker archive: it holds
// no manifest (gcr synthesises one with Docker media types, whose digest no
// one else knows), so there it is the image ID, the digest of the config,
// which is also what `docker load` and `docker inspect` report. A digest in
// ref pins the image in the same terms: any other image is an error.
// Layers are fetched lazily, when the image is read.
func Resolve(ctx context.Context, ref string) (v1.Image, string, error) {
	var (
		img v1.Image
		err error
		pin string
	)
	switch {
	case strings.HasPrefix(ref, OCILayoutPrefix):
		var dir, tag string
		dir, tag, pin = splitLocalRef(strings.TrimPrefix(ref, OCILayoutPrefix))
		img, err = fromLayout(dir, tag, pin)
	case strings.HasPrefix(ref, DockerArchivePrefix):
		var file, tag string
		file, tag, pin = splitLocalRef(strings.TrimPrefix(ref, DockerArchivePrefix))
		img, err = fromDockerArchive(file, tag)
	default:
		img, pin, err = fromRegistry(ctx, ref)
	}
	if err != nil {
		return nil, "", fmt.Errorf("image %s: %w", ref, err)
	}
	var d v1.Hash
	if strings.HasPrefix(ref, DockerArchivePrefix) {
		d, err = img.ConfigName()
	} else {
		d, err = img.Digest()
	}
	if err != nil {
		return nil, "", fmt.Errorf("image %s: %w", ref, err)
	}
	if pin != "" && d.String() != pin {
		return nil, "", fmt.Errorf("image %s: digest is %s, the reference pins %s", ref, d, pin)
	}
	return img, d.String(), nil
}

// splitLocalRef splits "PATH[:TAG][@sha256:...]". TAG may itself contain
// colons (a docker archive names images "repo:tag"), and so may PATH: the
// split is at the first colon where PATH exists.
func splitLocalRef(s string) (p, tag, pin string) {
	if i := strings.LastIndex(s, "@sha256:"); i >= 0 {
		s, pin = s[:i], s[i+1:]
	}
	if _, err := os.Stat(s); err == nil {
		return s, "", pin
	}
	for i := 0; i < len(s); i++ {
		if s[i] != ':' {
			continue
		}
		if _, err := os.Stat(s[:i]); err == nil {
			return s[:i], s[i+1:], pin
		}
	}
	return s, "", pin
}

func fromLayout(dir, tag, pin string) (v1.Image, error) {
	p, err := layout.FromPath(dir)
	if err != nil {
		return nil, err
	}
	idx, err := p.ImageIndex()
	if err != nil {
		return nil, err
	}
	im, err := idx.IndexManifest()
	if err != nil {
		return nil, err
	}
	var found []v1.Descriptor
	for _, d := range im.Manifests {
		if !d.MediaType.IsImage() {
			continue
		}
		switch {
		case tag != "" && d.Annotations[refNameAnnotation] != tag:
		case pin != "" && tag == "" && d.Digest.String() != pin:
		default:
			found = append(found, d)
		}
	}
	switch {
	case len(found) == 0 && tag != "":
		return nil, fmt.Errorf("no image tagged %q in the layout", tag)
	case len(found) == 0:
		return nil, errors.New("no image in the layout")
	case len(found) > 1:
		return nil, fmt.Errorf("%d images in the layout: name one with :TAG or @sha256:...", len(found))
	}
	return p.Image(found[0].Digest)
}

func fromDockerArchive(file, tag string) (v1.Image, error) {
	if _, err := os.Stat(file); err != nil {
		return nil, err
	}
	var t *name.Tag
	if tag != "" {
		// Named as docker names it (REPO:TAG, compared after
		// normalisation: "foo:1" is "index.docker.io/library/foo:1").
		nt, err := name.NewTag(tag)
		if err != nil {
			return nil, err
		}
		t = &nt
	}
	return tarball.ImageFromPath(file, t)
}

// insecureHost is true for registries on the loopback interface, the only
// ones spoken to over plain HTTP (test registries).
func insecureHost(reg string) bool {
	host := reg
	if h, _, err := net.SplitHostPort(reg); err == nil {
		host = h
	}
	host = strings.Trim(host, "[]")
	if host == "localhost" {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

func fromRegistry(ctx context.Context, ref string) (v1.Image, string, error) {
	var opts []name.Option
	if reg, _, ok := strings.Cut(ref, "/"); ok && insecureHost(reg) {
		opts = append(opts, name.Insecure)
	}
	r, err := name.ParseReference(ref, opts...)
	if err != nil {
		return nil, "", err
	}
	pin := ""
	if d, ok := r.(name.Digest); ok {
		pin = d.DigestStr()
	}
	img, err := remote.Image(r, remote.WithContext(ctx), remote.WithAuthFromKeychain(authn.DefaultKeychain),
		remote.WithPlatform(v1.Platform{OS: "linux", Architecture: "amd64"}))
	return img, pin, err
}

// WriteDockerArchive writes img as a `docker save` tarball that
// `docker load` accepts, naming it tag (REPO:TAG). The file is replaced
// atomically.
func WriteDockerArchive(img v1.Image, tag, path string) error {
	t, err := name.NewTag(tag)
	if err != nil {
		return fmt.Errorf("docker archive: tag %q: %w", tag, err)
	}
	tmp, err := os.CreateTemp(filepath.Dir(path), ".docker-archive-*")
	if err != nil {
		return err
	}
	defer os.Remove(tmp.Name())
	if err := tarball.Write(t, img, tmp); err != nil {
		tmp.Close()
		return fmt.Errorf("docker archive %s: %w", path, err)
	}
	if err := tmp.Close(); err != nil {
		return err
	}
	if err := os.Chmod(tmp.Name(), 0o644); err != nil {
		return err
	}
	return os.Rename(tmp.Name(), path)
}

// WriteOCILayout writes img into the OCI image layout at dir (created if
// needed), named by tags (org.opencontainers.image.ref.name); an image
// already there under one of the tags is replaced.
func WriteOCILayout(img v1.Image, dir string, tags ...string) error {
	p, err := layout.FromPath(dir)
	if err != nil {
		if p, err = layout.Write(dir, empty.Index); err != nil {
			return fmt.Errorf("oci layout %s: %w", dir, err)
		}
	}
	if len(tags) == 0 {
		return p.AppendImage(img)
	}
	for _, t := range tags {
		if err := p.ReplaceImage(img, match.Annotation(refNameAnnotation, t),
			layout.WithAnnotations(map[string]string{refNameAnnotation: t})); err != nil {
			return fmt.Errorf("oci layout %s: %w", dir, err)
		}
	}
	return nil
}

func itoa(n int) string { return strconv.Itoa(n) }
