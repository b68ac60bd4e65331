package publish

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/bakeimg/bake/internal/imgfile"
	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/remote/transport"
)

// ErrUsage marks errors in what the user asked for (a bad destination, CA
// file or image): nothing was done.
var ErrUsage = errors.New("bad usage")

// ErrConflict is returned when the tag exists with other content and
// Force is not set: nothing was pushed.
var ErrConflict = errors.New("tag exists with other content")

type usageError struct{ err error }

func (e usageError) Error() string   { return e.err.Error() }
func (e usageError) Unwrap() []error { return []error{e.err, ErrUsage} }

func usage(format string, a ...any) error { return usageError{fmt.Errorf(format, a...)} }

// openImage reads the build manifest beside the image at path and opens
// the image itself (a regular file only), sniffed and refused when it has
// what bake never publishes (a backing file, encryption: Info.Refuse).
// Every problem is a usage error. The caller closes f.
func openImage(path string) (m *BuildManifest, f *os.File, fi os.FileInfo, in imgfile.Info, err error) {
	if m, err = ReadManifest(ManifestPath(path)); err != nil {
		return nil, nil, nil, in, usageError{err}
	}
	if f, fi, err = imgfile.OpenRegular(path); err != nil {
		return nil, nil, nil, in, usageError{err}
	}
	if in, err = imgfile.Sniff(f); err == nil {
		err = in.Refuse()
	}
	if err != nil {
		f.Close()
		return nil, nil, nil, in, usage("%s: %v", path, err)
	}
	return m, f, fi, in, nil
}

// Options says what to publish where.
type Options struct {
	Image  string // a qcow2 bake wrote, NAME.manifest.json beside it
	To     string // oci://REGISTRY/REPO:TAG, s3://BUCKET/KEY or libvirt://POOL/NAME
	CAFile string // PEM certificates trusted besides the system's
	Force  bool   // replace a tag or object that holds other content
	// s3:// only. Endpoint: https://HOST[:PORT] of an S3-compatible store
	// (else $AWS_ENDPOINT_URL_S3, $AWS_ENDPOINT_URL, else AWS S3); Region
	// (else $AWS_REGION, $AWS_DEFAULT_REGION, else us-east-1);
	// CredentialsFile: an AWS credentials file (else the environment, else
	// $AWS_SHARED_CREDENTIALS_FILE or ~/.aws/credentials); PartSize: bytes
	// per part of a multipart upload (DefaultPartSize when 0).
	Endpoint        string
	Region          string
	CredentialsFile string
	PartSize        int64
	// Abort: abort the key's unfinished multipart uploads (of a run that
	// was killed or cut off) and upload nothing.
	Abort bool
	// Keychain finds credentials (authn.DefaultKeychain: the Docker config
	// and its credential helpers, when nil).
	Keychain  authn.Keychain
	UserAgent string
	Stdout    io.Writer // what was done, one line per step
	Progress  io.Writer // upload progress: a bar on a terminal, else one line
	// Libvirt: how a libvirt://POOL/NAME destination is published.
	Libvirt Libvirt
}

// Result is what Publish did.
type Result struct {
	Record    Record
	Unchanged bool // the tag already named this very image: nothing pushed
	Receipt   string
}

// Publish publishes opts.Image to opts.To. Nothing is visible under the
// tag until the whole image is in the registry and checked: blobs and the
// manifest are pushed by digest, the manifest and layer are read back and
// compared with the local digests, and only then is the tag set.
func Publish(ctx context.Context, opts Options) (*Result, error) {
	if opts.Stdout == nil {
		opts.Stdout = io.Discard
	}
	if strings.HasPrefix(opts.To, "s3://") {
		return publishS3(ctx, opts)
	}
	if opts.Endpoint != "" || opts.Region != "" || opts.CredentialsFile != "" || opts.PartSize != 0 || opts.Abort {
		return nil, usage("--endpoint, --region, --credentials, --part-size and --abort are for s3:// destinations")
	}
	if strings.HasPrefix(opts.To, "libvirt://") {
		return publishLibvirt(ctx, opts)
	}
	tag, err := ParseOCI(opts.To)
	if err != nil {
		return nil, err
	}
	tlsConf, err := tlsConfig(opts.CAFile)
	if err != nil {
		return nil, err
	}
	m, err := ReadManifest(ManifestPath(opts.Image))
	if err != nil {
		return nil, usageError{err}
	}

	t0 := time.Now()
	layer, err := NewDiskLayer(opts.Image, time.Unix(m.SourceDateEpoch, 0))
	if err != nil {
		return nil, usageError{err}
	}
	if err := checkListed(opts.Image, m, layer.ImageSHA256()); err != nil {
		return nil, usageError{err}
	}
	img, err := ContainerDisk(m, layer)
	if err != nil {
		return nil, err
	}
	mdigest, err := img.Digest()
	if err != nil {
		return nil, err
	}
	cdigest, err := img.ConfigName()
	if err != nil {
		return nil, err
	}
	fmt.Fprintf(opts.Stdout, "%s: sha256 %s; containerDisk %s (layer %s, %d bytes) in %.1fs\n",
		opts.Image, layer.ImageSHA256(), mdigest, layer.digest, layer.tarSize, time.Since(t0).Seconds())

	rec := Record{
		Destination:    opts.To,
		Reference:      tag.String(),
		Pinned:         tag.Context().Digest(mdigest.String()).String(),
		ManifestDigest: mdigest.String(),
		ConfigDigest:   cdigest.String(),
		LayerDigest:    layer.digest.String(),
		LayerBytes:     layer.tarSize,
		LayerMediaType: "application/vnd.oci.image.layer.v1.tar",
		DiskPath:       layer.DiskPath(),
		DiskOwner:      fmt.Sprintf("%d:%d", DiskUID, DiskGID),
		ImageSHA256:    layer.ImageSHA256(),
	}

	// The registry: reachable, speaking TLS with a certificate we trust.
	base := http.DefaultTransport.(*http.Transport).Clone()
	base.TLSClientConfig = tlsConf
	rt := tlsOnly{base}
	reg := tag.Context().Registry
	if err := ping(ctx, rt, reg); err != nil {
		return nil, err
	}
	kc := opts.Keychain
	if kc == nil {
		kc = authn.DefaultKeychain
	}
	auth, err := kc.Resolve(reg)
	if err != nil {
		return nil, fmt.Errorf("credentials for %s: %w", reg, err)
	}
	ua := opts.UserAgent
	if ua == "" {
		ua = "bake"
	}
	ropts := []remote.Option{remote.WithContext(ctx), remote.WithAuth(auth), remote.WithTransport(rt), remote.WithUserAgent(ua)}
	explain := func(what string, err error) error { return explainErr(what, reg, tag, auth, err) }

	// What the tag names now.
	prev, err := remote.Head(tag, ropts...)
	switch {
	case isNotFound(err):
		prev = nil
	case err != nil:
		return nil, explain("reading "+tag.String(), err)
	}
	receipt := ReceiptPath(opts.Image)
	if prev != nil && prev.Digest == mdigest {
		if err := verify(ctx, tag, img, layer, rt, auth, ropts); err != nil {
			return nil, explain("checking "+tag.String(), err)
		}
		fmt.Fprintf(opts.Stdout, "%s already names this image (%s): nothing to push; layer %s checked at the registry\n", tag, mdigest, layer.digest)
		rec.Checked = checkedWhat
		written, err := writeReceipt(receipt, opts.Image, rec, time.Now(), true)
		if err != nil {
			return nil, err
		}
		if !written {
			receipt = ""
		}
		return &Result{Record: rec, Unchanged: true, Receipt: receipt}, nil
	}
	if prev != nil {
		if !opts.Force {
			return nil, fmt.Errorf("%w: %s names %s, this image is %s; nothing was pushed (--force replaces it)", ErrConflict, tag, prev.Digest, mdigest)
		}
		rec.Replaced = prev.Digest.String()
		fmt.Fprintf(opts.Stdout, "%s names %s: replacing it (--force)\n", tag, prev.Digest)
	}

	// Blobs and the manifest, by digest: the tag is untouched.
	byDigest := tag.Context().Digest(mdigest.String())
	total, _ := img.Size()
	total += layer.tarSize
	prog := newProgress(opts.Progress, "push "+tag.String())
	updates := make(chan v1.Update, 64)
	done := make(chan struct{})
	go func() {
		defer close(done)
		for u := range updates {
			prog.update(u.Complete, u.Total)
		}
	}()
	t1 := time.Now()
	err = remote.Write(byDigest, img, append(ropts, remote.WithProgress(updates))...)
	<-done
	prog.finish(err == nil)
	if err != nil {
		return nil, explain("pushing to "+tag.Context().String(), err)
	}
	fmt.Fprintf(opts.Stdout, "pushed %s (blobs and manifest, untagged) in %.1fs\n", byDigest, time.Since(t1).Seconds())
	if err := verify(ctx, byDigest, img, layer, rt, auth, ropts); err != nil {
		return nil, explain("checking "+byDigest.String(), fmt.Errorf("%w; the tag was not set", err))
	}
	// Last, the tag, and what it names read back.
	if err := remote.Tag(tag, img, ropts...); err != nil {
		return nil, explain("tagging "+tag.String(), err)
	}
	now, err := remote.Head(tag, ropts...)
	if err != nil {
		return nil, explain("reading "+tag.String()+" back", err)
	}
	if now.Digest != mdigest {
		return nil, fmt.Errorf("%s names %s after the push, not %s: another client pushed it at the same time?", tag, now.Digest, mdigest)
	}
	rec.Checked = checkedWhat
	fmt.Fprintf(opts.Stdout, "published %s = %s; layer %s checked at the registry\n", tag, mdigest, layer.digest)
	if _, err := writeReceipt(receipt, opts.Image, rec, time.Now(), false); err != nil {
		return nil, fmt.Errorf("published %s, but the receipt: %w", tag, err)
	}
	return &Result{Record: rec, Receipt: receipt}, nil
}

const checkedWhat = "manifest pulled back: its digest, config digest and layer digest equal the local ones; the layer blob present with the local size and digest"

// ParseOCI parses oci://REGISTRY/REPO:TAG; registry and tag must be given.
func ParseOCI(dest string) (name.Tag, error) {
	rest, ok := strings.CutPrefix(dest, "oci://")
	if !ok {
		return name.Tag{}, usage("--to %q: want oci://REGISTRY/REPO:TAG (e.g. oci://registry.example.com/images/openclaw:1.0), s3://BUCKET/KEY or libvirt://POOL/NAME", dest)
	}
	if strings.Contains(rest, "@") {
		return name.Tag{}, usage("--to %s: a digest is what the push makes, name a tag instead (oci://REGISTRY/REPO:TAG)", dest)
	}
	t, err := name.NewTag(rest, name.StrictValidation)
	if err != nil {
		return name.Tag{}, usage("--to %s: %v (want oci://REGISTRY/REPO:TAG)", dest, err)
	}
	return t, nil
}

// tlsConfig trusts the system's CAs and those in caFile.
func tlsConfig(caFile string) (*tls.Config, error) {
	pool, err := x509.SystemCertPool()
	if err != nil || pool == nil {
		pool = x509.NewCertPool()
	}
	if caFile != "" {
		b, err := os.ReadFile(caFile)
		if err != nil {
			return nil, usage("--ca: %v", err)
		}
		if !pool.AppendCertsFromPEM(b) {
			return nil, usage("--ca %s: no PEM certificate in it", caFile)
		}
	}
	return &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}, nil
}

// tlsOnly refuses plain HTTP: go-containerregistry would otherwise try
// http:// for registries on loopback or private addresses.
type tlsOnly struct{ inner http.RoundTripper }

func (t tlsOnly) RoundTrip(r *http.Request) (*http.Response, error) {
	if r.URL.Scheme != "https" {
		return nil, fmt.Errorf("bake publish speaks only HTTPS, not %s", r.URL.Scheme)
	}
	return t.inner.RoundTrip(r)
}

// ping asks GET /v2/ to tell an unreachable registry and an untrusted
// certificate apart from credential problems, with a message for each.
func ping(ctx context.Context, rt http.RoundTripper, reg name.Registry) error {
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "https://"+reg.RegistryStr()+"/v2/", nil)
	if err != nil {
		return usage("registry %s: %v", reg, err)
	}
	resp, err := rt.RoundTrip(req)
	if err != nil {
		if ce := connErr("registry "+reg.String(), err); ce != nil {
			return ce
		}
		return fmt.Errorf("registry %s: %v", reg, err)
	}
	defer resp.Body.Close()
	io.Copy(io.Discard, io.LimitReader(resp.Body, 1<<16))
	if resp.StatusCode != http.StatusOK && resp.StatusCode != http.StatusUnauthorized {
		return fmt.Errorf("registry %s: GET /v2/ answered %s: not a registry speaking the distribution API", reg, resp.Status)
	}
	return nil
}

// connErr says what went wrong reaching target: an untrusted or invalid
// TLS certificate, or no answer at all; nil for other errors.
func connErr(target string, err error) error {
	var ua x509.UnknownAuthorityError
	var hn x509.HostnameError
	var ci x509.CertificateInvalidError
	var ve *tls.CertificateVerificationError
	switch {
	case errors.As(err, &ua), errors.As(err, &ve):
		return fmt.Errorf("%s: its TLS certificate is not signed by a CA bake trusts (give that CA with --ca FILE): %v", target, err)
	case errors.As(err, &hn), errors.As(err, &ci):
		return fmt.Errorf("%s: its TLS certificate is not valid for it: %v", target, err)
	}
	var ne net.Error
	var oe *net.OpError
	if errors.As(err, &oe) || errors.As(err, &ne) || errors.Is(err, io.EOF) {
		return fmt.Errorf("%s is unreachable: %v", target, err)
	}
	return nil
}

// verify pulls ref's manifest back and compares it with the local image,
// and asks for the layer blob (HEAD) to check its size and digest.
func verify(ctx context.Context, ref name.Reference, img v1.Image, layer *DiskLayer, rt http.RoundTripper, auth authn.Authenticator, ropts []remote.Option) error {
	want, _ := img.Digest()
	cfg, _ := img.ConfigName()
	desc, err := remote.Get(ref, ropts...)
	if err != nil {
		return err
	}
	if desc.Digest != want {
		return fmt.Errorf("the registry's manifest is %s, the local one %s", desc.Digest, want)
	}
	got, err := v1.ParseManifest(bytes.NewReader(desc.Manifest))
	if err != nil {
		return fmt.Errorf("the registry's manifest: %w", err)
	}
	if got.Config.Digest != cfg {
		return fmt.Errorf("the registry's manifest names config %s, the local one is %s", got.Config.Digest, cfg)
	}
	if len(got.Layers) != 1 || got.Layers[0].Digest != layer.digest || got.Layers[0].Size != layer.tarSize {
		return fmt.Errorf("the registry's manifest names layers %v, want one layer %s of %d bytes", got.Layers, layer.digest, layer.tarSize)
	}
	repo := ref.Context()
	tr, err := transport.NewWithContext(ctx, repo.Registry, auth, rt, []string{repo.Scope(transport.PullScope)})
	if err != nil {
		return err
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodHead, fmt.Sprintf("https://%s/v2/%s/blobs/%s", repo.RegistryStr(), repo.RepositoryStr(), layer.digest), nil)
	if err != nil {
		return err
	}
	resp, err := (&http.Client{Transport: tr}).Do(req)
	if err != nil {
		return err
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("layer %s: HEAD answered %s", layer.digest, resp.Status)
	}
	if n, _ := strconv.ParseInt(resp.Header.Get("Content-Length"), 10, 64); n != layer.tarSize {
		return fmt.Errorf("layer %s: the registry holds %d bytes, the local layer is %d", layer.digest, n, layer.tarSize)
	}
	if d := resp.Header.Get("Docker-Content-Digest"); d != "" && d != layer.digest.String() {
		return fmt.Errorf("layer %s: the registry says its digest is %s", layer.digest, d)
	}
	return nil
}

func isNotFound(err error) bool {
	var te *transport.Error
	return errors.As(err, &te) && te.StatusCode == http.StatusNotFound
}

// explainErr turns a registry's refusal into one line that says what to do.
func explainErr(what string, reg name.Registry, tag name.Tag, auth authn.Authenticator, err error) error {
	var te *transport.Error
	if errors.As(err, &te) && (te.StatusCode == http.StatusUnauthorized || te.StatusCode == http.StatusForbidden) {
		if auth == authn.Anonymous {
			return fmt.Errorf("%s: registry %s wants credentials and none were found for it in the Docker config ($DOCKER_CONFIG/config.json or ~/.docker/config.json) or its credential helpers: run `docker login %s`; the tag was not changed", what, reg, reg)
		}
		if te.StatusCode == http.StatusForbidden {
			return fmt.Errorf("%s: registry %s refused access to %s for these credentials (%s); the tag was not changed", what, reg, tag.Context(), http.StatusText(te.StatusCode))
		}
		return fmt.Errorf("%s: registry %s refused the credentials from the Docker config (%s): check them with `docker login %s`; the tag was not changed", what, reg, http.StatusText(te.StatusCode), reg)
	}
	return fmt.Errorf("%s: %w", what, err)
}
