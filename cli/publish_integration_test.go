//go:build integration

package cli

import (
	"archive/tar"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"math/big"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/remote/transport"
	"github.com/google/go-containerregistry/pkg/v1/types"
	"golang.org/x/crypto/bcrypt"

	"github.com/bakeimg/bake/internal/execx"
	"github.com/bakeimg/bake/publish"
)

// testRegistry is Debian's docker-registry (the distribution registry)
// on 127.0.0.1 with TLS (a CA made here) and htpasswd auth, its storage in
// a temporary folder. It is killed when the test ends, on every path.
type testRegistry struct {
	host    string // 127.0.0.1:PORT
	caFile  string
	storage string
	log     string
	user    string
	pass    string
	pool    *x509.CertPool
}

func freePort(t *testing.T) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

func writePEM(t *testing.T, path, typ string, der []byte) {
	t.Helper()
	if err := os.WriteFile(path, pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
}

// testCA makes a CA and a server certificate for 127.0.0.1 signed by it.
func testCA(t *testing.T, dir string) (caFile, certFile, keyFile string, pool *x509.CertPool) {
	t.Helper()
	caKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	caTmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "bake test CA"},
		NotBefore: now.Add(-time.Hour), NotAfter: now.Add(24 * time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
	}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	ca, _ := x509.ParseCertificate(caDER)
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(2), Subject: pkix.Name{CommonName: "127.0.0.1"},
		NotBefore: now.Add(-time.Hour), NotAfter: now.Add(24 * time.Hour),
		IPAddresses: []net.IP{net.ParseIP("127.0.0.1")},
		KeyUsage:    x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca, &key.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	keyDER, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	caFile, certFile, keyFile = filepath.Join(dir, "ca.pem"), filepath.Join(dir, "server.pem"), filepath.Join(dir, "server.key")
	writePEM(t, caFile, "CERTIFICATE", caDER)
	writePEM(t, certFile, "CERTIFICATE", der)
	writePEM(t, keyFile, "EC PRIVATE KEY", keyDER)
	pool = x509.NewCertPool()
	pool.AddCert(ca)
	return caFile, certFile, keyFile, pool
}

func startRegistry(t *testing.T) *testRegistry {
	t.Helper()
	bin, err := exec.LookPath("docker-registry")
	if err != nil {
		t.Fatal("docker-registry is not installed (scripts/install-deps.sh installs it)")
	}
	dir := t.TempDir()
	caFile, certFile, keyFile, pool := testCA(t, dir)
	r := &testRegistry{caFile: caFile, pool: pool, user: "bake", pass: "correct horse battery", storage: filepath.Join(dir, "storage"), log: filepath.Join(dir, "registry.log")}
	hash, err := bcrypt.GenerateFromPassword([]byte(r.pass), bcrypt.MinCost)
	if err != nil {
		t.Fatal(err)
	}
	htpasswd := filepath.Join(dir, "htpasswd")
	if err := os.WriteFile(htpasswd, []byte(r.user+":"+string(hash)+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	r.host = fmt.Sprintf("127.0.0.1:%d", freePort(t))
	cfg := fmt.Sprintf(`version: 0.1
log:
  level: info
storage:
  filesystem:
    rootdirectory: %s
  delete:
    enabled: true
http:
  addr: %s
  secret: bake-test-secret
  tls:
    certificate: %s
    key: %s
auth:
  htpasswd:
    realm: bake-test
    path: %s
`, r.storage, r.host, certFile, keyFile, htpasswd)
	cfgFile := filepath.Join(dir, "config.yml")
	if err := os.WriteFile(cfgFile, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	logf, err := os.Create(r.log)
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(bin, "serve", cfgFile)
	cmd.Stdout, cmd.Stderr = logf, logf
	child, err := execx.StartPinned(cmd)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		cmd.Process.Kill()
		child.Wait()
		logf.Close()
		if t.Failed() {
			b, _ := os.ReadFile(r.log)
			t.Logf("registry log (tail):\n%s", tail(string(b), 40))
		}
	})
	// Up when GET /v2/ answers 401 over TLS with the test CA.
	c := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}}, Timeout: 2 * time.Second}
	deadline := time.Now().Add(30 * time.Second)
	for {
		resp, err := c.Get("https://" + r.host + "/v2/")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusUnauthorized {
				break
			}
			err = errors.New(resp.Status)
		}
		select {
		case <-child.Done():
			b, _ := os.ReadFile(r.log)
			t.Fatalf("docker-registry exited: %v\n%s", child.Wait(), b)
		default:
		}
		if time.Now().After(deadline) {
			b, _ := os.ReadFile(r.log)
			t.Fatalf("docker-registry not up after 30s: %v\n%s", err, b)
		}
		time.Sleep(100 * time.Millisecond)
	}
	return r
}

func tail(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// dockerConfig writes a Docker config.json with user:pass for the registry
// and points DOCKER_CONFIG at it.
func (r *testRegistry) dockerConfig(t *testing.T, pass string) {
	t.Helper()
	dir := t.TempDir()
	auth := base64.StdEncoding.EncodeToString([]byte(r.user + ":" + pass))
	b := fmt.Sprintf(`{"auths": {%q: {"auth": %q}}}`, r.host, auth)
	if err := os.WriteFile(filepath.Join(dir, "config.json"), []byte(b), 0o600); err != nil {
		t.Fatal(err)
	}
	t.Setenv("DOCKER_CONFIG", dir)
}

type httpsOnly struct{ http.RoundTripper }

func (h httpsOnly) RoundTrip(r *http.Request) (*http.Response, error) {
	if r.URL.Scheme != "https" {
		return nil, fmt.Errorf("test client: %s refused", r.URL.Scheme)
	}
	return h.RoundTripper.RoundTrip(r)
}

// client options of an independent reader of the registry.
func (r *testRegistry) opts() []remote.Option {
	tr := http.DefaultTransport.(*http.Transport).Clone()
	tr.TLSClientConfig = &tls.Config{RootCAs: r.pool}
	return []remote.Option{remote.WithAuth(&authn.Basic{Username: r.user, Password: r.pass}), remote.WithTransport(httpsOnly{tr})}
}

// snapshot lists the registry's storage (paths, sizes, modification
// times): a run that pushes nothing leaves it as it was.
func (r *testRegistry) snapshot(t *testing.T) string {
	t.Helper()
	var lines []string
	filepath.WalkDir(r.storage, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			if errors.Is(err, fs.ErrNotExist) {
				return nil
			}
			return err
		}
		fi, err := d.Info()
		if err != nil {
			return err
		}
		lines = append(lines, fmt.Sprintf("%s %d %d", strings.TrimPrefix(p, r.storage), fi.Size(), fi.ModTime().UnixNano()))
		return nil
	})
	sort.Strings(lines)
	return strings.Join(lines, "\n")
}

// appImage writes DIR/NAME.qcow2 (made by qemu-img from random data) and
// the NAME.manifest.json bake build would write beside it; it returns the
// qcow2's SHA-256.
func appImage(t *testing.T, dir, name string, epoch int64) string {
	t.Helper()
	raw := filepath.Join(dir, name+".raw")
	data := make([]byte, 3<<20)
	rand.Read(data)
	f, err := os.Create(raw)
	if err != nil {
		t.Fatal(err)
	}
	f.Truncate(16 << 20)
	f.WriteAt(data, 1<<20)
	f.Close()
	q := filepath.Join(dir, name+".qcow2")
	if b, err := exec.Command("qemu-img", "convert", "-f", "raw", "-O", "qcow2", raw, q).CombinedOutput(); err != nil {
		t.Fatalf("%v\n%s", err, b)
	}
	os.Remove(raw)
	b, err := os.ReadFile(q)
	if err != nil {
		t.Fatal(err)
	}
	sum := sha256.Sum256(b)
	m := map[string]any{
		"bake_version":      "v9.9.9-test",
		"recipe":            map[string]any{"name": name, "path": "recipes/" + name + ".yaml", "sha256": strings.Repeat("ab", 32)},
		"base":              map[string]any{"debian": map[string]any{"suite": "bookworm", "variant": "minbase", "mirror": "http://user:secret@mirror.example/debian"}},
		"source_date_epoch": epoch,
		"packages":          []map[string]string{{"name": "linux-image-amd64", "version": "1", "arch": "amd64"}},
		"containers":        []map[string]any{{"name": "gw", "digest": "sha256:" + strings.Repeat("cd", 32), "versions": map[string]string{"npm.version": "1.2.3"}}},
		"outputs":           []map[string]any{{"file": name + ".qcow2", "format": "qcow2", "sha256": hex.EncodeToString(sum[:]), "bytes": len(b), "virtual_size": 16 << 20}},
	}
	mb, _ := json.MarshalIndent(m, "", "  ")
	if err := os.WriteFile(filepath.Join(dir, name+".manifest.json"), mb, 0o644); err != nil {
		t.Fatal(err)
	}
	return hex.EncodeToString(sum[:])
}

// bake publish against a real registry (Debian's docker-registry, TLS with
// a CA of the test's, htpasswd): wrong credentials, an untrusted CA and an
// unreachable registry each give one clear error and publish nothing; the
// image is pushed, pulled back and compared (the /disk/ file's bytes,
// owner, labels, annotations); a re-run pushes nothing; a tag with other
// content is refused, and replaced with --force.
func TestPublishOCI(t *testing.T) {
	if _, err := exec.LookPath("qemu-img"); err != nil {
		t.Fatal("qemu-img is not installed (scripts/install-deps.sh installs it)")
	}
	reg := startRegistry(t)
	dir := t.TempDir()
	const epoch = 1700000000
	sum := appImage(t, dir, "app", epoch)
	image := filepath.Join(dir, "app.qcow2")
	receipt := image + ".publish.json"
	dest := "oci://" + reg.host + "/bake/app:1.0"
	tag, err := name.NewTag(reg.host+"/bake/app:1.0", name.StrictValidation)
	if err != nil {
		t.Fatal(err)
	}
	oneLine := func(t *testing.T, errs string, want string) {
		t.Helper()
		t.Logf("stderr: %s", errs)
		if !strings.Contains(errs, want) || strings.Count(strings.TrimSpace(errs), "\n") != 0 {
			t.Errorf("stderr: want one line with %q, got:\n%s", want, errs)
		}
	}
	tagAbsent := func(t *testing.T) {
		t.Helper()
		_, err := remote.Head(tag, reg.opts()...)
		var te *transport.Error
		if !errors.As(err, &te) || te.StatusCode != http.StatusNotFound {
			t.Errorf("tag %s: want 404, got %v", tag, err)
		}
		if _, err := os.Stat(receipt); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("receipt %s written by a failed publish (%v)", receipt, err)
		}
	}
	empty := reg.snapshot(t)

	t.Run("wrong password", func(t *testing.T) {
		reg.dockerConfig(t, "wrong password")
		out, errs, code := run(t, "publish", image, "--to", dest, "--ca", reg.caFile)
		if code != ExitFailure {
			t.Errorf("exit %d, want 1\n%s", code, out)
		}
		oneLine(t, errs, "refused the credentials")
		tagAbsent(t)
		if s := reg.snapshot(t); s != empty {
			t.Errorf("the registry's storage changed:\n%s", s)
		}
	})
	reg.dockerConfig(t, reg.pass)
	t.Run("untrusted CA", func(t *testing.T) {
		_, errs, code := run(t, "publish", image, "--to", dest)
		if code != ExitFailure {
			t.Errorf("exit %d, want 1", code)
		}
		oneLine(t, errs, "not signed by a CA bake trusts (give that CA with --ca FILE)")
		tagAbsent(t)
	})
	t.Run("unreachable", func(t *testing.T) {
		_, errs, code := run(t, "publish", image, "--to", fmt.Sprintf("oci://127.0.0.1:%d/bake/app:1.0", freePort(t)), "--ca", reg.caFile)
		if code != ExitFailure {
			t.Errorf("exit %d, want 1", code)
		}
		oneLine(t, errs, "is unreachable")
	})

	t0 := time.Now()
	out, errs, code := run(t, "publish", image, "--to", dest, "--ca", reg.caFile)
	if code != 0 {
		t.Fatalf("exit %d\n%s\n%s", code, out, errs)
	}
	t.Logf("published in %s:\n%s%s", time.Since(t0).Round(time.Millisecond), out, errs)
	if !strings.Contains(errs, "uploaded") || !strings.Contains(errs, "MiB/s") {
		t.Errorf("stderr (not a terminal): want one progress line with bytes and rate:\n%s", errs)
	}

	// Pulled back by an independent client.
	desc, err := remote.Get(tag, reg.opts()...)
	if err != nil {
		t.Fatal(err)
	}
	img, err := desc.Image()
	if err != nil {
		t.Fatal(err)
	}
	mf, err := img.Manifest()
	if err != nil {
		t.Fatal(err)
	}
	if mf.MediaType != types.OCIManifestSchema1 || len(mf.Layers) != 1 || mf.Layers[0].MediaType != types.OCIUncompressedLayer {
		t.Errorf("manifest: media type %s, layers %v", mf.MediaType, mf.Layers)
	}
	wantAnn := map[string]string{
		"org.opencontainers.image.created": "2023-11-14T22:13:20Z",
		"org.opencontainers.image.title":   "app",
	}
	for k, v := range wantAnn {
		if mf.Annotations[k] != v {
			t.Errorf("annotation %s = %q, want %q (all: %v)", k, mf.Annotations[k], v, mf.Annotations)
		}
	}
	if !strings.Contains(mf.Annotations["org.opencontainers.image.description"], "KubeVirt containerDisk") {
		t.Errorf("annotations: %v", mf.Annotations)
	}
	cf, err := img.ConfigFile()
	if err != nil {
		t.Fatal(err)
	}
	wantLabels := map[string]string{
		publish.LabelPrefix + "recipe.name":              "app",
		publish.LabelPrefix + "recipe.sha256":            strings.Repeat("ab", 32),
		publish.LabelPrefix + "bake.version":             "v9.9.9-test",
		publish.LabelPrefix + "source-date-epoch":        "1700000000",
		publish.LabelPrefix + "disk.sha256":              sum,
		publish.LabelPrefix + "disk.path":                "/disk/app.qcow2",
		publish.LabelPrefix + "base.debian.suite":        "bookworm",
		publish.LabelPrefix + "container.gw.npm.version": "1.2.3",
		"org.opencontainers.image.title":                 "app",
	}
	for k, v := range wantLabels {
		if cf.Config.Labels[k] != v {
			t.Errorf("label %s = %q, want %q", k, cf.Config.Labels[k], v)
		}
	}
	for k, v := range cf.Config.Labels {
		if strings.Contains(v, "secret") {
			t.Errorf("label %s carries the mirror's credentials: %q", k, v)
		}
	}
	if cf.Architecture != "amd64" || cf.OS != "linux" || cf.Created.Unix() != epoch {
		t.Errorf("config: %s/%s created %v", cf.OS, cf.Architecture, cf.Created)
	}
	layers, _ := img.Layers()
	rc, err := layers[0].Uncompressed()
	if err != nil {
		t.Fatal(err)
	}
	tr := tar.NewReader(rc)
	var names []string
	for {
		h, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		names = append(names, h.Name)
		if h.Uid != 107 || h.Gid != 107 || h.ModTime.Unix() != epoch {
			t.Errorf("%s: owner %d:%d, time %v; want 107:107 at %d", h.Name, h.Uid, h.Gid, h.ModTime, epoch)
		}
		if h.Name == "disk/app.qcow2" {
			hs := sha256.New()
			if _, err := io.Copy(hs, tr); err != nil {
				t.Fatal(err)
			}
			if got := hex.EncodeToString(hs.Sum(nil)); got != sum {
				t.Errorf("/disk/app.qcow2 pulled back: sha256 %s, the image's is %s", got, sum)
			}
			if h.Mode&0o777 != 0o440 || h.Typeflag != tar.TypeReg {
				t.Errorf("%s: mode %o type %c", h.Name, h.Mode, h.Typeflag)
			}
		}
	}
	rc.Close()
	if strings.Join(names, ",") != "disk/,disk/app.qcow2" {
		t.Errorf("layer entries: %v", names)
	}
	var rcpt publish.Receipt
	b, err := os.ReadFile(receipt)
	if err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(b, &rcpt); err != nil {
		t.Fatal(err)
	}
	if len(rcpt.Publishes) != 1 || rcpt.Publishes[0].ManifestDigest != desc.Digest.String() || rcpt.ImageSHA256 != sum ||
		rcpt.Publishes[0].LayerDigest != mf.Layers[0].Digest.String() || rcpt.Publishes[0].Pinned != reg.host+"/bake/app@"+desc.Digest.String() {
		t.Errorf("receipt:\n%s", b)
	}

	t.Run("re-run pushes nothing", func(t *testing.T) {
		before := reg.snapshot(t)
		rb, _ := os.ReadFile(receipt)
		out, errs, code := run(t, "publish", image, "--to", dest, "--ca", reg.caFile)
		if code != 0 {
			t.Fatalf("exit %d\n%s\n%s", code, out, errs)
		}
		if !strings.Contains(out, "already names this image ("+desc.Digest.String()+"): nothing to push") || errs != "" {
			t.Errorf("stdout:\n%s\nstderr:\n%s", out, errs)
		}
		if after := reg.snapshot(t); after != before {
			t.Errorf("the registry's storage changed on a re-run")
		}
		if ra, _ := os.ReadFile(receipt); string(ra) != string(rb) {
			t.Errorf("the receipt was rewritten by a re-run that did nothing")
		}
	})

	t.Run("tag with other content", func(t *testing.T) {
		other := t.TempDir()
		appImage(t, other, "app", epoch)
		img2 := filepath.Join(other, "app.qcow2")
		before := reg.snapshot(t)
		_, errs, code := run(t, "publish", img2, "--to", dest, "--ca", reg.caFile)
		if code != ExitFailure {
			t.Errorf("exit %d, want 1", code)
		}
		oneLine(t, errs, "tag exists with other content: "+tag.String()+" names "+desc.Digest.String())
		if after := reg.snapshot(t); after != before {
			t.Errorf("a refused publish changed the registry's storage")
		}
		if d, err := remote.Head(tag, reg.opts()...); err != nil || d.Digest != desc.Digest {
			t.Errorf("tag now %v (%v), want %s", d, err, desc.Digest)
		}
		out, errs, code := run(t, "publish", img2, "--to", dest, "--ca", reg.caFile, "--force")
		if code != 0 {
			t.Fatalf("--force: exit %d\n%s\n%s", code, out, errs)
		}
		d, err := remote.Head(tag, reg.opts()...)
		if err != nil || d.Digest == desc.Digest {
			t.Fatalf("--force: tag names %v (%v)", d, err)
		}
		var r2 publish.Receipt
		b, _ := os.ReadFile(img2 + ".publish.json")
		if err := json.Unmarshal(b, &r2); err != nil || len(r2.Publishes) != 1 || r2.Publishes[0].Replaced != desc.Digest.String() || r2.Publishes[0].ManifestDigest != d.Digest.String() {
			t.Errorf("receipt after --force (%v):\n%s", err, b)
		}
	})
}
