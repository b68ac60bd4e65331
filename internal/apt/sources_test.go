package apt

import (
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
)

const hostDeb822 = `Types: deb
# http://snapshot.example.org/archive/debian/20250520T000000Z
URIs: http://ftp.example.org/debian
Suites: bookworm bookworm-updates bookworm-backports
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb
URIs: http://security.example.org/debian-security
Suites: bookworm-security
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb
URIs: https://node.example.com/node_20.x
Suites: nodistro
Components: main
Signed-By: /usr/share/keyrings/node.gpg

Types: deb
URIs: https://docker.example.com/linux/debian
Suites: bookworm
Components: stable
Signed-By: /etc/apt/keyrings/docker.gpg

Enabled: no
Types: deb
URIs: http://disabled.example/debian
Suites: bookworm
Components: main

Types: deb-src
URIs: http://ftp.example.org/debian
Suites: bookworm
Components: main
Signed-By:
 -----BEGIN PGP PUBLIC KEY BLOCK-----
 .
 mQINBGPL0BUBEADmW5NdOOHwPIJlgPu6JDcKw/NZJPR8lsD9K7UgrTHdxwU/0Ja
 -----END PGP PUBLIC KEY BLOCK-----
`

const hostOneLine = `# comment
deb http://mirror.example.org/debian/ bookworm main contrib # trailing
deb [arch=amd64 signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://mirror.example.org/debian bookworm-updates main
deb http://security.example.org/debian-security bookworm-security main
deb https://cloud.example.com/apt cloud-sdk-bookworm main
deb http://mirror.example.org/debian sid main
deb http://ppa.example.org/ubuntu bookworm main
`

func TestParseDeb822Sources(t *testing.T) {
	srcs, err := ParseDeb822Sources(strings.NewReader(hostDeb822))
	if err != nil {
		t.Fatal(err)
	}
	if len(srcs) != 5 {
		t.Fatalf("%d stanzas (disabled one must be skipped): %+v", len(srcs), srcs)
	}
	if srcs[0].SignedBy != "/usr/share/keyrings/debian-archive-keyring.gpg" || len(srcs[0].Suites) != 3 {
		t.Errorf("%+v", srcs[0])
	}
	if srcs[4].SignedBy != "" || srcs[4].Types[0] != "deb-src" {
		t.Errorf("inline key must not become a path: %+v", srcs[4])
	}
}

func TestMapHostSourcesDeb822(t *testing.T) {
	srcs, _ := ParseDeb822Sources(strings.NewReader(hostDeb822))
	got, err := MapHostSources("bookworm", "trixie", []string{"main", "contrib"}, srcs)
	if err != nil {
		t.Fatal(err)
	}
	want := []string{
		"deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://ftp.example.org/debian trixie main contrib",
		"deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://ftp.example.org/debian trixie-updates main contrib",
		"deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://security.example.org/debian-security trixie-security main contrib",
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("got\n%s\nwant\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
}

func TestMapHostSourcesOneLine(t *testing.T) {
	srcs, err := ParseOneLineSources(strings.NewReader(hostOneLine))
	if err != nil {
		t.Fatal(err)
	}
	got, err := MapHostSources("bookworm", "bookworm", nil, srcs)
	if err != nil {
		t.Fatal(err)
	}
	want := []string{
		"deb http://mirror.example.org/debian/ bookworm main",
		"deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://mirror.example.org/debian bookworm-updates main",
		"deb http://security.example.org/debian-security bookworm-security main",
		// the host's extra sid entry maps onto the same line: deduplicated
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("got\n%s\nwant\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}

	// Old security layout and unstable suites.
	got, _ = MapHostSources("bookworm", "buster", nil, srcs)
	if !strings.Contains(strings.Join(got, "\n"), "debian-security buster/updates main") {
		t.Errorf("buster security: %q", got)
	}
	got, _ = MapHostSources("bookworm", "sid", nil, srcs)
	for _, l := range got {
		if strings.Contains(l, "-updates") || strings.Contains(l, "security") {
			t.Errorf("sid has no %q", l)
		}
	}
}

func TestMapHostSourcesNoDebian(t *testing.T) {
	srcs, _ := ParseOneLineSources(strings.NewReader("deb http://ubuntu.example.com/ubuntu noble main\n"))
	if _, err := MapHostSources("noble", "bookworm", nil, srcs); err == nil {
		t.Fatal("an Ubuntu host has no Debian archive to map")
	}
}

func TestHostCodename(t *testing.T) {
	srcs, _ := ParseOneLineSources(strings.NewReader("deb http://ftp.example.org/debian bookworm-updates main\n"))
	if got := HostCodename(srcs); got != "bookworm" {
		t.Errorf("got %q", got)
	}
}

func TestDebianSourcesFile(t *testing.T) {
	got := DebianSourcesFile("http://ftp.example.org/debian", "bookworm", nil)
	for _, want := range []string{"URIs: http://ftp.example.org/debian\n", "Suites: bookworm bookworm-updates\n", "Components: main\n", "Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg\n"} {
		if !strings.Contains(got, want) {
			t.Errorf("missing %q in\n%s", want, got)
		}
	}
}

func TestHostSources(t *testing.T) {
	root := t.TempDir()
	writeFile(t, filepath.Join(root, "etc/apt/sources.list.d/debian.sources"), hostDeb822)
	writeFile(t, filepath.Join(root, "etc/apt/sources.list.d/extra.list"), "deb http://ftp.example.org/debian bookworm-backports main\n")
	writeFile(t, filepath.Join(root, "etc/apt/sources.list.d/old.list.disabled"), "deb http://x/debian bookworm main\n")
	writeFile(t, filepath.Join(root, "etc/os-release"), "PRETTY_NAME=\"Debian GNU/Linux 12 (bookworm)\"\nVERSION_CODENAME=bookworm\n")
	srcs, codename, err := HostSources(root)
	if err != nil || codename != "bookworm" || len(srcs) != 6 {
		t.Fatalf("%d sources, %q, %v", len(srcs), codename, err)
	}
}

func TestAptProxies(t *testing.T) {
	got := parseAptConfigProxies([]byte("APT \"\";\nAcquire::http::Proxy \"http://proxy:3142\";\nAcquire::http::Proxy::deb.example \"DIRECT\";\nAcquire::https::Proxy \"DIRECT\";\n"))
	if !reflect.DeepEqual(got, map[string]string{"Acquire::http::Proxy": "http://proxy:3142"}) {
		t.Errorf("%v", got)
	}
}

func writeFile(t *testing.T, p, content string) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
}
