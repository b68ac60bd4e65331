package publish

import (
	"context"
	"crypto/sha256"
	"crypto/tls"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	awshttp "github.com/aws/aws-sdk-go-v2/aws/transport/http"
	"github.com/aws/aws-sdk-go-v2/service/s3"
	"github.com/aws/aws-sdk-go-v2/service/s3/types"
	"github.com/aws/smithy-go"
	"golang.org/x/sync/errgroup"
)

// The object's user metadata (x-amz-meta-*) bake writes.
const (
	MetaSHA256   = "bake-sha256"  // the image's SHA-256, hex: S3's ETag of a multipart upload is not a digest
	MetaFormat   = "bake-format"  // qcow2 or raw
	MetaRecipe   = "bake-recipe"  // the recipe's name
	MetaVersion  = "bake-version" // the bake that built it
	MetaEpoch    = "bake-source-date-epoch"
	MetaPartSize = "bake-part-size" // bytes per part of the upload (the composite checksum depends on it)
)

// S3 part sizes: S3 takes at most 10,000 parts of 5 MiB to 5 GiB (the last
// may be smaller).
const (
	DefaultPartSize = 64 << 20
	MinPartSize     = 5 << 20
	maxPartSize     = 5 << 30
	maxParts        = 10000
	partsInFlight   = 4
)

// ErrObjectConflict is returned when the key holds other content and
// Force is not set: nothing was uploaded.
var ErrObjectConflict = errors.New("object exists with other content")

// ErrInterrupted: the publication was cancelled (Ctrl-C); nothing was left
// at the destination.
var ErrInterrupted = errors.New("interrupted")

// partPlan says how a file of size bytes is cut: one PUT when it fits in one
// part, else parts of partSize.
func partPlan(size, want int64) (partSize int64, parts int, err error) {
	if want == 0 {
		want = DefaultPartSize
	}
	if want < MinPartSize || want > maxPartSize {
		return 0, 0, usage("--part-size %d MiB: S3 takes parts of 5 MiB to 5 GiB", want>>20)
	}
	partSize = want
	if size > partSize*maxParts {
		// Round up to whole MiB so that the plan stays simple to repeat.
		partSize = ((size+maxParts-1)/maxParts + 1<<20 - 1) &^ (1<<20 - 1)
		if partSize > maxPartSize {
			return 0, 0, usage("%d bytes: more than S3's largest object (10,000 parts of 5 GiB)", size)
		}
	}
	parts = int((size + partSize - 1) / partSize)
	if parts == 0 {
		parts = 1
	}
	return partSize, parts, nil
}

// localSums is what one read of the image gives: its SHA-256 and that of
// each part, and the checksum S3 computes for the object (a single PUT:
// the object's SHA-256; a multipart upload: the SHA-256 of the parts'
// SHA-256s, "-N").
type localSums struct {
	size      int64
	sha256    string   // hex
	parts     [][]byte // raw SHA-256 of each part
	s3Sum     string   // base64, as S3 reports ChecksumSHA256
	multipart bool
}

func hashImage(ctx context.Context, f *os.File, size, partSize int64, parts int) (*localSums, error) {
	whole := sha256.New()
	ls := &localSums{size: size, multipart: parts > 1}
	buf := make([]byte, 1<<20)
	var off int64
	for i := 0; i < parts; i++ {
		n := min(partSize, size-off)
		ph := sha256.New()
		got, err := io.CopyBuffer(io.MultiWriter(whole, ph), ctxReader{ctx, io.NewSectionReader(f, off, n)}, buf)
		if err != nil {
			return nil, err
		}
		if got != n {
			return nil, fmt.Errorf("%s changed while it was read (%d bytes of part %d, %d expected)", f.Name(), got, i+1, n)
		}
		ls.parts = append(ls.parts, ph.Sum(nil))
		off += n
	}
	ls.sha256 = hex.EncodeToString(whole.Sum(nil))
	if ls.multipart {
		c := sha256.New()
		for _, p := range ls.parts {
			c.Write(p)
		}
		ls.s3Sum = base64.StdEncoding.EncodeToString(c.Sum(nil)) + "-" + strconv.Itoa(parts)
	} else {
		ls.s3Sum = base64.StdEncoding.EncodeToString(whole.Sum(nil))
	}
	return ls, nil
}

// The client is aws-sdk-go-v2's service/s3 alone (no config package: bake
// reads the credentials itself): 11 modules, all AWS's own, against
// minio-go v7.4.1's 19 (cespare/xxhash, klauspost/cpuid and crc32,
// minio/md5-simd and crc64nvme, tinylib/msgp, rs/xid, go-ini, go-humanize,
// ...); the same binary size in a test program (8.5 MB each).

// ctxReader stops reading once ctx is done (Ctrl-C while a large image is
// hashed).
type ctxReader struct {
	ctx context.Context
	r   io.Reader
}

func (r ctxReader) Read(b []byte) (int, error) {
	if err := r.ctx.Err(); err != nil {
		return 0, err
	}
	return r.r.Read(b)
}

// publishS3 uploads the image to s3://BUCKET/KEY. Nothing is visible under
// KEY until the whole image is there: a single PUT is atomic, a multipart
// upload is completed last and aborted on any failure or interruption.
func publishS3(ctx context.Context, opts Options) (*Result, error) {
	res, err := publishS3Once(ctx, opts)
	if err != nil && ctx.Err() != nil && !errors.Is(err, ErrInterrupted) {
		err = fmt.Errorf("%w: %v", ErrInterrupted, err)
	}
	return res, err
}

func publishS3Once(ctx context.Context, opts Options) (*Result, error) {
	dest, err := ParseS3(opts.To)
	if err != nil {
		return nil, err
	}
	endpoint := opts.Endpoint
	if endpoint == "" {
		endpoint = os.Getenv("AWS_ENDPOINT_URL_S3")
	}
	if endpoint == "" {
		endpoint = os.Getenv("AWS_ENDPOINT_URL")
	}
	if endpoint != "" {
		if endpoint, err = parseEndpoint(endpoint); err != nil {
			return nil, err
		}
	}
	region := opts.Region
	for _, v := range []string{"AWS_REGION", "AWS_DEFAULT_REGION"} {
		if region == "" {
			region = os.Getenv(v)
		}
	}
	if region == "" {
		region = "us-east-1"
	}
	tlsConf, err := tlsConfig(opts.CAFile)
	if err != nil {
		return nil, err
	}
	creds, credSource, err := s3Credentials(opts.CredentialsFile)
	if err != nil {
		return nil, err
	}
	ua := opts.UserAgent
	if ua == "" {
		ua = "bake"
	}
	s3c := newS3Target(dest, endpoint, region, tlsConf, creds, credSource, ua)
	if opts.Abort {
		n, err := s3c.abortAll(ctx, opts.Stdout)
		if err != nil {
			return nil, err
		}
		if n == 0 {
			fmt.Fprintf(opts.Stdout, "%s has no unfinished upload: nothing to abort\n", dest)
		}
		return &Result{Record: Record{Destination: opts.To}, Unchanged: true}, nil
	}
	m, f, fi, in, err := openImage(opts.Image)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	size := fi.Size()
	partSize, parts, err := partPlan(size, opts.PartSize)
	if err != nil {
		return nil, err
	}
	t0 := time.Now()
	sums, err := hashImage(ctx, f, size, partSize, parts)
	if err != nil {
		return nil, err
	}
	if err := checkListed(opts.Image, m, sums.sha256); err != nil {
		return nil, usageError{err}
	}
	// The format the build manifest lists (vhd, vmdk, gce's tar.gz... are
	// uploaded as they are, e.g. for a cloud's import), else what the
	// file is.
	format := in.Format
	for _, o := range m.Outputs {
		if o.File == filepath.Base(opts.Image) && o.Format != "" {
			format = o.Format
		}
	}
	how := "one PUT"
	if sums.multipart {
		how = fmt.Sprintf("%d parts of %d MiB", parts, partSize>>20)
	}
	fmt.Fprintf(opts.Stdout, "%s: %s, sha256 %s, %d bytes (%s) in %.1fs\n", opts.Image, format, sums.sha256, size, how, time.Since(t0).Seconds())

	rec := Record{
		Destination: opts.To,
		Bucket:      dest.Bucket,
		Key:         dest.Key,
		Endpoint:    endpoint,
		Region:      region,
		Format:      format,
		ObjectBytes: size,
		ImageSHA256: sums.sha256,
	}
	if sums.multipart {
		rec.PartSize, rec.Parts = partSize, parts
	}
	receipt := ReceiptPath(opts.Image)

	// What KEY holds now.
	prev, err := s3c.head(ctx)
	if err != nil {
		return nil, s3c.explain("reading "+dest.String(), err)
	}
	if prev != nil {
		if prev.Metadata[MetaSHA256] == sums.sha256 && aws.ToInt64(prev.ContentLength) == size {
			checked, err := s3c.check(ctx, prev, sums, f, size, opts.Progress)
			if err != nil {
				return nil, err
			}
			fmt.Fprintf(opts.Stdout, "%s already holds this image (sha256 %s): nothing to upload; %s\n", dest, sums.sha256, checked)
			rec.ETag, rec.VersionID, rec.Checksum, rec.Checked = aws.ToString(prev.ETag), aws.ToString(prev.VersionId), aws.ToString(prev.ChecksumSHA256), checked
			written, err := writeReceipt(receipt, opts.Image, rec, time.Now(), true)
			if err != nil {
				return nil, err
			}
			if !written {
				receipt = ""
			}
			return &Result{Record: rec, Unchanged: true, Receipt: receipt}, nil
		}
		what := "an object bake did not publish (no " + MetaSHA256 + " metadata)"
		if s := prev.Metadata[MetaSHA256]; s != "" {
			what = "an image with sha256 " + s
		}
		if !opts.Force {
			return nil, fmt.Errorf("%w: %s holds %s (%d bytes), this image is sha256 %s; nothing was uploaded (--force replaces it)", ErrObjectConflict, dest, what, aws.ToInt64(prev.ContentLength), sums.sha256)
		}
		rec.Replaced = prev.Metadata[MetaSHA256]
		if rec.Replaced == "" {
			rec.Replaced = "etag " + aws.ToString(prev.ETag)
		}
		fmt.Fprintf(opts.Stdout, "%s holds %s: replacing it (--force)\n", dest, what)
	}

	meta := map[string]string{
		MetaSHA256:  sums.sha256,
		MetaFormat:  format,
		MetaRecipe:  m.Recipe.Name,
		MetaVersion: m.Bake,
		MetaEpoch:   strconv.FormatInt(m.SourceDateEpoch, 10),
	}
	if sums.multipart {
		meta[MetaPartSize] = strconv.FormatInt(partSize, 10)
	}
	prog := newProgress(opts.Progress, "upload "+dest.String())
	t1 := time.Now()
	var etag, version, checksum string
	c := cond{ifNoneMatch: aws.String("*")}
	if prev != nil {
		c = cond{ifMatch: prev.ETag}
	}
	if sums.multipart {
		etag, version, checksum, rec.UploadID, rec.ResumedParts, err = s3c.multipart(ctx, opts.Stdout, f, size, partSize, sums, meta, c, prog)
	} else {
		etag, version, checksum, err = s3c.put(ctx, f, size, sums, meta, c, prog)
	}
	prog.finish(err == nil)
	if err != nil {
		if ctx.Err() != nil {
			return nil, fmt.Errorf("%w: %v", ErrInterrupted, err)
		}
		return nil, err
	}
	if checksum != "" && checksum != sums.s3Sum {
		// Only reachable if the store accepted parts it computed other
		// checksums for: the next HEAD says more.
		return nil, fmt.Errorf("%s: the store reports checksum %s for the completed upload, the local one is %s", dest, checksum, sums.s3Sum)
	}
	fmt.Fprintf(opts.Stdout, "uploaded %s in %.1fs (etag %s)\n", dest, time.Since(t1).Seconds(), etag)

	// Read back what KEY holds now.
	now, err := s3c.head(ctx)
	if err != nil {
		return nil, s3c.explain("reading "+dest.String()+" back", err)
	}
	if now == nil {
		return nil, fmt.Errorf("%s: not found right after its upload completed", dest)
	}
	if now.Metadata[MetaSHA256] != sums.sha256 || aws.ToInt64(now.ContentLength) != size {
		return nil, fmt.Errorf("%s holds sha256 %q, %d bytes after the upload, not this image: another client wrote it at the same time?", dest, now.Metadata[MetaSHA256], aws.ToInt64(now.ContentLength))
	}
	checked, err := s3c.check(ctx, now, sums, f, size, opts.Progress)
	if err != nil {
		return nil, err
	}
	rec.ETag, rec.VersionID, rec.Checksum, rec.Checked = aws.ToString(now.ETag), aws.ToString(now.VersionId), aws.ToString(now.ChecksumSHA256), checked
	if rec.VersionID == "" {
		rec.VersionID = version
	}
	fmt.Fprintf(opts.Stdout, "published %s (sha256 %s); %s\n", dest, sums.sha256, checked)
	if _, err := writeReceipt(receipt, opts.Image, rec, time.Now(), false); err != nil {
		return nil, fmt.Errorf("published %s, but the receipt: %w", dest, err)
	}
	return &Result{Record: rec, Receipt: receipt}, nil
}

// newS3Target makes the client: path-style addressing on a store of its
// own endpoint, HTTPS only, and bake's part checksums rather than the
// SDK's.
func newS3Target(dest S3Dest, endpoint, region string, tlsConf *tls.Config, creds aws.Credentials, credSource, ua string) *s3Target {
	endpointShown := endpoint
	if endpointShown == "" {
		endpointShown = "AWS S3 (" + region + ")"
	}
	base := http.DefaultTransport.(*http.Transport).Clone()
	base.TLSClientConfig = tlsConf
	cl := s3.New(s3.Options{
		Region: region,
		Credentials: aws.CredentialsProviderFunc(func(context.Context) (aws.Credentials, error) {
			return creds, nil
		}),
		HTTPClient:   &http.Client{Transport: tlsOnly{base}},
		UsePathStyle: endpoint != "",
		BaseEndpoint: func() *string {
			if endpoint == "" {
				return nil
			}
			return aws.String(endpoint)
		}(),
		AppID: sanitizeAppID(ua),
		// bake sends each part's SHA-256 itself.
		RequestChecksumCalculation: aws.RequestChecksumCalculationWhenRequired,
		ResponseChecksumValidation: aws.ResponseChecksumValidationWhenRequired,
	})
	return &s3Target{region: region, cl: cl, dest: dest, endpoint: endpointShown, credSource: credSource}
}

// sanitizeAppID keeps what the SDK accepts in its user agent's app ID.
func sanitizeAppID(s string) string {
	b := []byte(s)
	for i, c := range b {
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '.' || c == '-' || c == '_') {
			b[i] = '_'
		}
	}
	if len(b) > 50 {
		b = b[:50]
	}
	return string(b)
}

// cond is what the key must still hold when the upload completes: nothing
// (If-None-Match: *), or the object --force replaces (If-Match: its
// ETag). Another client's write in the meantime fails the upload.
type cond struct{ ifNoneMatch, ifMatch *string }

type s3Target struct {
	region     string
	cl         *s3.Client
	dest       S3Dest
	endpoint   string
	credSource string
}

// head returns the object's metadata and checksum, or nil when there is
// no object under the key. A HEAD's error has no body, so a 403 or 404
// does not say why (a wrong key, no such bucket, no such object: stores
// differ); a GET of the object's first byte then asks, and only its
// NoSuchKey means "absent".
func (t *s3Target) head(ctx context.Context) (*s3.HeadObjectOutput, error) {
	out, err := t.cl.HeadObject(ctx, &s3.HeadObjectInput{Bucket: &t.dest.Bucket, Key: &t.dest.Key, ChecksumMode: types.ChecksumModeEnabled})
	if err == nil {
		return out, nil
	}
	var re *awshttp.ResponseError
	if !errors.As(err, &re) || (re.HTTPStatusCode() != http.StatusNotFound && re.HTTPStatusCode() != http.StatusForbidden) {
		return nil, err
	}
	g, gerr := t.cl.GetObject(ctx, &s3.GetObjectInput{Bucket: &t.dest.Bucket, Key: &t.dest.Key, Range: aws.String("bytes=0-0")})
	if gerr == nil {
		g.Body.Close()
		return nil, fmt.Errorf("HEAD answered %d, but GET answers: the store contradicts itself", re.HTTPStatusCode())
	}
	var nk *types.NoSuchKey
	if errors.As(gerr, &nk) || isCode(gerr, "NoSuchKey") {
		return nil, nil
	}
	return nil, gerr
}

// check proves that the object holds the image: its size and bake's
// SHA-256 metadata were compared by the caller; here the store's own
// checksum of the bytes it holds (the SHA-256 of a single PUT, or of the
// parts' SHA-256s) must equal the local one. A store that reports none,
// or an object uploaded in other parts, is read back and hashed.
func (t *s3Target) check(ctx context.Context, h *s3.HeadObjectOutput, sums *localSums, f *os.File, size int64, progress io.Writer) (string, error) {
	if got := aws.ToString(h.ChecksumSHA256); got != "" && got == sums.s3Sum {
		if sums.multipart {
			return "the store's SHA-256 checksum of the parts (" + got + ") equals the local one; size and " + MetaSHA256 + " metadata equal", nil
		}
		return "the store's SHA-256 of the object equals the image's; size and " + MetaSHA256 + " metadata equal", nil
	}
	out, err := t.cl.GetObject(ctx, &s3.GetObjectInput{Bucket: &t.dest.Bucket, Key: &t.dest.Key, IfMatch: h.ETag})
	if err != nil {
		return "", t.explain("reading "+t.dest.String()+" back", err)
	}
	defer out.Body.Close()
	prog := newProgress(progress, "read back "+t.dest.String())
	hs := sha256.New()
	n, err := io.Copy(hs, &progressReader{r: out.Body, p: prog})
	prog.finish(err == nil)
	if err != nil {
		return "", fmt.Errorf("reading %s back: %w", t.dest, err)
	}
	got := hex.EncodeToString(hs.Sum(nil))
	if n != size || got != sums.sha256 {
		return "", fmt.Errorf("%s read back: %d bytes, sha256 %s; the image is %d bytes, sha256 %s", t.dest, n, got, size, sums.sha256)
	}
	return "read back whole: its SHA-256 equals the image's; size and " + MetaSHA256 + " metadata equal", nil
}

type progressReader struct {
	r io.Reader
	p *progress
	n int64
}

func (r *progressReader) Read(b []byte) (int, error) {
	n, err := r.r.Read(b)
	r.n += int64(n)
	r.p.update(r.n, 0)
	return n, err
}

func (t *s3Target) put(ctx context.Context, f *os.File, size int64, sums *localSums, meta map[string]string, c cond, prog *progress) (etag, version, checksum string, err error) {
	ctr := &progressCounter{p: prog, total: size}
	stop := ctr.run()
	out, err := t.cl.PutObject(ctx, &s3.PutObjectInput{
		Bucket: &t.dest.Bucket, Key: &t.dest.Key,
		Body:              ctr.section(f, 0, size),
		ContentLength:     aws.Int64(size),
		ContentType:       aws.String("application/octet-stream"),
		ChecksumAlgorithm: types.ChecksumAlgorithmSha256,
		ChecksumSHA256:    aws.String(base64.StdEncoding.EncodeToString(sums.parts[0])),
		Metadata:          meta,
		IfNoneMatch:       c.ifNoneMatch,
		IfMatch:           c.ifMatch,
	})
	stop()
	if err != nil {
		return "", "", "", t.explain("uploading to "+t.dest.String(), err)
	}
	return aws.ToString(out.ETag), aws.ToString(out.VersionId), aws.ToString(out.ChecksumSHA256), nil
}

// multipart uploads the parts (partsInFlight at a time, each streamed from
// the file: memory does not grow with the image) with their SHA-256s, and
// completes the upload last. On any failure or cancellation the upload is
// aborted: no part stays behind and nothing appears under the key.
func (t *s3Target) multipart(ctx context.Context, out io.Writer, f *os.File, size, partSize int64, sums *localSums, meta map[string]string, c cond, prog *progress) (etag, version, checksum, uploadID string, resumed int, err error) {
	// An unfinished upload of this very image (a run killed or cut off
	// before it could abort) is resumed: the parts the store holds with the
	// local part's size and SHA-256 are not sent again.
	have := map[int32]types.Part{}
	uploadID, have, err = t.resumable(ctx, out, partSize, sums)
	if err != nil {
		return "", "", "", "", 0, err
	}
	if uploadID != "" {
		resumed = len(have)
		fmt.Fprintf(out, "resuming the unfinished upload %s of this image: %d of %d parts are there already\n", uploadID, len(have), len(sums.parts))
	} else {
		cr, err := t.cl.CreateMultipartUpload(ctx, &s3.CreateMultipartUploadInput{
			Bucket: &t.dest.Bucket, Key: &t.dest.Key,
			ContentType:       aws.String("application/octet-stream"),
			ChecksumAlgorithm: types.ChecksumAlgorithmSha256,
			ChecksumType:      types.ChecksumTypeComposite,
			Metadata:          meta,
		})
		if err != nil {
			return "", "", "", "", 0, t.explain("starting the upload to "+t.dest.String(), err)
		}
		uploadID = aws.ToString(cr.UploadId)
	}
	done := false
	defer func() {
		if done {
			return
		}
		// Whatever happened (Ctrl-C included), the parts go.
		actx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 60*time.Second)
		defer cancel()
		aerr := t.abort(actx, uploadID)
		if aerr != nil {
			err = fmt.Errorf("%w; aborting the multipart upload %s failed too (%v): its parts stay in the bucket (a re-run resumes it; bake publish --to %s --abort, or a lifecycle rule, removes it)", err, uploadID, aerr, t.dest)
			return
		}
		err = fmt.Errorf("%w; the multipart upload %s was aborted: nothing was published", err, uploadID)
	}()

	ctr := &progressCounter{p: prog, total: size}
	stop := ctr.run()
	defer stop()
	completed := make([]types.CompletedPart, len(sums.parts))
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(partsInFlight)
	var mu sync.Mutex
	for i := range sums.parts {
		if gctx.Err() != nil {
			break
		}
		i := i
		off := int64(i) * partSize
		n := min(partSize, size-off)
		if p, ok := have[int32(i+1)]; ok {
			completed[i] = types.CompletedPart{ETag: p.ETag, PartNumber: aws.Int32(int32(i + 1)), ChecksumSHA256: p.ChecksumSHA256}
			ctr.skip(n)
			continue
		}
		g.Go(func() error {
			sum := base64.StdEncoding.EncodeToString(sums.parts[i])
			out, err := t.cl.UploadPart(gctx, &s3.UploadPartInput{
				Bucket: &t.dest.Bucket, Key: &t.dest.Key, UploadId: &uploadID,
				PartNumber:        aws.Int32(int32(i + 1)),
				Body:              ctr.section(f, off, n),
				ContentLength:     aws.Int64(n),
				ChecksumAlgorithm: types.ChecksumAlgorithmSha256,
				ChecksumSHA256:    aws.String(sum),
			})
			if err != nil {
				return t.explain(fmt.Sprintf("uploading part %d of %d to %s", i+1, len(sums.parts), t.dest), err)
			}
			if got := aws.ToString(out.ChecksumSHA256); got != "" && got != sum {
				return fmt.Errorf("part %d: the store computed SHA-256 %s, the local part's is %s", i+1, got, sum)
			}
			mu.Lock()
			completed[i] = types.CompletedPart{ETag: out.ETag, PartNumber: aws.Int32(int32(i + 1)), ChecksumSHA256: aws.String(sum)}
			mu.Unlock()
			return nil
		})
	}
	if err := g.Wait(); err != nil {
		return "", "", "", uploadID, resumed, err
	}
	if err := ctx.Err(); err != nil {
		return "", "", "", uploadID, resumed, err
	}
	cout, err := t.cl.CompleteMultipartUpload(ctx, &s3.CompleteMultipartUploadInput{
		Bucket: &t.dest.Bucket, Key: &t.dest.Key, UploadId: &uploadID,
		MultipartUpload: &types.CompletedMultipartUpload{Parts: completed},
		IfNoneMatch:     c.ifNoneMatch,
		IfMatch:         c.ifMatch,
	})
	if err != nil {
		return "", "", "", uploadID, resumed, t.explain("completing the upload to "+t.dest.String(), err)
	}
	done = true
	return aws.ToString(cout.ETag), aws.ToString(cout.VersionId), aws.ToString(cout.ChecksumSHA256), uploadID, resumed, nil
}

// unfinished lists the multipart uploads of the key not yet completed or
// aborted.
func (t *s3Target) unfinished(ctx context.Context) ([]types.MultipartUpload, error) {
	var ups []types.MultipartUpload
	in := &s3.ListMultipartUploadsInput{Bucket: &t.dest.Bucket, Prefix: &t.dest.Key}
	for {
		out, err := t.cl.ListMultipartUploads(ctx, in)
		if err != nil {
			return nil, t.explain("listing the unfinished uploads of "+t.dest.String(), err)
		}
		for _, u := range out.Uploads {
			if aws.ToString(u.Key) == t.dest.Key {
				ups = append(ups, u)
			}
		}
		if !aws.ToBool(out.IsTruncated) {
			return ups, nil
		}
		in.KeyMarker, in.UploadIdMarker = out.NextKeyMarker, out.NextUploadIdMarker
	}
}

// resumable finds an unfinished upload of the key whose parts are all
// parts of this image (each of the planned size and the local part's
// SHA-256), with at least one part. The others are left alone, and named.
func (t *s3Target) resumable(ctx context.Context, out io.Writer, partSize int64, sums *localSums) (string, map[int32]types.Part, error) {
	ups, err := t.unfinished(ctx)
	if err != nil {
		return "", nil, err
	}
	var others []string
	for _, u := range ups {
		id := aws.ToString(u.UploadId)
		have := map[int32]types.Part{}
		ok := true
		in := &s3.ListPartsInput{Bucket: &t.dest.Bucket, Key: &t.dest.Key, UploadId: &id}
		for ok {
			lp, err := t.cl.ListParts(ctx, in)
			if err != nil {
				return "", nil, t.explain("listing the parts of the unfinished upload "+id, err)
			}
			for _, p := range lp.Parts {
				n := aws.ToInt32(p.PartNumber)
				if n < 1 || int(n) > len(sums.parts) {
					ok = false
					break
				}
				want := partSize
				if int(n) == len(sums.parts) {
					want = sums.size - partSize*int64(n-1)
				}
				if aws.ToInt64(p.Size) != want || aws.ToString(p.ChecksumSHA256) != base64.StdEncoding.EncodeToString(sums.parts[n-1]) {
					ok = false
					break
				}
				have[n] = p
			}
			if !aws.ToBool(lp.IsTruncated) {
				break
			}
			in.PartNumberMarker = lp.NextPartNumberMarker
		}
		if ok && len(have) > 0 {
			return id, have, nil
		}
		others = append(others, id)
	}
	if len(others) > 0 {
		fmt.Fprintf(out, "%s has %d unfinished upload(s) of other content (%s): left alone; --abort removes them\n", t.dest, len(others), strings.Join(others, ", "))
	}
	return "", nil, nil
}

// abort aborts an upload and makes sure it is gone. A part still being
// received when the abort arrives may be stored after it (S3's documents
// say so: "it might be necessary to abort a given multipart upload
// multiple times"; versitygw re-created the upload with a late part under
// load): so the upload is asked for (ListParts) until it is reported
// missing twice, a second apart, aborting again whenever it is there.
func (t *s3Target) abort(ctx context.Context, id string) error {
	gone := 0
	for round := 0; ; round++ {
		_, err := t.cl.AbortMultipartUpload(ctx, &s3.AbortMultipartUploadInput{Bucket: &t.dest.Bucket, Key: &t.dest.Key, UploadId: &id})
		if err != nil && !isNoSuchUpload(err) {
			return t.explain("aborting", err)
		}
		for gone < 2 {
			select {
			case <-ctx.Done():
				return fmt.Errorf("the upload was aborted, but whether a late part re-created it could not be checked: %w", ctx.Err())
			case <-time.After(time.Second):
			}
			_, err := t.cl.ListParts(ctx, &s3.ListPartsInput{Bucket: &t.dest.Bucket, Key: &t.dest.Key, UploadId: &id})
			if err == nil {
				gone = 0
				break // there again: abort again
			}
			if !isNoSuchUpload(err) {
				return t.explain("checking the aborted upload", err)
			}
			gone++
		}
		if gone >= 2 {
			return nil
		}
		if round >= 30 {
			return fmt.Errorf("upload %s is there again after %d aborts", id, round+1)
		}
	}
}

func isNoSuchUpload(err error) bool {
	var nu *types.NoSuchUpload
	if errors.As(err, &nu) || isCode(err, "NoSuchUpload") {
		return true
	}
	var re *awshttp.ResponseError
	return errors.As(err, &re) && re.HTTPStatusCode() == http.StatusNotFound
}

// abortAll aborts every unfinished multipart upload of the key.
func (t *s3Target) abortAll(ctx context.Context, out io.Writer) (int, error) {
	ups, err := t.unfinished(ctx)
	if err != nil {
		return 0, err
	}
	for _, u := range ups {
		if err := t.abort(ctx, aws.ToString(u.UploadId)); err != nil {
			return 0, t.explain("aborting the upload "+aws.ToString(u.UploadId)+" of "+t.dest.String(), err)
		}
		fmt.Fprintf(out, "aborted the unfinished upload %s of %s (started %s)\n", aws.ToString(u.UploadId), t.dest, aws.ToTime(u.Initiated).UTC().Format(time.RFC3339))
	}
	return len(ups), nil
}

// progressCounter sums what the parts' readers have read (a part sent
// again, after a retry, counts once).
type progressCounter struct {
	p       *progress
	total   int64
	mu      sync.Mutex
	parts   []*countingSection
	skipped int64
}

func (c *progressCounter) section(f *os.File, off, n int64) *countingSection {
	s := &countingSection{SectionReader: io.NewSectionReader(f, off, n)}
	c.mu.Lock()
	c.parts = append(c.parts, s)
	c.mu.Unlock()
	return s
}

// skip counts a part that is at the store already.
func (c *progressCounter) skip(n int64) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.skipped += n
}

func (c *progressCounter) sum() int64 {
	c.mu.Lock()
	defer c.mu.Unlock()
	n := c.skipped
	for _, s := range c.parts {
		n += s.max.Load()
	}
	return n
}

func (c *progressCounter) run() (stop func()) {
	quit := make(chan struct{})
	var once sync.Once
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		tk := time.NewTicker(200 * time.Millisecond)
		defer tk.Stop()
		for {
			select {
			case <-quit:
				c.p.update(c.sum(), c.total)
				return
			case <-tk.C:
				c.p.update(c.sum(), c.total)
			}
		}
	}()
	return func() { once.Do(func() { close(quit); wg.Wait() }) }
}

// countingSection is a part's body: seekable (the SDK rewinds it to retry)
// and counting the furthest byte read.
type countingSection struct {
	*io.SectionReader
	max atomic.Int64
}

func (s *countingSection) Read(b []byte) (int, error) {
	n, err := s.SectionReader.Read(b)
	pos, _ := s.SectionReader.Seek(0, io.SeekCurrent)
	for {
		m := s.max.Load()
		if pos <= m || s.max.CompareAndSwap(m, pos) {
			break
		}
	}
	return n, err
}

func isCode(err error, codes ...string) bool {
	var ae smithy.APIError
	if !errors.As(err, &ae) {
		return false
	}
	for _, c := range codes {
		if ae.ErrorCode() == c {
			return true
		}
	}
	return false
}

// explain turns a store's refusal into one line that says what to do.
func (t *s3Target) explain(what string, err error) error {
	if errors.Is(err, context.Canceled) {
		return fmt.Errorf("%s: %w", what, context.Canceled)
	}
	var ae smithy.APIError
	if errors.As(err, &ae) {
		code := ae.ErrorCode()
		switch code {
		case "InvalidAccessKeyId", "SignatureDoesNotMatch", "InvalidToken", "ExpiredToken", "InvalidSecurity",
			"XAdminUserNotFound": // versitygw's for an unknown access key
			return fmt.Errorf("%s: the S3 store at %s refused the credentials from %s (%s); nothing was published", what, t.endpoint, t.credSource, code)
		case "AccessDenied", "Forbidden":
			return fmt.Errorf("%s: the S3 store at %s denied these credentials (from %s) access to %s (%s); nothing was published", what, t.endpoint, t.credSource, t.dest, code)
		case "PermanentRedirect", "AuthorizationHeaderMalformed", "IllegalLocationConstraintException":
			return fmt.Errorf("%s: the S3 store at %s says bucket %s is not in region %s (%s: %s): give its region with --region", what, t.endpoint, t.dest.Bucket, t.region, code, ae.ErrorMessage())
		case "PreconditionFailed", "ConditionalRequestConflict":
			return fmt.Errorf("%s: another client wrote %s while this upload ran (%s): it was left as that client wrote it, and nothing of this upload was published", what, t.dest, code)
		case "InsufficientStorage", "XMinioStorageFull", "QuotaExceeded":
			return fmt.Errorf("%s: the S3 store at %s is out of space (%s: %s)", what, t.endpoint, code, ae.ErrorMessage())
		case "NoSuchBucket":
			return fmt.Errorf("%s: bucket %s does not exist at %s; nothing was published", what, t.dest.Bucket, t.endpoint)
		}
		var re *awshttp.ResponseError
		if errors.As(err, &re) && re.HTTPStatusCode() == http.StatusForbidden {
			return fmt.Errorf("%s: the S3 store at %s refused the credentials from %s, or denied them access to %s (HTTP 403 %s); nothing was published", what, t.endpoint, t.credSource, t.dest, code)
		}
		return fmt.Errorf("%s: the S3 store at %s answered %s: %s", what, t.endpoint, code, ae.ErrorMessage())
	}
	var re *awshttp.ResponseError
	if errors.As(err, &re) {
		switch re.HTTPStatusCode() {
		case http.StatusForbidden, http.StatusUnauthorized:
			return fmt.Errorf("%s: the S3 store at %s refused the credentials from %s (HTTP %d); nothing was published", what, t.endpoint, t.credSource, re.HTTPStatusCode())
		}
	}
	if ce := connErr("the S3 store at "+t.endpoint, err); ce != nil {
		return fmt.Errorf("%s: %w", what, ce)
	}
	return fmt.Errorf("%s: %w", what, err)
}
