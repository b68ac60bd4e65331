package verify

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"regexp"
	"sort"
	"strings"
	"sync"
	"sync/atomic"

	"github.com/bakeimg/bake/internal/imgfile"
)

// ChunkSize is how much the scanner reads at a time. A secret that
// straddles two chunks is still found: each chunk is scanned together with
// the tail of the previous one (Rule.MaxLen bytes).
const ChunkSize = 1 << 20

// Rule is one kind of secret. A match starts with Literal (found with a
// fast substring search) and then must match Pattern (anchored there,
// over at most MaxLen bytes), so that a program that merely contains the
// words (ssh-keygen holds "-----BEGIN OPENSSH PRIVATE KEY-----") is not a
// finding; only a key with its body is.
type Rule struct {
	Name    string
	Literal []byte
	Pattern *regexp.Regexp // must start with ^
	MaxLen  int
	// Show is how many bytes of a match the report may show (the rest is
	// redacted).
	Show int
	// Before, when set, lists the bytes that may precede a match (a match
	// at the very start of a stream always may): "_auth=" is an .npmrc
	// setting at the start of a line or after "//host/:", not the end of
	// a program's "proxy_auth = ...".
	Before string
	// Near, when set, must appear within the first 64 bytes of a match: a
	// cheap test before the pattern (most "-----BEGIN " are certificates).
	Near []byte
	// Valid, when set, must accept the match (e.g. the random part of a
	// token mixes upper case, lower case and digits; words do not).
	Valid func(match []byte) bool
	// InBinary: a match preceded by a NUL byte and not at the start of a
	// 512-byte block is a constant in a program's data (GnuTLS carries
	// self-test keys, OpenSSH its key format's header), not a file or a
	// line of text someone left behind; it is listed as Embedded, not
	// reported as a finding.
	InBinary bool
}

// DefaultRules are the secrets no image may carry: private keys (PEM,
// OpenSSH, PGP, GnuPG's key store), Tailscale auth keys, npm credentials,
// GitHub tokens.
func DefaultRules() []Rule {
	b64 := `[A-Za-z0-9+/=]`
	nl := `(?:\r?\n|(?:\\r)?\\n)` // a newline, or its escape in JSON or YAML
	return []Rule{
		{Name: "private-key", Literal: []byte("-----BEGIN "),
			Pattern: regexp.MustCompile(`^-----BEGIN (?:[A-Z0-9]+ ){0,3}PRIVATE KEY(?: BLOCK)?-----` + nl + `(?:[A-Za-z-]{1,40}: [^\r\n\\]{0,100}` + nl + `){0,4}(?:` + nl + `)?` + b64 + `{48}`),
			MaxLen:  1024, Show: 40, InBinary: true, Near: []byte("PRIVATE KEY")},
		// GnuPG's key store (private-keys-v1.d): the canonical
		// S-expression, "(21:protected-private-key(3:rsa(1:n257:...", and
		// the extended format, "Key: (protected-private-key (rsa (n #...".
		// gpg-agent itself holds "(21:protected-private-key(" alone.
		{Name: "gnupg-private-key", Literal: []byte("(11:private-key("), Pattern: regexp.MustCompile(`^\(11:private-key\(\d{1,2}:[a-z0-9-]{2,12}\(\d{1,3}:`), MaxLen: 64, Show: 16, InBinary: true},
		{Name: "gnupg-private-key", Literal: []byte("(21:protected-private-key("), Pattern: regexp.MustCompile(`^\(21:protected-private-key\(\d{1,2}:[a-z0-9-]{2,12}\(\d{1,3}:`), MaxLen: 64, Show: 26, InBinary: true},
		{Name: "gnupg-private-key", Literal: []byte("Key: ("), Pattern: regexp.MustCompile(`^Key: \((?:protected-)?private-key \([a-z0-9-]{2,12} \([a-z]{1,5} #[0-9A-Fa-f]{16}`), MaxLen: 100, Show: 30, InBinary: true},
		{Name: "tailscale-auth-key", Literal: []byte("tskey-"),
			Pattern: regexp.MustCompile(`^tskey-(?:(?:auth|client|api|scim|webhook)-)?[A-Za-z0-9]{6,40}-[A-Za-z0-9]{20,128}`),
			MaxLen:  200, Show: 12, Valid: randomTail},
		{Name: "npm-auth-token", Literal: []byte("_auth"),
			Pattern: regexp.MustCompile(`^_auth(?:Token)?[ \t]*=[ \t]*["']?[A-Za-z0-9+/=._~-]{8,300}(?:["'\s]|$)`),
			MaxLen:  340, Show: 12, Before: ":\n\r \t\"'"},
		{Name: "npm-token", Literal: []byte("npm_"), Pattern: regexp.MustCompile(`^npm_[A-Za-z0-9]{36}(?:[^A-Za-z0-9_]|$)`), MaxLen: 41, Show: 8},
		{Name: "github-token", Literal: []byte("ghp_"), Pattern: regexp.MustCompile(`^ghp_[A-Za-z0-9]{36}(?:[^A-Za-z0-9_]|$)`), MaxLen: 41, Show: 8},
		{Name: "github-token", Literal: []byte("gho_"), Pattern: regexp.MustCompile(`^gho_[A-Za-z0-9]{36}(?:[^A-Za-z0-9_]|$)`), MaxLen: 41, Show: 8},
		{Name: "github-token", Literal: []byte("ghs_"), Pattern: regexp.MustCompile(`^ghs_[A-Za-z0-9]{36}(?:[^A-Za-z0-9_]|$)`), MaxLen: 41, Show: 8},
		{Name: "github-token", Literal: []byte("github_pat_"), Pattern: regexp.MustCompile(`^github_pat_[A-Za-z0-9_]{60,100}`), MaxLen: 112, Show: 14},
	}
}

// randomTail: the part after the last '-' looks random (upper and lower
// case letters and digits), as the secret part of a Tailscale key does. A
// Go program's packed string table holds "tskey-client-" right before
// words such as "tailscale-clipreauthorized", which do not.
func randomTail(m []byte) bool {
	tail := m[bytes.LastIndexByte(m, '-')+1:]
	var up, low, dig bool
	for _, c := range tail {
		switch {
		case c >= 'A' && c <= 'Z':
			up = true
		case c >= 'a' && c <= 'z':
			low = true
		case c >= '0' && c <= '9':
			dig = true
		}
	}
	return up && low && dig
}

// NeedleRule makes a rule for one exact secret known in advance (a token
// or key written literally in the recipe, the build's throwaway material).
func NeedleRule(name, secret string) Rule {
	return Rule{Name: name, Literal: []byte(secret), Pattern: regexp.MustCompile("^" + regexp.QuoteMeta(secret)), MaxLen: len(secret), Show: min(6, len(secret)/4)}
}

// Finding is one secret found.
type Finding struct {
	Rule string `json:"rule"`
	// Where: "disk+0x1a2b000" for bytes of the raw disk,
	// "disk+0x1a2b000/gzip+0x5c3" for bytes inside a compressed stream
	// that starts at that disk offset.
	Where   string `json:"where"`
	Excerpt string `json:"excerpt"` // redacted
}

// Stream is a compressed stream the scanner decoded.
type Stream struct {
	Where    string `json:"where"`
	Kind     string `json:"kind"` // gzip, zstd, xz, bzip2 or lz4
	Size     int64  `json:"size"` // decompressed bytes scanned
	Complete bool   `json:"complete"`
	Err      string `json:"error,omitempty"`
	// Unscanned says why the scan stopped reading a stream that went on
	// (a bound): such a stream fails the check.
	Unscanned string `json:"unscanned,omitempty"`
	// SHA256 of the decompressed bytes: for an OCI layer, its diff ID.
	SHA256 string `json:"sha256,omitempty"`
	// Note qualifies the stream (x86 BCJ not undone, a legacy lz4 frame
	// with no end mark): no digest of its content then.
	Note string `json:"note,omitempty"`
}

// ScanStats sums up a scan.
type ScanStats struct {
	RawBytes    int64    `json:"raw_bytes"`    // bytes of the disk scanned (holes skipped: they are zeros)
	Streams     int      `json:"streams"`      // compressed streams decoded
	StreamBytes int64    `json:"stream_bytes"` // decompressed bytes scanned
	Complete    int      `json:"complete"`     // streams decoded to their verified end
	Large       []Stream `json:"large"`        // streams of at least LargeStream bytes
	// Cut: streams that stopped decoding before their end (the data
	// ends, or is not theirs any more: a deleted or fragmented file),
	// scanned as far as they decode; CutShort lists the largest.
	Cut      int      `json:"cut"`
	CutShort []Stream `json:"cut_short,omitempty"`
	// NotStreams: magic numbers at a block boundary that did not decode
	// (random bytes).
	NotStreams int `json:"not_streams"`
	// DictFrames: zstd frame headers naming a dictionary (which the scan
	// does not have; random bytes after the magic name one 3 times in 4).
	DictFrames int `json:"dict_frames"`
	// AfterBound: candidate streams not decoded because MaxTotalBytes
	// was used up before them. Any fails the check.
	AfterBound int `json:"after_bound"`
	// Unscanned: streams the scan stopped reading at a bound, or did not
	// decode (too many at once, a window over the bound, nested too
	// deep); the first maxListed, sorted by location. Any fails the check.
	Unscanned      []Stream `json:"unscanned,omitempty"`
	UnscannedCount int      `json:"unscanned_count"`
	Findings       int      `json:"findings"` // total, including those not listed
	// Embedded are matches inside program data (Rule.InBinary), listed
	// for the record (at most 20) and not findings.
	Embedded      []string `json:"embedded,omitempty"`
	EmbeddedCount int      `json:"embedded_count"`
	Dropped       int      `json:"dropped"`        // candidate streams not decoded (too many at once): also in Unscanned
	MaxDepthSeen  int      `json:"max_depth_seen"` // deepest nesting decoded
	PeakMemory    int64    `json:"peak_memory"`    // decoder memory reserved at once, at most
}

// LargeStream is the size from which a decoded stream is listed by itself
// in the stats (container layers, initramfs).
const LargeStream = 1 << 20

// maxListed bounds the streams the stats list (Unscanned, CutShort).
const maxListed = 50

// Scanner finds secrets in bytes, and in every gzip, zstd, xz, bzip2 or
// lz4 stream that starts on a 512-byte boundary of them (nested up to
// MaxDepth): container layers, compressed files, deleted ones in free
// blocks too. A stream it had to stop reading (a bound) is listed in
// ScanStats.Unscanned; zero values of the bounds are the defaults.
type Scanner struct {
	Rules []Rule
	// MaxDepth of nested compressed streams (a gzip'd tar in a layer is
	// depth 2). Default DefaultMaxDepth.
	MaxDepth int
	// MaxActive bounds the streams decoded at once; a candidate beyond it
	// is not decoded (ScanStats.Dropped, Unscanned). Default 64.
	MaxActive int
	// MaxFindings listed (all are counted). Default 100.
	MaxFindings int
	// MaxStreamBytes: decompressed bytes scanned of one stream.
	MaxStreamBytes int64
	// MaxTotalBytes: decompressed bytes scanned of all streams.
	MaxTotalBytes int64
	// MaxWindow: a stream's decoder history (zstd window, xz dictionary).
	MaxWindow int64
	// MaxMemory: decoder memory the streams decoded at once may reserve.
	MaxMemory int64

	mu       sync.Mutex
	findings []Finding
	stats    ScanStats
	seen     map[string]bool
	active   int
	memory   int64             // reserved by the streams being decoded
	used     atomic.Int64      // of MaxTotalBytes
	bufs     sync.Pool         // scan buffers
	located  map[string]string // Finding.Where -> where on the disk (locate)
}

// NewScanner returns a scanner with DefaultRules plus extra.
func NewScanner(extra ...Rule) *Scanner {
	return &Scanner{Rules: append(DefaultRules(), extra...)}
}

func (s *Scanner) init() {
	if s.MaxDepth == 0 {
		s.MaxDepth = DefaultMaxDepth
	}
	if s.MaxActive == 0 {
		s.MaxActive = DefaultMaxActive
	}
	if s.MaxStreamBytes == 0 {
		s.MaxStreamBytes = DefaultMaxStreamBytes
	}
	if s.MaxTotalBytes == 0 {
		s.MaxTotalBytes = DefaultMaxTotalBytes
	}
	if s.MaxWindow == 0 {
		s.MaxWindow = DefaultMaxWindow
	}
	if s.MaxMemory == 0 {
		s.MaxMemory = DefaultMaxMemory
	}
	if s.MaxFindings == 0 {
		s.MaxFindings = 100
	}
	if s.seen == nil {
		s.seen = map[string]bool{}
	}
}

// Findings returns what was found so far, sorted by location.
func (s *Scanner) Findings() []Finding {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := append([]Finding(nil), s.findings...)
	sort.SliceStable(out, func(i, j int) bool { return out[i].Where < out[j].Where })
	return out
}

// Stats returns the scan's statistics.
func (s *Scanner) Stats() ScanStats {
	s.mu.Lock()
	defer s.mu.Unlock()
	st := s.stats
	st.Large = append([]Stream(nil), s.stats.Large...)
	st.Embedded = append([]string(nil), s.stats.Embedded...)
	st.Unscanned = append([]Stream(nil), s.stats.Unscanned...)
	st.CutShort = append([]Stream(nil), s.stats.CutShort...)
	byWhere := func(l []Stream) {
		sort.Slice(l, func(i, j int) bool { return l[i].Where < l[j].Where })
	}
	byWhere(st.Large)
	byWhere(st.Unscanned)
	sort.Slice(st.CutShort, func(i, j int) bool { return st.CutShort[i].Size > st.CutShort[j].Size })
	return st
}

func (s *Scanner) maxLen() int {
	m := 0
	for _, r := range s.Rules {
		if r.MaxLen > m {
			m = r.MaxLen
		}
	}
	return m
}

// ScanReader scans r as one stream; where names it in findings and base is
// the offset of its first byte.
func (s *Scanner) ScanReader(ctx context.Context, r io.Reader, where string, base int64) error {
	s.init()
	_, err := s.scan(ctx, r, where, base, 0, func(n int) {
		s.mu.Lock()
		s.stats.RawBytes += int64(n)
		s.mu.Unlock()
	})
	return err
}

// scan reads r in chunks and looks for every rule in each chunk (with the
// previous chunk's tail), and for compressed streams at 512-byte aligned
// offsets, which it decodes concurrently, fed from this same pass.
func (s *Scanner) scan(ctx context.Context, r io.Reader, where string, base int64, depth int, count func(int)) (int64, error) {
	keep := s.maxLen()
	// Buffers are reused: most candidate streams are a few KiB or not
	// streams at all, and zeroing a fresh MiB for each cost more than
	// decoding them.
	bp, _ := s.bufs.Get().(*[]byte)
	if bp == nil || len(*bp) != keep+ChunkSize {
		b := make([]byte, keep+ChunkSize)
		bp = &b
	}
	defer s.bufs.Put(bp)
	buf := *bp
	carry := 0    // bytes of the previous chunk kept at buf[:carry]
	var off int64 // stream offset of buf[carry]
	var nested []*nestedStream
	var wg sync.WaitGroup
	defer func() {
		for _, n := range nested {
			n.pw.Close()
		}
		wg.Wait()
	}()
	for {
		if err := ctx.Err(); err != nil {
			return off, err
		}
		n, rerr := io.ReadFull(r, buf[carry:carry+ChunkSize])
		data := buf[carry : carry+n]
		if n > 0 {
			count(n)
			// Feed the streams already being decoded; drop finished ones.
			live := nested[:0]
			for _, ns := range nested {
				if _, err := ns.pw.Write(data); err == nil {
					live = append(live, ns)
				}
			}
			nested = live
			// New streams starting in this chunk (one level deeper than
			// the bound only to report them).
			if depth <= s.MaxDepth {
				first := (off + 511) &^ 511
				for p := first; p+4 <= off+int64(n); p += 512 {
					i := int(p - off)
					kind := magic(data[i:])
					if kind == "" {
						continue
					}
					if s.used.Load() >= s.MaxTotalBytes {
						s.mu.Lock()
						s.stats.AfterBound++
						s.mu.Unlock()
						continue
					}
					ns, ok := s.startNested(ctx, &wg, kind, fmt.Sprintf("%s+%#x/%s", where, base+p, kind), depth+1)
					if !ok {
						continue
					}
					if _, err := ns.pw.Write(data[i:]); err == nil {
						nested = append(nested, ns)
					}
				}
			}
			s.match(buf[:carry+n], carry, where, base+off-int64(carry))
			off += int64(n)
			// Keep the tail for matches that straddle the boundary.
			total := carry + n
			k := min(keep, total)
			copy(buf, buf[total-k:total])
			carry = k
		}
		if rerr == io.EOF || rerr == io.ErrUnexpectedEOF {
			return off, nil
		}
		if rerr != nil {
			return off, rerr
		}
	}
}

// match runs every rule over b. Matches lying wholly in b[:fresh] were
// reported with the previous chunk; start is the offset of b[0].
func (s *Scanner) match(b []byte, fresh int, where string, start int64) {
	for _, r := range s.Rules {
		from := 0
		for {
			i := bytes.Index(b[from:], r.Literal)
			if i < 0 {
				break
			}
			i += from
			from = i + 1
			at := start + int64(i)
			var prev byte = '\n'
			if i > 0 {
				prev = b[i-1]
			} else if at > 0 {
				prev = 0xff // unknown: never at a chunk's start (carry)
			}
			if r.Before != "" && at > 0 && strings.IndexByte(r.Before, prev) < 0 {
				continue
			}
			end := min(len(b), i+r.MaxLen)
			if r.Near != nil && !bytes.Contains(b[i:min(end, i+64)], r.Near) {
				continue
			}
			loc := r.Pattern.FindIndex(b[i:end])
			if loc == nil || (r.Valid != nil && !r.Valid(b[i:i+loc[1]])) {
				continue
			}
			if i+loc[1] <= fresh {
				continue // seen with the previous chunk
			}
			if r.InBinary && prev == 0 && at%512 != 0 {
				s.embedded(r, where, at)
				continue
			}
			s.report(r, where, at, b[i:i+loc[1]])
		}
	}
}

func (s *Scanner) report(r Rule, where string, at int64, m []byte) {
	key := fmt.Sprintf("%s+%#x", where, at)
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.seen[key+r.Name] {
		return
	}
	s.seen[key+r.Name] = true
	s.stats.Findings++
	if len(s.findings) >= s.MaxFindings {
		return
	}
	show := min(r.Show, len(m))
	ex := strings.ToValidUTF8(string(m[:show]), "?")
	ex = strings.NewReplacer("\r", "\\r", "\n", "\\n").Replace(ex)
	s.findings = append(s.findings, Finding{Rule: r.Name, Where: key, Excerpt: ex + fmt.Sprintf("...[%d bytes redacted]", len(m)-show)})
}

func (s *Scanner) embedded(r Rule, where string, at int64) {
	s.mu.Lock()
	defer s.mu.Unlock()
	key := fmt.Sprintf("%s+%#x", where, at)
	if s.seen[key+r.Name] {
		return
	}
	s.seen[key+r.Name] = true
	s.stats.EmbeddedCount++
	if len(s.stats.Embedded) < 20 {
		s.stats.Embedded = append(s.stats.Embedded, r.Name+"@"+key)
	}
}

type nestedStream struct {
	pw *io.PipeWriter
}

// startNested decodes a stream fed through a pipe in a goroutine of its
// own, scanning what comes out (and streams nested in it).
func (s *Scanner) startNested(ctx context.Context, wg *sync.WaitGroup, kind, where string, depth int) (*nestedStream, bool) {
	s.mu.Lock()
	if s.active >= s.MaxActive {
		s.stats.Dropped++
		s.unscannedLocked(Stream{Where: where, Kind: kind,
			Unscanned: fmt.Sprintf("not decoded: %d streams were being decoded at once (the bound)", s.MaxActive)})
		s.mu.Unlock()
		return nil, false
	}
	s.active++
	s.mu.Unlock()
	pr, pw := io.Pipe()
	wg.Add(1)
	go func() {
		defer wg.Done()
		st := s.decode(ctx, pr, kind, where, depth)
		s.record(st, depth)
		// Stop the feeder: it sees an error on its next write (after the
		// stream is counted and its slot given back).
		pr.CloseWithError(errStreamDone)
	}()
	return &nestedStream{pw: pw}, true
}

var errStreamDone = errors.New("stream decoded")

// record counts a decoded stream and gives its slot back.
func (s *Scanner) record(st Stream, depth int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.active--
	if st.Unscanned != "" {
		s.unscannedLocked(st)
	}
	if st.Size == 0 && !st.Complete {
		switch {
		case st.Unscanned != "":
		case st.Err == errZstdDict.Error():
			s.stats.DictFrames++
		default:
			s.stats.NotStreams++ // a chance match of the magic
		}
		return
	}
	s.stats.Streams++
	s.stats.StreamBytes += st.Size
	switch {
	case st.Complete:
		s.stats.Complete++
	case st.Unscanned == "":
		s.stats.Cut++
		if len(s.stats.CutShort) < maxListed {
			s.stats.CutShort = append(s.stats.CutShort, st)
		} else if i := smallest(s.stats.CutShort); s.stats.CutShort[i].Size < st.Size {
			s.stats.CutShort[i] = st
		}
	}
	if depth > s.stats.MaxDepthSeen {
		s.stats.MaxDepthSeen = depth
	}
	if st.Size >= LargeStream {
		s.stats.Large = append(s.stats.Large, st)
	}
}

func (s *Scanner) unscannedLocked(st Stream) {
	s.stats.UnscannedCount++
	if len(s.stats.Unscanned) < maxListed {
		s.stats.Unscanned = append(s.stats.Unscanned, st)
	}
}

func smallest(l []Stream) int {
	m := 0
	for i := range l {
		if l[i].Size < l[m].Size {
			m = i
		}
	}
	return m
}

// errReader turns a decoder's errors other than EOF into decodeErr, so
// scan stops and reports them, and EOF ends the scan normally.
type errReader struct{ r io.Reader }

type decodeErr struct{ err error }

func (e *decodeErr) Error() string { return e.err.Error() }

func (e *errReader) Read(p []byte) (int, error) {
	n, err := e.r.Read(p)
	if err != nil && err != io.EOF {
		return n, &decodeErr{err}
	}
	return n, err
}

// ScanFile scans a raw disk image: only its data extents (holes are zeros
// and cannot hold a secret), and the compressed streams in them.
func (s *Scanner) ScanFile(ctx context.Context, path string) error {
	return s.ScanFileRanges(ctx, path, nil)
}

// ScanFileRanges is ScanFile of the data extents inside the byte ranges
// within ([start, end), sorted, not overlapping); nil is the whole file.
func (s *Scanner) ScanFileRanges(ctx context.Context, path string, within [][2]int64) error {
	s.init()
	f, st, err := imgfile.OpenRegular(path)
	if err != nil {
		return err
	}
	defer f.Close()
	extents, err := imgfile.DataExtents(ctx, f, st.Size())
	if err != nil {
		return err
	}
	if within != nil {
		extents = clipExtents(extents, within)
	}
	for _, e := range extents {
		sr := io.NewSectionReader(f, e[0], e[1]-e[0])
		// Each extent is its own stream: offsets stay disk offsets.
		if _, err := s.scan(ctx, sr, "disk", e[0], 0, func(n int) {
			s.mu.Lock()
			s.stats.RawBytes += int64(n)
			s.mu.Unlock()
		}); err != nil {
			return err
		}
	}
	return nil
}

// clipExtents is the parts of extents inside the ranges within (both
// [start, end), sorted).
func clipExtents(extents, within [][2]int64) [][2]int64 {
	var out [][2]int64
	for _, e := range extents {
		for _, w := range within {
			if a, b := max(e[0], w[0]), min(e[1], w[1]); a < b {
				out = append(out, [2]int64{a, b})
			}
		}
	}
	return out
}

// verdict is the secrets.disk result of a finished scan: Fail when it
// found a secret or could not read a stream to its end (a bound, a
// window over the bound, nesting too deep, too many streams at once),
// naming each; Pass otherwise, with what was scanned.
func (s *Scanner) verdict() (Status, string) {
	st := s.Stats()
	var problems, ev evidence
	if st.Findings > 0 {
		// The first few by name and place, so that the summary line says
		// what to remove and from where.
		var first []string
		for i, f := range s.Findings() {
			if i == 3 {
				first = append(first, "...")
				break
			}
			first = append(first, f.Rule+" at "+f.Where+s.locatedWord(f))
		}
		problems.add("%d secret(s) in the image: %s", st.Findings, strings.Join(first, "; "))
	}
	if st.UnscannedCount > 0 || st.AfterBound > 0 {
		problems.add("%d compressed stream(s) not scanned to their end, so the image is not proven free of secrets:", st.UnscannedCount+st.AfterBound)
		for _, u := range st.Unscanned {
			problems.add("  %s %s: %s", u.Kind, u.Where, u.Unscanned)
		}
		if st.UnscannedCount > len(st.Unscanned) {
			problems.add("  ... and %d more", st.UnscannedCount-len(st.Unscanned))
		}
		if st.AfterBound > 0 {
			problems.add("  %d candidate stream(s) after the bound on decompressed bytes for the whole scan (%s) was used up: not decoded", st.AfterBound, iec(s.MaxTotalBytes))
		}
	}
	for _, f := range s.Findings() {
		ev.add("FOUND %s at %s%s: %s", f.Rule, f.Where, s.locatedWord(f), f.Excerpt)
	}
	if st.Findings > len(s.Findings()) {
		ev.add("... and %d more", st.Findings-len(s.Findings()))
	}
	ev.add("scanned %d MiB of disk data (holes skipped: zeros) and %d compressed streams (gzip, zstd, xz, bzip2, lz4) starting on 512-byte boundaries, nested up to %d deep (%d MiB decompressed; %d decoded to their verified end, %d cut short: deleted or fragmented data, or the data ends, scanned as far as it decodes)",
		st.RawBytes>>20, st.Streams, s.MaxDepth, st.StreamBytes>>20, st.Complete, st.Cut)
	for i, c := range st.CutShort {
		if i == 5 {
			break
		}
		ev.add("  cut short: %s %s after %s: %s", c.Kind, c.Where, iec(c.Size), c.Err)
	}
	if st.NotStreams > 0 {
		ev.add("%d magic numbers at block boundaries were not streams (they did not decode)", st.NotStreams)
	}
	if st.DictFrames > 0 {
		ev.add("%d zstd frame headers name a dictionary, which the scan does not have (random bytes after the magic do 3 times in 4): not decoded", st.DictFrames)
	}
	ev.add("bounds: %s decompressed per stream, %s in all; decoder history (zstd window, xz dictionary) up to %s; %s of decoder memory at once (peak %s); %d streams at once",
		iec(s.MaxStreamBytes), iec(s.MaxTotalBytes), iec(s.MaxWindow), iec(s.MaxMemory), iec(st.PeakMemory), s.MaxActive)
	for _, l := range st.Large {
		state := "complete"
		switch {
		case l.Unscanned != "":
			state = "not scanned to its end: " + l.Unscanned
		case !l.Complete:
			state = "cut short: " + l.Err
		}
		if l.Note != "" {
			state += "; " + l.Note
		}
		ev.add("  %s %s: %d MiB, sha256 of content %s (%s)", l.Kind, l.Where, l.Size>>20, orDash(l.SHA256), state)
	}
	if st.EmbeddedCount > 0 {
		ev.add("not findings: %d key constants inside program data (NUL before, not a file of their own), e.g. %s", st.EmbeddedCount, strings.Join(st.Embedded, ", "))
	}
	rules := map[string]bool{}
	for _, ru := range s.Rules {
		rules[ru.Name] = true
	}
	var names []string
	for n := range rules {
		names = append(names, n)
	}
	sort.Strings(names)
	ev.add("rules: %s", strings.Join(names, ", "))
	return verdict(problems, ev, "")
}

var checkSecretsDisk = Check{ID: "secrets.disk", Scope: ScopeImage, Needs: "free space in $TMPDIR (a qcow2 is read as raw)",
	claim: func(Spec, *GatewaySpec) string {
		return "no secret from the build in the image (raw disk with free blocks, every gzip, zstd, xz, bzip2 and lz4 stream and layer read to its end)"
	}}
