package verify

import (
	"archive/tar"
	"bytes"
	"encoding/json"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/bakeimg/bake/internal/execx"
)

// The probe server really serves HTTP: run the ELF on the host on a free
// port (no root needed) and ask it twice, once with a client that sends
// nothing and hangs up.
func TestProbeServerServes(t *testing.T) {
	if runtime.GOOS != "linux" || runtime.GOARCH != "amd64" {
		t.Skip("the probe server is a linux/amd64 program")
	}
	l, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	port := l.Addr().(*net.TCPAddr).Port
	l.Close()
	elf, err := ProbeServerELF(port)
	if err != nil {
		t.Fatal(err)
	}
	bin := filepath.Join(t.TempDir(), "probe-http")
	if err := os.WriteFile(bin, elf, 0o755); err != nil {
		t.Fatal(err)
	}
	srv, err := execx.StartPinned(exec.Command(bin))
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Stop(0)

	url := "http://127.0.0.1:" + itoa(port) + "/"
	var body []byte
	deadline := time.Now().Add(10 * time.Second)
	for {
		resp, err := (&http.Client{Timeout: 3 * time.Second}).Get(url)
		if err == nil {
			body, _ = io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.StatusCode != 200 {
				t.Fatalf("status %d", resp.StatusCode)
			}
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("probe server never answered: %v", err)
		}
		time.Sleep(100 * time.Millisecond)
	}
	if !strings.Contains(string(body), ProbeBody) {
		t.Fatalf("body %q", body)
	}
	// A client that connects and hangs up at once must not kill it
	// (SIGPIPE), nor one that sends nothing block it for more than 2 s.
	c, err := net.Dial("tcp", "127.0.0.1:"+itoa(port))
	if err != nil {
		t.Fatal(err)
	}
	c.Close()
	idle, err := net.Dial("tcp", "127.0.0.1:"+itoa(port))
	if err != nil {
		t.Fatal(err)
	}
	defer idle.Close()
	t0 := time.Now()
	resp, err := (&http.Client{Timeout: 8 * time.Second}).Get(url)
	if err != nil {
		t.Fatalf("after an idle client: %v", err)
	}
	resp.Body.Close()
	if d := time.Since(t0); d > 6*time.Second {
		t.Errorf("an idle client held the server for %s", d)
	}
}

func TestProbeImageTarIsDeterministicAndLoadable(t *testing.T) {
	a, err := ProbeImageTar()
	if err != nil {
		t.Fatal(err)
	}
	b, err := ProbeImageTar()
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(a, b) {
		t.Fatal("probe image archive differs between two calls")
	}
	if len(a) > 64<<10 {
		t.Errorf("probe image archive is %d bytes; expected a few KiB", len(a))
	}
	// docker load needs manifest.json naming the tag and a config.
	tr := tar.NewReader(bytes.NewReader(a))
	var manifest []struct {
		Config   string
		RepoTags []string
		Layers   []string
	}
	names := map[string]bool{}
	for {
		h, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		names[h.Name] = true
		if h.Name == "manifest.json" {
			if err := json.NewDecoder(tr).Decode(&manifest); err != nil {
				t.Fatal(err)
			}
		}
	}
	if len(manifest) != 1 || len(manifest[0].RepoTags) != 1 || manifest[0].RepoTags[0] != ProbeImageRef {
		t.Fatalf("manifest.json = %+v", manifest)
	}
	if !names[manifest[0].Config] || len(manifest[0].Layers) != 1 || !names[manifest[0].Layers[0]] {
		t.Fatalf("archive lacks the config or layer: %v", names)
	}
}
