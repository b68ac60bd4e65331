package cloudimg

import (
	"context"
	"crypto/sha256"
	"crypto/sha512"
	"encoding/hex"
	"errors"
	"fmt"
	"hash"
	"io"
	"net/http"
	"net/url"
	"os"
	"path"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/vbauerster/mpb/v8"
	"github.com/vbauerster/mpb/v8/decor"
	"golang.org/x/sys/unix"

	"github.com/bakeimg/bake/internal/imgfile"
)

// Source is a base image pinned by digest: exactly one of Path and URL, and
// exactly one of SHA256 and SHA512 (hex). It has the shape of the recipe's
// base.image.
type Source struct {
	Path   string
	URL    string
	SHA256 string
	SHA512 string
	// MaxSize is the most bytes a download may have; 0 means
	// DefaultMaxSize. (The recipe declares no size, so builds use the
	// default.)
	MaxSize int64
}

// DefaultMaxSize is the largest base image Fetch downloads: 16 GiB, several
// times any cloud image (Debian's and Ubuntu's are 0.3-1 GiB). A download
// stops as soon as it passes the limit, before the digest is even known.
const DefaultMaxSize = 16 << 30

func (s Source) maxSize() int64 {
	if s.MaxSize > 0 {
		return s.MaxSize
	}
	return DefaultMaxSize
}

// Digest returns the algorithm ("sha256" or "sha512") and the lower-case hex
// digest, after checking that exactly one is set and well-formed.
func (s Source) Digest() (algo, digest string, err error) {
	switch {
	case s.SHA256 != "" && s.SHA512 != "":
		return "", "", errors.New("base image: give one of sha256 and sha512, not both")
	case s.SHA256 != "":
		algo, digest = "sha256", strings.ToLower(s.SHA256)
	case s.SHA512 != "":
		algo, digest = "sha512", strings.ToLower(s.SHA512)
	default:
		return "", "", errors.New("base image: not pinned: a sha256 or sha512 digest is required")
	}
	want := map[string]int{"sha256": 64, "sha512": 128}[algo]
	if _, herr := hex.DecodeString(digest); herr != nil || len(digest) != want {
		return "", "", fmt.Errorf("base image: %q is not a %s digest (%d hex digits)", digest, algo, want)
	}
	return algo, digest, nil
}

func newHash(algo string) hash.Hash {
	if algo == "sha512" {
		return sha512.New()
	}
	return sha256.New()
}

// MismatchError is returned when an image's digest is not the pinned one.
type MismatchError struct {
	Source    string // path or URL
	Algo      string
	Want, Got string
}

func (e *MismatchError) Error() string {
	return fmt.Sprintf("base image %s: %s mismatch: the recipe pins %s but the image has %s; refusing it (nothing was built)",
		e.Source, e.Algo, e.Want, e.Got)
}

// Fetch makes the pinned base image available locally and returns its path,
// having checked its digest before anything else reads it.
//
//   - Path: the file is hashed where it is (opened read-only without
//     blocking, refused unless it is a regular file, never modified) and
//     its own path returned.
//   - URL: the image is downloaded into cacheDir, named by its digest
//     (<algo>-<hex>), so a second build with the same pin downloads nothing
//     (the cached file is hashed again: it is never trusted without the
//     digest). An interrupted download is resumed with an HTTP Range request
//     from the partial file (<name>.part). The download is hashed as it is
//     written and stops at src.MaxSize (DefaultMaxSize); only a file whose
//     digest matches is renamed into place; on a mismatch or an oversized
//     body the partial file is deleted.
//
// progress receives a progress bar (mpb) when it is a terminal and plain
// lines otherwise; nil means silence.
//
// Fetch returns a path, which a later open may find changed; FetchOpen
// builds the Image from the very descriptor that was hashed.
func Fetch(ctx context.Context, src Source, cacheDir string, progress io.Writer) (string, error) {
	f, p, _, err := fetchFile(ctx, src, cacheDir, progress)
	if err != nil {
		return "", err
	}
	f.Close()
	return p, nil
}

// FetchOpen is Fetch followed by Open, on one file descriptor: the bytes
// whose digest was checked (the local file, the cached file, or the
// download as it was written) are the bytes the Image reads; nothing opens
// the path again in between.
func FetchOpen(ctx context.Context, src Source, cacheDir string, progress io.Writer) (*Image, error) {
	f, p, size, err := fetchFile(ctx, src, cacheDir, progress)
	if err != nil {
		return nil, err
	}
	im, err := openFile(ctx, p, f, size)
	if err != nil {
		f.Close()
		return nil, err
	}
	return im, nil
}

// fetchFile returns the open file whose digest matched, its path and size.
func fetchFile(ctx context.Context, src Source, cacheDir string, progress io.Writer) (*os.File, string, int64, error) {
	algo, want, err := src.Digest()
	if err != nil {
		return nil, "", 0, err
	}
	switch {
	case src.Path != "" && src.URL != "":
		return nil, "", 0, errors.New("base image: give one of path and url, not both")
	case src.Path != "":
		f, fi, err := imgfile.OpenRegular(src.Path)
		if err != nil {
			return nil, "", 0, fmt.Errorf("base image: %w", err)
		}
		got, err := hashOpen(ctx, f, fi.Size(), algo, progress, "verifying "+filepath.Base(src.Path))
		if err != nil {
			f.Close()
			return nil, "", 0, fmt.Errorf("base image: %w", err)
		}
		if got != want {
			f.Close()
			return nil, "", 0, &MismatchError{Source: src.Path, Algo: algo, Want: want, Got: got}
		}
		return f, src.Path, fi.Size(), nil
	case src.URL != "":
		return fetchURL(ctx, src.URL, algo, want, src.maxSize(), cacheDir, progress)
	default:
		return nil, "", 0, errors.New("base image: needs a path or a url")
	}
}

// hashOpen hashes size bytes of an open file from its start (by ReadAt: the
// file offset is left alone).
func hashOpen(ctx context.Context, f *os.File, size int64, algo string, progress io.Writer, label string) (string, error) {
	h := newHash(algo)
	pr := newProgress(progress, label, size, 0)
	_, err := io.Copy(h, &ctxReader{ctx: ctx, r: io.TeeReader(io.NewSectionReader(f, 0, size), pr)})
	pr.done(err == nil)
	if err != nil {
		return "", err
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}

// fetchAttempts bounds how often one Fetch resumes after a dropped
// connection.
const fetchAttempts = 4

// TooLargeError is returned when a download is larger than its limit.
type TooLargeError struct {
	Source string
	Limit  int64
	Size   int64 // what the server declared, or -1 when the body ran past the limit
}

func (e *TooLargeError) Error() string {
	if e.Size >= 0 {
		return fmt.Sprintf("base image %s: the server says it is %d bytes, more than the limit of %d bytes (%.1f GiB); refusing it (nothing was downloaded)", e.Source, e.Size, e.Limit, float64(e.Limit)/(1<<30))
	}
	return fmt.Sprintf("base image %s: the download passed the limit of %d bytes (%.1f GiB); stopped and deleted it (nothing was built)", e.Source, e.Limit, float64(e.Limit)/(1<<30))
}

func fetchURL(ctx context.Context, rawURL, algo, want string, maxSize int64, cacheDir string, progress io.Writer) (*os.File, string, int64, error) {
	u, err := url.Parse(rawURL)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return nil, "", 0, fmt.Errorf("base image: %q is not an http(s) URL", rawURL)
	}
	if cacheDir == "" {
		return nil, "", 0, errors.New("base image: a URL needs a cache directory to download into")
	}
	if err := os.MkdirAll(cacheDir, 0o755); err != nil {
		return nil, "", 0, fmt.Errorf("base image: %w", err)
	}
	final := filepath.Join(cacheDir, algo+"-"+want)
	// One download per digest at a time, across processes.
	lock, err := os.OpenFile(final+".lock", os.O_RDWR|os.O_CREATE, 0o644)
	if err != nil {
		return nil, "", 0, fmt.Errorf("base image: %w", err)
	}
	defer lock.Close()
	if err := flockCtx(ctx, lock); err != nil {
		return nil, "", 0, fmt.Errorf("base image: waiting for another download of %s: %w", rawURL, err)
	}

	if f, fi, err := imgfile.OpenRegular(final); err == nil {
		got, err := hashOpen(ctx, f, fi.Size(), algo, progress, "verifying cached "+path.Base(u.Path))
		if err != nil {
			f.Close()
			return nil, "", 0, fmt.Errorf("base image: %w", err)
		}
		if got == want {
			return f, final, fi.Size(), nil
		}
		f.Close()
		// Named by its digest but not matching it: damaged in the cache.
		fmt.Fprintf(orDiscard(progress), "cached %s does not match its digest (%s); downloading again\n", final, got)
		if err := os.Remove(final); err != nil {
			return nil, "", 0, fmt.Errorf("base image: %w", err)
		}
	} else if _, serr := os.Lstat(final); serr == nil {
		// There, but not a regular file: never read, never trusted.
		return nil, "", 0, fmt.Errorf("base image: cached %w; remove it", err)
	}

	part := final + ".part"
	var lastErr error
	for attempt := 1; attempt <= fetchAttempts; attempt++ {
		if err := ctx.Err(); err != nil {
			return nil, "", 0, err
		}
		f, got, err := downloadOnce(ctx, rawURL, part, algo, maxSize, progress, path.Base(u.Path))
		if err != nil {
			lastErr = err
			var perm *permanentError
			var big *TooLargeError
			if errors.As(err, &big) {
				os.Remove(part)
				return nil, "", 0, err
			}
			if errors.As(err, &perm) || ctx.Err() != nil {
				break
			}
			fmt.Fprintf(orDiscard(progress), "download of %s interrupted (%v); resuming\n", rawURL, err)
			time.Sleep(time.Duration(attempt) * 500 * time.Millisecond)
			continue
		}
		if f == nil {
			continue
		}
		if got != want {
			f.Close()
			os.Remove(part)
			return nil, "", 0, &MismatchError{Source: rawURL, Algo: algo, Want: want, Got: got}
		}
		fi, err := f.Stat()
		if err == nil {
			err = os.Rename(part, final)
		}
		if err != nil {
			f.Close()
			return nil, "", 0, fmt.Errorf("base image: %w", err)
		}
		return f, final, fi.Size(), nil
	}
	if ctx.Err() != nil {
		return nil, "", 0, ctx.Err()
	}
	return nil, "", 0, fmt.Errorf("base image: downloading %s: %w (the partial download is kept and resumed next time)", rawURL, lastErr)
}

type permanentError struct{ err error }

func (e *permanentError) Error() string { return e.err.Error() }

var httpClient = &http.Client{
	Transport: &http.Transport{
		Proxy:                 http.ProxyFromEnvironment,
		ResponseHeaderTimeout: 60 * time.Second,
		TLSHandshakeTimeout:   30 * time.Second,
		IdleConnTimeout:       30 * time.Second,
	},
}

// downloadOnce appends to part from where it ends, or starts over when the
// server ignores the Range, hashing the file's bytes as they are written
// (a resumed download's first part is hashed from the file). When the body
// was read to its end it returns the part file, still open, and its
// digest; f is nil when another attempt is needed. A body (or a declared
// size) above maxSize ends it with a *TooLargeError.
func downloadOnce(ctx context.Context, rawURL, part, algo string, maxSize int64, progress io.Writer, label string) (_ *os.File, _ string, err error) {
	f, err := os.OpenFile(part, os.O_RDWR|os.O_CREATE|unix.O_NOFOLLOW|unix.O_NONBLOCK, 0o644)
	if err != nil {
		return nil, "", &permanentError{err}
	}
	done := false
	defer func() {
		if !done {
			f.Close()
		}
	}()
	if fi, err := f.Stat(); err != nil {
		return nil, "", &permanentError{err}
	} else if !fi.Mode().IsRegular() {
		return nil, "", &permanentError{fmt.Errorf("%s is not a regular file", part)}
	}
	have, err := f.Seek(0, io.SeekEnd)
	if err != nil {
		return nil, "", &permanentError{err}
	}
	if have > maxSize {
		return nil, "", &TooLargeError{Source: rawURL, Limit: maxSize, Size: -1}
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, rawURL, nil)
	if err != nil {
		return nil, "", &permanentError{err}
	}
	if have > 0 {
		req.Header.Set("Range", "bytes="+strconv.FormatInt(have, 10)+"-")
	}
	resp, err := httpClient.Do(req)
	if err != nil {
		return nil, "", err
	}
	defer resp.Body.Close()
	h := newHash(algo)
	// hashHave hashes the bytes already in the file (resuming).
	hashHave := func() error {
		_, err := io.Copy(h, &ctxReader{ctx: ctx, r: io.NewSectionReader(f, 0, have)})
		return err
	}
	finish := func() (*os.File, string, error) {
		done = true
		return f, hex.EncodeToString(h.Sum(nil)), nil
	}
	total := int64(-1)
	switch {
	case resp.StatusCode == http.StatusPartialContent && have > 0:
		start, size, ok := parseContentRange(resp.Header.Get("Content-Range"))
		if !ok || start != have {
			// Not the range asked for: start over.
			if err := f.Truncate(0); err != nil {
				return nil, "", &permanentError{err}
			}
			return nil, "", fmt.Errorf("server answered range %q for bytes=%d-", resp.Header.Get("Content-Range"), have)
		}
		total = size
		if err := hashHave(); err != nil {
			return nil, "", err
		}
	case resp.StatusCode == http.StatusRequestedRangeNotSatisfiable && have > 0:
		// The partial file is already whole (or longer than the image):
		// let the digest decide, and start over if it does not match.
		if _, size, ok := parseContentRange(resp.Header.Get("Content-Range")); ok && size == have {
			if err := hashHave(); err != nil {
				return nil, "", err
			}
			return finish()
		}
		return nil, "", f.Truncate(0)
	case resp.StatusCode == http.StatusOK:
		if have > 0 {
			if err := f.Truncate(0); err != nil {
				return nil, "", &permanentError{err}
			}
			if _, err := f.Seek(0, io.SeekStart); err != nil {
				return nil, "", &permanentError{err}
			}
			have = 0
		}
		total = resp.ContentLength
	default:
		err := fmt.Errorf("HTTP %s", resp.Status)
		if resp.StatusCode >= 400 && resp.StatusCode < 500 {
			return nil, "", &permanentError{err}
		}
		return nil, "", err
	}
	if total > maxSize {
		return nil, "", &TooLargeError{Source: rawURL, Limit: maxSize, Size: total}
	}
	pr := newProgress(progress, "downloading "+label, total, have)
	// One byte more than allowed tells an oversized body from one that
	// ends exactly at the limit.
	body := io.LimitReader(resp.Body, maxSize-have+1)
	n, err := io.Copy(io.MultiWriter(f, h), io.TeeReader(body, pr))
	pr.done(err == nil)
	if err != nil {
		return nil, "", err
	}
	if have+n > maxSize {
		return nil, "", &TooLargeError{Source: rawURL, Limit: maxSize, Size: -1}
	}
	if total >= 0 && have+n != total {
		return nil, "", fmt.Errorf("got %d of %d bytes", have+n, total)
	}
	if err := f.Sync(); err != nil {
		return nil, "", &permanentError{err}
	}
	return finish()
}

// parseContentRange parses "bytes START-END/SIZE" (or "bytes */SIZE").
func parseContentRange(s string) (start, size int64, ok bool) {
	s, found := strings.CutPrefix(s, "bytes ")
	if !found {
		return 0, 0, false
	}
	rng, sz, found := strings.Cut(s, "/")
	if !found {
		return 0, 0, false
	}
	size, err := strconv.ParseInt(sz, 10, 64)
	if err != nil {
		size = -1
	}
	if rng == "*" {
		return -1, size, err == nil
	}
	a, _, found := strings.Cut(rng, "-")
	if !found {
		return 0, 0, false
	}
	start, err = strconv.ParseInt(a, 10, 64)
	return start, size, err == nil
}

func flockCtx(ctx context.Context, f *os.File) error {
	for {
		err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB)
		if err == nil {
			return nil
		}
		if !errors.Is(err, syscall.EWOULDBLOCK) {
			return err
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(200 * time.Millisecond):
		}
	}
}

type ctxReader struct {
	ctx context.Context
	r   io.Reader
}

func (c *ctxReader) Read(p []byte) (int, error) {
	if err := c.ctx.Err(); err != nil {
		return 0, err
	}
	return c.r.Read(p)
}

func orDiscard(w io.Writer) io.Writer {
	if w == nil {
		return io.Discard
	}
	return w
}

// isTerminal says whether w is a terminal (progress bars) or not (lines).
func isTerminal(w io.Writer) bool {
	f, ok := w.(*os.File)
	if !ok {
		return false
	}
	_, err := unix.IoctlGetTermios(int(f.Fd()), unix.TCGETS)
	return err == nil
}

// progressWriter counts bytes written to it (as the second half of a
// TeeReader) and shows them.
type progressWriter interface {
	io.Writer
	done(ok bool)
}

func newProgress(w io.Writer, label string, total, start int64) progressWriter {
	if w == nil || label == "" {
		return nopProgress{}
	}
	if isTerminal(w) {
		p := mpb.New(mpb.WithOutput(w), mpb.WithWidth(40), mpb.WithRefreshRate(150*time.Millisecond))
		bar := p.AddBar(max(total, 0),
			mpb.PrependDecorators(decor.Name(label+" "), decor.CountersKibiByte("% .1f / % .1f")),
			mpb.AppendDecorators(decor.Percentage(decor.WC{W: 5}), decor.Name(" "), decor.AverageSpeed(decor.SizeB1024(0), "% .1f")),
		)
		bar.SetCurrent(start)
		return &barProgress{p: p, bar: bar}
	}
	lp := &lineProgress{w: w, label: label, total: total, n: start, last: time.Now()}
	fmt.Fprintf(w, "%s: %s\n", label, lp.counts())
	return lp
}

type nopProgress struct{}

func (nopProgress) Write(p []byte) (int, error) { return len(p), nil }
func (nopProgress) done(bool)                   {}

type barProgress struct {
	p   *mpb.Progress
	bar *mpb.Bar
}

func (b *barProgress) Write(p []byte) (int, error) {
	b.bar.IncrInt64(int64(len(p)))
	return len(p), nil
}

func (b *barProgress) done(ok bool) {
	if ok {
		b.bar.SetTotal(-1, true)
	} else {
		b.bar.Abort(false)
	}
	b.p.Wait()
}

// lineProgress prints a line every 10% (or every 5 s with no known size).
type lineProgress struct {
	w         io.Writer
	label     string
	total, n  int64
	lastDecil int64
	last      time.Time
}

func (l *lineProgress) counts() string {
	if l.total > 0 {
		return fmt.Sprintf("%.1f of %.1f MiB (%d%%)", float64(l.n)/(1<<20), float64(l.total)/(1<<20), l.n*100/l.total)
	}
	return fmt.Sprintf("%.1f MiB", float64(l.n)/(1<<20))
}

func (l *lineProgress) Write(p []byte) (int, error) {
	l.n += int64(len(p))
	if l.total > 0 {
		if d := l.n * 10 / l.total; d > l.lastDecil && d < 10 {
			l.lastDecil = d
			fmt.Fprintf(l.w, "%s: %s\n", l.label, l.counts())
		}
	} else if time.Since(l.last) > 5*time.Second {
		l.last = time.Now()
		fmt.Fprintf(l.w, "%s: %s\n", l.label, l.counts())
	}
	return len(p), nil
}

func (l *lineProgress) done(ok bool) {
	if ok {
		fmt.Fprintf(l.w, "%s: done, %s\n", l.label, l.counts())
	} else {
		fmt.Fprintf(l.w, "%s: stopped at %s\n", l.label, l.counts())
	}
}
