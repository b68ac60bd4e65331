// Package dpkg reads a Debian tree's package database: what is installed,
// for the build manifest and for the stages that decide from it (a cloud
// base's boot chain, a container layer's package list). It reads
// /var/lib/dpkg/status in Go, through internal/safepath, and runs nothing.
package dpkg

import (
	"bufio"
	"bytes"
	"io"
	"sort"
	"strings"

	"github.com/bakeimg/bake/internal/safepath"
)

// Package is an installed Debian package, for the build manifest.
type Package struct {
	Name    string `json:"name"`
	Version string `json:"version"`
	Arch    string `json:"arch"`
}

// InstalledPackages lists the packages installed in the tree, read from
// TREE/var/lib/dpkg/status in Go (no dpkg-query of the host's or the
// tree's needed), sorted by name and architecture.
func InstalledPackages(tree string) ([]Package, error) {
	r, err := safepath.Open(tree)
	if err != nil {
		return nil, err
	}
	defer r.Close()
	b, err := r.ReadFile("/var/lib/dpkg/status")
	if err != nil {
		return nil, err
	}
	return ParseStatus(bytes.NewReader(b))
}

// ParseStatus parses dpkg's status file and returns the packages whose
// Status is "installed" (not config-files, half-installed and so on).
func ParseStatus(rd io.Reader) ([]Package, error) {
	var out []Package
	fields := map[string]string{}
	flush := func() {
		st := strings.Fields(fields["Status"])
		if len(st) == 3 && st[2] == "installed" && fields["Package"] != "" {
			out = append(out, Package{Name: fields["Package"], Version: fields["Version"], Arch: fields["Architecture"]})
		}
		fields = map[string]string{}
	}
	sc := bufio.NewScanner(rd)
	sc.Buffer(make([]byte, 1<<20), 16<<20)
	for sc.Scan() {
		line := sc.Text()
		if strings.TrimSpace(line) == "" {
			flush()
			continue
		}
		if line[0] == ' ' || line[0] == '\t' {
			continue // continuation (Description, Conffiles)
		}
		if k, v, ok := strings.Cut(line, ":"); ok {
			fields[k] = strings.TrimSpace(v)
		}
	}
	if err := sc.Err(); err != nil {
		return nil, err
	}
	flush()
	sort.Slice(out, func(i, j int) bool {
		if out[i].Name != out[j].Name {
			return out[i].Name < out[j].Name
		}
		return out[i].Arch < out[j].Arch
	})
	return out, nil
}
