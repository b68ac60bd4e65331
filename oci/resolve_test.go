package oci

import (
	"context"
	"io"
	"log"
	"net/http/httptest"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/registry"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/validate"
)

// testImage is the test gateway image around a stand-in binary: Resolve's
// tests need an image, not a working one.
func testImage(t *testing.T, content string) v1.Image {
	t.Helper()
	bin := filepath.Join(t.TempDir(), "openclaw")
	if err := os.WriteFile(bin, []byte(content), 0o755); err != nil {
		t.Fatal(err)
	}
	img, err := BuildTestGatewayImage(context.Background(), bin, testEpoch)
	if err != nil {
		t.Fatal(err)
	}
	return img
}

func digestOfImage(t *testing.T, img v1.Image) string {
	t.Helper()
	d, err := img.Digest()
	if err != nil {
		t.Fatal(err)
	}
	return d.String()
}

func TestTestGatewayImage(t *testing.T) {
	a, b := testImage(t, "binary v1"), testImage(t, "binary v1")
	if digestOfImage(t, a) != digestOfImage(t, b) {
		t.Fatal("same binary and epoch, different digests")
	}
	if digestOfImage(t, a) == digestOfImage(t, testImage(t, "binary v2")) {
		t.Fatal("different binaries, same digest")
	}
	if err := validate.Image(a); err != nil {
		t.Fatal(err)
	}
	cf, _ := a.ConfigFile()
	if cf.Config.User != "1000:1000" || cf.Config.Entrypoint[0] != "/usr/local/bin/openclaw" ||
		strings.Join(cf.Config.Cmd, " ") != "gateway run --bind lan --port 18789" {
		t.Errorf("config %+v", cf.Config)
	}
	fsys := extractHeaders(t, a)
	for name, want := range map[string]string{
		"usr/local/bin/openclaw": "0755 0:0",
		"home/node":              "1777 1000:1000",
		"home/node/.openclaw":    "1777 1000:1000",
		"tmp":                    "1777 0:0",
		"usr/local":              "0755 0:0",
	} {
		if fsys[name] != want {
			t.Errorf("%s: %q, want %q", name, fsys[name], want)
		}
	}
}

func TestResolveOCILayout(t *testing.T) {
	ctx := context.Background()
	img, other := testImage(t, "one"), testImage(t, "two")
	dir := filepath.Join(t.TempDir(), "lay:out") // a colon in the path
	if err := WriteOCILayout(img, dir, "gw:1"); err != nil {
		t.Fatal(err)
	}
	if err := WriteOCILayout(other, dir, "other"); err != nil {
		t.Fatal(err)
	}
	want := digestOfImage(t, img)
	for _, ref := range []string{
		"oci-layout:" + dir + ":gw:1",
		"oci-layout:" + dir + "@" + want,
		"oci-layout:" + dir + ":gw:1@" + want,
	} {
		got, d, err := Resolve(ctx, ref)
		if err != nil {
			t.Fatalf("%s: %v", ref, err)
		}
		if d != want || digestOfImage(t, got) != want {
			t.Errorf("%s: digest %s, want %s", ref, d, want)
		}
		if err := validate.Image(got); err != nil {
			t.Errorf("%s: %v", ref, err)
		}
	}
	// Replacing a tag keeps one image under it.
	if err := WriteOCILayout(other, dir, "gw:1"); err != nil {
		t.Fatal(err)
	}
	if _, d, err := Resolve(ctx, "oci-layout:"+dir+":gw:1"); err != nil || d != digestOfImage(t, other) {
		t.Errorf("after replace: %s %v", d, err)
	}
	for _, ref := range []string{
		"oci-layout:" + dir,                        // two images, none named
		"oci-layout:" + dir + ":nope",              // no such tag
		"oci-layout:" + dir + ":other@" + want,     // pinned to another image
		"oci-layout:" + filepath.Join(dir, "none"), // no layout
	} {
		if _, _, err := Resolve(ctx, ref); err == nil {
			t.Errorf("%s: no error", ref)
		}
	}
}

func TestResolveDockerArchive(t *testing.T) {
	ctx := context.Background()
	img := testImage(t, "archive")
	file := filepath.Join(t.TempDir(), "gw.tar")
	if err := WriteDockerArchive(img, "openclaw-gateway:test", file); err != nil {
		t.Fatal(err)
	}
	id, _ := img.ConfigName()
	want := id.String() // a docker archive's identity is the image ID
	for _, ref := range []string{
		"docker-archive:" + file,
		"docker-archive:" + file + ":openclaw-gateway:test",
		"docker-archive:" + file + "@" + want,
	} {
		got, d, err := Resolve(ctx, ref)
		if err != nil {
			t.Fatalf("%s: %v", ref, err)
		}
		if d != want {
			t.Errorf("%s: digest %s, want the image ID %s", ref, d, want)
		}
		if err := validate.Image(got); err != nil {
			t.Errorf("%s: %v", ref, err)
		}
	}
	for _, ref := range []string{
		"docker-archive:" + file + ":other:tag",
		"docker-archive:" + file + "@sha256:" + strings.Repeat("0", 64),
		"docker-archive:" + file + ".missing",
	} {
		if _, _, err := Resolve(ctx, ref); err == nil {
			t.Errorf("%s: no error", ref)
		}
	}
}

func TestResolveRegistry(t *testing.T) {
	ctx := context.Background()
	srv := httptest.NewServer(registry.New(registry.Logger(log.New(io.Discard, "", 0))))
	defer srv.Close()
	u, _ := url.Parse(srv.URL)
	host := u.Host // 127.0.0.1:PORT: plain HTTP allowed
	img := testImage(t, "registry")
	want := digestOfImage(t, img)
	tag, err := name.NewTag(host+"/bake/openclaw-gateway:test", name.Insecure)
	if err != nil {
		t.Fatal(err)
	}
	if err := remote.Write(tag, img, remote.WithContext(ctx)); err != nil {
		t.Fatal(err)
	}
	for _, ref := range []string{
		host + "/bake/openclaw-gateway:test",
		host + "/bake/openclaw-gateway@" + want,
		"localhost:" + u.Port() + "/bake/openclaw-gateway:test",
	} {
		got, d, err := Resolve(ctx, ref)
		if err != nil {
			t.Fatalf("%s: %v", ref, err)
		}
		if d != want {
			t.Errorf("%s: %s, want %s", ref, d, want)
		}
		if err := validate.Image(got); err != nil {
			t.Errorf("%s: %v", ref, err)
		}
	}
	if _, _, err := Resolve(ctx, host+"/bake/openclaw-gateway@sha256:"+strings.Repeat("1", 64)); err == nil {
		t.Error("a digest the registry does not have resolved")
	}
	if _, _, err := Resolve(ctx, host+"/bake/missing:test"); err == nil {
		t.Error("missing repository resolved")
	}
}

func TestInsecureHost(t *testing.T) {
	for h, want := range map[string]bool{
		"127.0.0.1:5000": true, "localhost:5000": true, "localhost": true, "[::1]:5000": true,
		"127.0.0.2": true, "registry.example.com": false, "10.0.0.1:5000": false, "ghcr.io": false,
	} {
		if insecureHost(h) != want {
			t.Errorf("insecureHost(%q) = %v", h, !want)
		}
	}
}

func TestSplitLocalRef(t *testing.T) {
	dir := t.TempDir()
	f := filepath.Join(dir, "img.tar")
	os.WriteFile(f, nil, 0o644)
	d := "sha256:" + strings.Repeat("a", 64)
	for in, want := range map[string][3]string{
		f:                    {f, "", ""},
		f + ":repo:tag":      {f, "repo:tag", ""},
		f + "@" + d:          {f, "", d},
		f + ":tag@" + d:      {f, "tag", d},
		dir + "/nope:tag":    {dir + "/nope:tag", "", ""},
		f + ":host:5000/x:y": {f, "host:5000/x:y", ""},
	} {
		p, tag, pin := splitLocalRef(in)
		if [3]string{p, tag, pin} != want {
			t.Errorf("splitLocalRef(%q) = %q %q %q, want %q", in, p, tag, pin, want)
		}
	}
}
