package aptrepo

import (
	"bytes"
	"compress/gzip"
	"context"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"

	"github.com/bakeimg/bake/internal/execx"
)

// Repo describes a repository for BuildRepo. Build fills it with defaults.
type Repo struct {
	Dir       string   // repository root: the URI apt is given
	Suite     string   // also the Codename, e.g. "bookworm"
	Component string   // default "main"
	Origin    string   // Release Origin, default "bake"
	Label     string   // Release Label, default Origin
	Debs      []string // packages to publish
	Key       *Key
}

// Build makes a signed apt repository in dir holding debs, laid out like
// Tailscale's (https://pkgs.tailscale.com/stable/debian), with dir as the
// URI:
//
//	dir/pool/NAME_VERSION_ARCH.deb
//	dir/dists/SUITE/main/binary-ARCH/Packages(.gz)
//	dir/dists/SUITE/{Release,InRelease,Release.gpg}
//	dir/SUITE.noarmor.gpg   the signing key, binary keyring (for Signed-By)
//	dir/SUITE.gpg           the same key, armored
//
// Packages is written by apt-ftparchive and Release by apt-ftparchive
// release (Origin, Label, Suite, Codename, Architectures, Components, Date,
// MD5Sum/SHA1/SHA256/SHA512), then signed with key. Build replaces what an
// earlier Build wrote in dir.
func Build(ctx context.Context, dir string, suite string, debs []string, key *Key) error {
	return BuildRepo(ctx, Repo{Dir: dir, Suite: suite, Debs: debs, Key: key})
}

// BuildRepo is Build with the Release fields chosen by the caller.
func BuildRepo(ctx context.Context, r Repo) error {
	if r.Dir == "" || r.Suite == "" || r.Key == nil {
		return fmt.Errorf("aptrepo: dir, suite and key are required")
	}
	if strings.ContainsAny(r.Suite, "/ \n") {
		return fmt.Errorf("aptrepo: bad suite %q", r.Suite)
	}
	if r.Component == "" {
		r.Component = "main"
	}
	if r.Origin == "" {
		r.Origin = "bake"
	}
	if r.Label == "" {
		r.Label = r.Origin
	}
	pool := filepath.Join(r.Dir, "pool")
	dists := filepath.Join(r.Dir, "dists", r.Suite)
	for _, d := range []string{pool, dists} {
		if err := os.RemoveAll(d); err != nil {
			return err
		}
		if err := os.MkdirAll(d, 0o755); err != nil {
			return err
		}
	}

	// Architectures: those of the packages; "all" packages go into every
	// binary-ARCH (apt-ftparchive --arch includes them), amd64 if only "all".
	archSet := map[string]bool{}
	for _, deb := range r.Debs {
		f, err := debFields(ctx, deb, "Package", "Version", "Architecture")
		if err != nil {
			return err
		}
		if f[2] != "all" {
			archSet[f[2]] = true
		}
		name := fmt.Sprintf("%s_%s_%s.deb", f[0], strings.ReplaceAll(f[1], ":", "%3a"), f[2])
		if err := linkOrCopy(deb, filepath.Join(pool, name)); err != nil {
			return err
		}
	}
	if len(archSet) == 0 {
		archSet["amd64"] = true
	}
	var archs []string
	for a := range archSet {
		archs = append(archs, a)
	}
	slices.Sort(archs)

	for _, arch := range archs {
		out, err := execx.Default.Output(ctx, execx.Cmd{
			Name: "apt-ftparchive", Dir: r.Dir,
			Args: []string{"--arch", arch, "packages", "pool"},
		})
		if err != nil {
			return fmt.Errorf("aptrepo: %w", err)
		}
		bin := filepath.Join(dists, r.Component, "binary-"+arch)
		if err := os.MkdirAll(bin, 0o755); err != nil {
			return err
		}
		if err := os.WriteFile(filepath.Join(bin, "Packages"), out, 0o644); err != nil {
			return err
		}
		var gz bytes.Buffer
		zw, _ := gzip.NewWriterLevel(&gz, gzip.BestCompression)
		zw.Write(out)
		if err := zw.Close(); err != nil {
			return err
		}
		if err := os.WriteFile(filepath.Join(bin, "Packages.gz"), gz.Bytes(), 0o644); err != nil {
			return err
		}
	}

	conf := "APT::FTPArchive::Release::"
	release, err := execx.Default.Output(ctx, execx.Cmd{
		Name: "apt-ftparchive", Dir: r.Dir,
		Args: []string{
			"-o", conf + "Origin=" + r.Origin,
			"-o", conf + "Label=" + r.Label,
			"-o", conf + "Suite=" + r.Suite,
			"-o", conf + "Codename=" + r.Suite,
			"-o", conf + "Architectures=" + strings.Join(archs, " "),
			"-o", conf + "Components=" + r.Component,
			"-o", conf + "Description=" + r.Label + " " + r.Suite,
			"release", filepath.Join("dists", r.Suite),
		},
	})
	if err != nil {
		return fmt.Errorf("aptrepo: %w", err)
	}
	releasePath := filepath.Join(dists, "Release")
	if err := os.WriteFile(releasePath, release, 0o644); err != nil {
		return err
	}
	if err := r.Key.Sign(releasePath); err != nil {
		return err
	}
	// The key beside the suite, named as on pkgs.tailscale.com.
	if err := linkOrCopy(r.Key.Keyring, filepath.Join(r.Dir, r.Suite+".noarmor.gpg")); err != nil {
		return err
	}
	return linkOrCopy(r.Key.Armored, filepath.Join(r.Dir, r.Suite+".gpg"))
}

// debFields returns control fields of a .deb, in the order asked.
func debFields(ctx context.Context, deb string, fields ...string) ([]string, error) {
	out, err := execx.Default.Output(ctx, execx.Cmd{
		Name: "dpkg-deb", Args: append([]string{"--field", deb}, fields...),
	})
	if err != nil {
		return nil, fmt.Errorf("aptrepo: %w", err)
	}
	got := map[string]string{}
	if len(fields) == 1 { // dpkg-deb prints a lone field's value only
		got[fields[0]] = strings.TrimSpace(string(out))
	}
	for _, line := range strings.Split(string(out), "\n") {
		k, v, ok := strings.Cut(line, ":")
		if ok && len(fields) > 1 && !strings.HasPrefix(line, " ") {
			got[k] = strings.TrimSpace(v)
		}
	}
	res := make([]string, len(fields))
	for i, f := range fields {
		res[i] = got[f]
		if res[i] == "" {
			return nil, fmt.Errorf("aptrepo: %s has no %s field", deb, f)
		}
	}
	return res, nil
}

// linkOrCopy makes dst a hard link to src, or a copy across filesystems.
func linkOrCopy(src, dst string) error {
	os.Remove(dst)
	if err := os.Link(src, dst); err == nil {
		return nil
	}
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	out, err := os.CreateTemp(filepath.Dir(dst), "."+filepath.Base(dst)+".tmp*")
	if err != nil {
		return err
	}
	defer os.Remove(out.Name())
	if _, err := io.Copy(out, in); err != nil {
		out.Close()
		return err
	}
	if err := out.Chmod(0o644); err != nil {
		out.Close()
		return err
	}
	if err := out.Close(); err != nil {
		return err
	}
	return os.Rename(out.Name(), dst)
}
