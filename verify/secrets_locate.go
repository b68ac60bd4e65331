package verify

import (
	"context"
	"strconv"
	"strings"

	"github.com/bakeimg/bake/cloudimg"
)

// locate finds where on the raw disk raw each finding of the scan lies
// (cloudimg.LocateOffsets: the partition, and on ext2/3/4 the file whose
// block it is, a free block a removed file held, or the filesystem's
// journal), for the evidence: a secret on the disk fails the check
// wherever it is, and its place says what wrote it. A finding inside a
// compressed stream is placed where the stream starts. Best effort: what
// cannot be told is said so in the place of the answer.
func (s *Scanner) locate(ctx context.Context, raw string) {
	fs := s.Findings()
	var offs []int64
	var wheres []string
	for _, f := range fs {
		first, _, _ := strings.Cut(f.Where, "/")
		h, ok := strings.CutPrefix(first, "disk+0x")
		if !ok {
			continue
		}
		off, err := strconv.ParseInt(h, 16, 64)
		if err != nil {
			continue
		}
		offs = append(offs, off)
		wheres = append(wheres, f.Where)
	}
	if len(offs) == 0 {
		return
	}
	lines, err := cloudimg.LocateOffsets(ctx, raw, offs)
	s.mu.Lock()
	defer s.mu.Unlock()
	s.located = map[string]string{}
	for i, w := range wheres {
		switch {
		case err != nil:
			s.located[w] = "not placed: " + err.Error()
		case i < len(lines):
			s.located[w] = s.redactLiterals(lines[i])
		}
	}
}

// locatedWord is " (PLACE)" for a finding locate placed, else "".
func (s *Scanner) locatedWord(f Finding) string {
	s.mu.Lock()
	defer s.mu.Unlock()
	if w := s.located[f.Where]; w != "" {
		return " (" + w + ")"
	}
	return ""
}

// redactLiterals hides every literal secret the scan looked for (the
// instance's token, key lines) in text taken from the disk, such as a
// file's name.
func (s *Scanner) redactLiterals(text string) string {
	for _, r := range s.Rules {
		if len(r.Literal) > 0 {
			text = strings.ReplaceAll(text, string(r.Literal), "[redacted "+r.Name+"]")
		}
	}
	return text
}
