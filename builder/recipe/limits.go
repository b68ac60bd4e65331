package recipe

// Limits on what a recipe may cost to read. bake runs as root on recipes it
// did not write (pull requests in CI); reading one must stay cheap in memory
// and time whatever the file holds.

import (
	"errors"
	"fmt"
	"io"
	"os"
	"syscall"

	"github.com/goccy/go-yaml/ast"
	"github.com/goccy/go-yaml/lexer"
	"github.com/goccy/go-yaml/token"
)

const (
	// MaxSize is the largest recipe file bake reads (1 MiB). The largest
	// real recipe is a few KiB; a bigger file is refused before parsing.
	MaxSize = 1 << 20
	// MaxNodes bounds the YAML values of a recipe counted with every alias
	// expanded (a value reached through *alias counts once per alias). A
	// real recipe has a few hundred; an "alias bomb" (each anchor a list of
	// aliases of the previous one) has exponentially many while its text
	// stays tiny, and decoding it would take exponential time and memory.
	MaxNodes = 10000
	// maxNesting bounds how deep flow collections ([ and {) nest. goccy's
	// parser takes time and memory quadratic in that depth (100,000
	// levels, 200 KB of brackets: a minute and 15 GB), so it is checked on
	// the tokens, before parsing. The schema nests a few levels.
	maxNesting = 64
)

// readFile reads a recipe file of at most MaxSize bytes. It opens the path
// without blocking (a FIFO or a device would otherwise block open or read
// forever), refuses anything but a regular file, and reads at most one byte
// past the limit, so neither a huge file nor a growing one costs memory.
func readFile(path string) ([]byte, error) {
	f, fi, err := openRegular(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	if fi.Size() > MaxSize {
		return nil, errTooLarge(fi.Size())
	}
	data, err := io.ReadAll(io.LimitReader(f, MaxSize+1))
	if err != nil {
		return nil, err
	}
	if len(data) > MaxSize {
		return nil, errTooLarge(int64(len(data)))
	}
	return data, nil
}

// openRegular opens path without blocking (a FIFO or a device would
// otherwise block open or read forever) and refuses anything but a
// regular file; the caller closes it.
func openRegular(path string) (*os.File, os.FileInfo, error) {
	f, err := os.OpenFile(path, os.O_RDONLY|syscall.O_NONBLOCK|syscall.O_NOCTTY, 0)
	if err != nil {
		return nil, nil, err
	}
	fi, err := f.Stat()
	if err != nil {
		f.Close()
		return nil, nil, err
	}
	if !fi.Mode().IsRegular() {
		f.Close()
		return nil, nil, fmt.Errorf("%s is not a regular file (%s)", path, fileKind(fi.Mode()))
	}
	return f, fi, nil
}

var errSize = errors.New("recipe too large")

func errTooLarge(n int64) error {
	return fmt.Errorf("%w: %d bytes or more, above the limit of %d bytes (1 MiB)", errSize, n, MaxSize)
}

func fileKind(m os.FileMode) string {
	switch {
	case m.IsDir():
		return "a directory"
	case m&os.ModeNamedPipe != 0:
		return "a named pipe"
	case m&os.ModeSocket != 0:
		return "a socket"
	case m&os.ModeCharDevice != 0:
		return "a character device"
	case m&os.ModeDevice != 0:
		return "a block device"
	}
	return "not a regular file"
}

// budget counts the values of a document with aliases expanded, without
// expanding them: the size of each node is computed once (memoized), so the
// count costs time linear in the text even when the expansion is
// exponential. Sizes saturate just above MaxNodes.
type budget struct {
	d       *decoder // for anchor lookup
	size    map[ast.Node]int
	active  map[ast.Node]bool // anchors being sized (an alias inside its own anchor)
	total   int
	over    ast.Node // where the count first passed the limit
	overVia *ast.AliasNode
}

func sat(a, b int) int {
	if a+b > MaxNodes+1 {
		return MaxNodes + 1
	}
	return a + b
}

// children are the nodes below n that hold values; anchor names, comments
// and merge keys hold none.
func children(n ast.Node) []ast.Node {
	switch v := n.(type) {
	case *ast.DocumentNode:
		return []ast.Node{v.Body}
	case *ast.MappingNode:
		out := make([]ast.Node, 0, 2*len(v.Values))
		for _, mv := range v.Values {
			out = append(out, mv.Key, mv.Value)
		}
		return out
	case *ast.MappingValueNode:
		return []ast.Node{v.Key, v.Value}
	case *ast.MappingKeyNode:
		return []ast.Node{v.Value}
	case *ast.SequenceNode:
		return v.Values
	case *ast.AnchorNode:
		return []ast.Node{v.Value}
	case *ast.TagNode:
		return []ast.Node{v.Value}
	}
	return nil
}

// sizeOf is the number of values n stands for, aliases expanded.
func (b *budget) sizeOf(n ast.Node, depth int) int {
	if n == nil {
		return 0
	}
	if s, ok := b.size[n]; ok {
		return s
	}
	if depth > 4*maxDepth {
		return MaxNodes + 1
	}
	s := 1
	if a, ok := n.(*ast.AliasNode); ok {
		if an := b.d.anchorFor(a); an != nil && !b.active[an] {
			b.active[an] = true
			s = sat(0, b.sizeOf(an.Value, depth+1))
			delete(b.active, an)
		}
		// An alias without an anchor, or inside its own anchor, is
		// reported by the decoder; it counts as one value here.
	} else {
		for _, c := range children(n) {
			s = sat(s, b.sizeOf(c, depth+1))
		}
	}
	b.size[n] = s
	return s
}

// walk adds up the document in file order and remembers where the total
// first passed MaxNodes: at an alias when it is the alias that did it.
func (b *budget) walk(n ast.Node, depth int, via *ast.AliasNode) {
	if n == nil || b.over != nil {
		return
	}
	if a, ok := n.(*ast.AliasNode); ok {
		b.total = sat(b.total, b.sizeOf(a, depth))
		if b.total > MaxNodes {
			b.over, b.overVia = a, a
		}
		return
	}
	b.total = sat(b.total, 1)
	if b.total > MaxNodes {
		b.over, b.overVia = n, via
		return
	}
	if depth > 4*maxDepth {
		b.over = n
		return
	}
	for _, c := range children(n) {
		b.walk(c, depth+1, via)
	}
}

// checkBudget reports a document whose values, aliases expanded, exceed
// MaxNodes, before anything decodes (and so expands) it.
func (d *decoder) checkBudget(body ast.Node) bool {
	b := &budget{d: d, size: map[ast.Node]int{}, active: map[ast.Node]bool{}}
	b.walk(body, 0, nil)
	if b.over == nil {
		return true
	}
	line, col := tokenPos(b.over.GetToken())
	diag := Diagnostic{File: d.src.file, Line: line, Col: col}
	if b.overVia != nil {
		diag.Msg = fmt.Sprintf("alias %s expands the recipe past %d values (anchors and aliases are expanded when the recipe is read)", b.overVia.String(), MaxNodes)
		diag.Hint = "write the values out, or alias a value once instead of aliasing lists of aliases"
	} else {
		diag.Msg = fmt.Sprintf("the recipe holds more than %d values, or nests them more than %d deep", MaxNodes, 4*maxDepth)
		diag.Hint = "a recipe describes one image; split it or keep the data in files beside it (overlays, files: source)"
	}
	d.diags = append(d.diags, diag)
	return false
}

// checkNesting refuses flow collections nested deeper than maxNesting,
// from the tokens (linear time), before the parser sees them.
func checkNesting(name string, data []byte) (diags Diagnostics) {
	defer func() {
		if p := recover(); p != nil {
			diags = nil // the parser reports what the lexer choked on
		}
	}()
	depth := 0
	for _, tk := range lexer.Tokenize(string(data)) {
		switch tk.Type {
		case token.SequenceStartType, token.MappingStartType:
			depth++
			if depth > maxNesting {
				line, col := tokenPos(tk)
				return Diagnostics{{File: name, Line: line, Col: col,
					Msg:  fmt.Sprintf("values nest more than %d deep", maxNesting),
					Hint: "a recipe nests a few levels; close the [ and { that are open"}}
			}
		case token.SequenceEndType, token.MappingEndType:
			if depth > 0 {
				depth--
			}
		}
	}
	return nil
}
