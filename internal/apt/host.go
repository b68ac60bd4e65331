package apt

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/bakeimg/bake/internal/execx"
)

// HostSources reads the apt sources of the system at root ("/" for the
// build host): sources.list.d/*.sources (deb822), sources.list.d/*.list and
// sources.list; and its codename from os-release, or guessed from the
// sources.
func HostSources(root string) ([]Source, string, error) {
	var all []Source
	d := filepath.Join(root, "etc/apt/sources.list.d")
	files, _ := filepath.Glob(filepath.Join(d, "*.sources"))
	lists, _ := filepath.Glob(filepath.Join(d, "*.list"))
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			return nil, "", err
		}
		s, err := ParseDeb822Sources(bytes.NewReader(b))
		if err != nil {
			return nil, "", fmt.Errorf("%s: %w", f, err)
		}
		all = append(all, s...)
	}
	for _, f := range append([]string{filepath.Join(root, "etc/apt/sources.list")}, lists...) {
		b, err := os.ReadFile(f)
		if errors.Is(err, os.ErrNotExist) {
			continue
		}
		if err != nil {
			return nil, "", err
		}
		s, err := ParseOneLineSources(bytes.NewReader(b))
		if err != nil {
			return nil, "", fmt.Errorf("%s: %w", f, err)
		}
		all = append(all, s...)
	}
	codename := osReleaseField(filepath.Join(root, "etc/os-release"), "VERSION_CODENAME")
	if codename == "" {
		codename = HostCodename(all)
	}
	return all, codename, nil
}

func osReleaseField(file, key string) string {
	f, err := os.Open(file)
	if err != nil {
		return ""
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		k, v, ok := strings.Cut(sc.Text(), "=")
		if ok && k == key {
			return strings.Trim(v, `"'`)
		}
	}
	return ""
}

// HostProxies returns the build host's apt proxy settings as
// "Acquire::http::Proxy=URL" pairs, from its apt configuration and from the
// http_proxy/https_proxy environment. They are given to apt on the command
// line (or to mmdebstrap as aptopts that are removed afterwards) and never
// written into the image; the chroot's environment is clean, so without them
// a build host behind a proxy could not fetch.
func HostProxies(ctx context.Context, r execx.Runner) []string {
	found := map[string]string{}
	if out, err := r.Output(ctx, execx.Cmd{Name: "apt-config", Args: []string{"dump"}}); err == nil {
		for k, v := range parseAptConfigProxies(out) {
			found[k] = v
		}
	}
	for env, key := range map[string]string{"http_proxy": "Acquire::http::Proxy", "https_proxy": "Acquire::https::Proxy"} {
		if _, ok := found[key]; ok {
			continue
		}
		if v := os.Getenv(env); v != "" {
			found[key] = v
		} else if v := os.Getenv(strings.ToUpper(env)); v != "" {
			found[key] = v
		}
	}
	var out []string
	for _, k := range []string{"Acquire::http::Proxy", "Acquire::https::Proxy"} {
		if v, ok := found[k]; ok {
			out = append(out, k+"="+v)
		}
	}
	return out
}

// parseAptConfigProxies reads `apt-config dump` lines such as
// `Acquire::http::Proxy "http://proxy:3142";` (the per-host form
// Acquire::http::Proxy::HOST is not a global proxy and is ignored).
func parseAptConfigProxies(out []byte) map[string]string {
	m := map[string]string{}
	for _, line := range strings.Split(string(out), "\n") {
		k, v, ok := strings.Cut(strings.TrimSpace(line), " ")
		if !ok {
			continue
		}
		if !strings.EqualFold(k, "Acquire::http::Proxy") && !strings.EqualFold(k, "Acquire::https::Proxy") {
			continue
		}
		v = strings.Trim(strings.TrimSuffix(strings.TrimSpace(v), ";"), `"`)
		if v == "" || strings.EqualFold(v, "DIRECT") || strings.EqualFold(v, "false") {
			continue
		}
		if strings.EqualFold(k, "Acquire::http::Proxy") {
			m["Acquire::http::Proxy"] = v
		} else {
			m["Acquire::https::Proxy"] = v
		}
	}
	return m
}
