package recipe

import (
	"cmp"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"

	"github.com/goccy/go-yaml"
	"github.com/goccy/go-yaml/ast"
	"github.com/goccy/go-yaml/parser"
)

// Diagnostic is one problem in a recipe. Line and Col are 1-based; both are
// 0 when the problem has no place in the file (an unreadable file, a --set
// without a variables block to point at).
type Diagnostic struct {
	File string // the recipe path as the user gave it
	Line int
	Col  int
	Path string // field path, e.g. users[1].name; "" for the whole recipe
	Msg  string // what is wrong
	Hint string // what to write instead; may be empty
}

func (d Diagnostic) String() string {
	var b strings.Builder
	b.WriteString(d.File)
	if d.Line > 0 {
		fmt.Fprintf(&b, ":%d:%d", d.Line, d.Col)
	}
	b.WriteString(": ")
	b.WriteString(d.Msg)
	if d.Hint != "" {
		b.WriteString(" (")
		b.WriteString(d.Hint)
		b.WriteString(")")
	}
	return b.String()
}

// Diagnostics is every problem found in a recipe, in file order. It is the
// error type Load, Parse and Validate return, so that the CLI can print all
// of them at once and a user fixes a recipe in one round.
type Diagnostics []Diagnostic

// Error prints one line per problem: FILE:LINE:COL: MSG (HINT).
func (ds Diagnostics) Error() string {
	lines := make([]string, len(ds))
	for i, d := range ds {
		lines[i] = d.String()
	}
	return strings.Join(lines, "\n")
}

func (ds Diagnostics) sort() {
	slices.SortStableFunc(ds, func(a, b Diagnostic) int {
		return cmp.Or(cmp.Compare(a.Line, b.Line), cmp.Compare(a.Col, b.Col))
	})
}

// err returns ds as an error, or a nil error (not a nil Diagnostics in an
// interface, which would compare non-nil).
func (ds Diagnostics) err() error {
	if len(ds) == 0 {
		return nil
	}
	ds.sort()
	return ds
}

// Load reads, decodes and validates the recipe at path, with sets (from
// --set NAME=VALUE) overriding variable defaults. Defaults are filled in
// (see Defaults) only when the recipe is valid. Any problem, including an
// unreadable file, comes back as Diagnostics.
//
// A recipe's context (see Recipe.Context) may reach up to the working
// directory; LoadIn names another folder for that bound.
func Load(path string, sets map[string]string) (*Recipe, error) {
	return LoadIn("", path, sets)
}

// LoadIn is Load with workDir standing for the working directory as the
// highest folder a recipe's context may name ("" is the working directory).
// It is for callers that know which folder the person running bake chose,
// such as a test running in its package folder that loads a recipe of the
// repository.
func LoadIn(workDir, path string, sets map[string]string) (*Recipe, error) {
	return LoadWith(path, sets, LoadOptions{WorkDir: workDir})
}

// LoadOptions are the folders that bound what a recipe may read.
type LoadOptions struct {
	// WorkDir stands for the working directory (see LoadIn); "" is the
	// working directory.
	WorkDir string
	// ContextDir is `--context DIR`: the folder the recipe's sources
	// must stay in. When set it replaces the default bound (the recipe's
	// folder or the working directory, and never above the repository
	// root): the recipe's context, and so the recipe's folder, must
	// resolve inside it. It may not be / .
	ContextDir string
}

// LoadWith is Load with the bounds of o.
func LoadWith(path string, sets map[string]string, o LoadOptions) (*Recipe, error) {
	data, err := readFile(path)
	if err != nil {
		hint := "give the path of a bake/v1 YAML file"
		if errors.Is(err, errSize) {
			hint = "a recipe is a few KiB of YAML; keep large content in files beside it (files: source, overlays)"
		}
		return nil, Diagnostics{{File: path, Msg: fmt.Sprintf("cannot read recipe: %v", err), Hint: hint}}
	}
	return parse(path, data, filepath.Dir(path), o, sets)
}

// Parse is Load for a recipe already in memory: name is what diagnostics
// call the file, dir is the folder relative paths resolve against ("" is
// the working directory).
// The working directory bounds the recipe's context (see LoadIn).
func Parse(name string, data []byte, dir string, sets map[string]string) (*Recipe, error) {
	return parse(name, data, dir, LoadOptions{}, sets)
}

func parse(name string, data []byte, dir string, o LoadOptions, sets map[string]string) (*Recipe, error) {
	workDir := o.WorkDir
	if len(data) > MaxSize {
		return nil, Diagnostics{{File: name, Msg: fmt.Sprintf("cannot read recipe: %v", errTooLarge(int64(len(data)))),
			Hint: "a recipe is a few KiB of YAML; keep large content in files beside it (files: source, overlays)"}}
	}
	sum := sha256.Sum256(data)
	r := &Recipe{Path: name, Digest: hex.EncodeToString(sum[:])}
	abs, err := filepath.Abs(dir)
	if err != nil {
		return nil, Diagnostics{{File: name, Msg: fmt.Sprintf("cannot resolve the recipe folder: %v", err)}}
	}
	r.Dir = abs
	if workDir != "" {
		if r.workDir, err = filepath.Abs(workDir); err != nil {
			return nil, Diagnostics{{File: name, Msg: fmt.Sprintf("cannot resolve the working folder: %v", err)}}
		}
	} else if r.workDir, err = os.Getwd(); err != nil {
		return nil, Diagnostics{{File: name, Msg: fmt.Sprintf("cannot find the working directory: %v", err),
			Hint: "run bake from an existing folder"}}
	}

	if o.ContextDir != "" {
		if r.bound, err = contextBound(o.ContextDir); err != nil {
			return nil, Diagnostics{{File: name, Msg: err.Error(),
				Hint: "give --context an existing folder that holds the recipe and every file it names, such as the project folder"}}
		}
	}

	src := &source{file: name, lines: strings.Split(string(data), "\n")}
	r.src = src
	if diags := checkNesting(name, data); diags != nil {
		return nil, diags
	}
	doc, diags := parseDocument(name, data)
	if doc != nil {
		d := newDecoder(src)
		if !d.decodeRecipe(r, doc, sets) {
			// Over the value budget: nothing was decoded, and
			// validating the empty recipe would only add noise.
			diags = append(diags, d.diags...)
			return nil, diags.err()
		}
		diags = append(diags, d.diags...)
		if len(d.diags) == 0 {
			diags = append(diags, crossCheck(name, doc)...)
		}
		diags = append(diags, r.validate()...)
	}
	if err := diags.err(); err != nil {
		return nil, err
	}
	if err := r.Defaults(); err != nil {
		return nil, Diagnostics{{File: name, Msg: err.Error()}}
	}
	return r, nil
}

// parseDocument returns the body of the one YAML document in data, or nil
// with the reason. goccy's parser has panicked on odd input in the past; a
// recipe is user input, so a panic becomes a diagnostic, not a crash.
func parseDocument(name string, data []byte) (body ast.Node, diags Diagnostics) {
	defer func() {
		if p := recover(); p != nil {
			body = nil
			diags = Diagnostics{{File: name, Msg: fmt.Sprintf("cannot parse YAML: %v", p)}}
		}
	}()
	f, err := parser.ParseBytes(data, 0)
	if err != nil {
		return nil, Diagnostics{yamlDiagnostic(name, err)}
	}
	if len(f.Docs) == 0 || f.Docs[0].Body == nil {
		return nil, Diagnostics{{File: name, Line: 1, Col: 1, Msg: "the recipe is empty",
			Hint: "start with apiVersion: bake/v1, name: and base:"}}
	}
	for _, doc := range f.Docs[1:] {
		line, col := 0, 0
		if doc.Start != nil {
			line, col = doc.Start.Position.Line, doc.Start.Position.Column
		} else if doc.Body != nil && doc.Body.GetToken() != nil {
			line, col = doc.Body.GetToken().Position.Line, doc.Body.GetToken().Position.Column
		}
		diags = append(diags, Diagnostic{File: name, Line: line, Col: col,
			Msg:  "a second YAML document; a recipe is one YAML document",
			Hint: fmt.Sprintf("remove the `---` at line %d and everything after it, or merge it into the first document", line)})
	}
	return f.Docs[0].Body, diags
}

// yamlDiagnostic turns a goccy error into a Diagnostic at its token.
func yamlDiagnostic(name string, err error) Diagnostic {
	d := Diagnostic{File: name, Msg: err.Error()}
	if ye, ok := err.(yaml.Error); ok {
		d.Msg = ye.GetMessage()
		if tk := ye.GetToken(); tk != nil && tk.Position != nil {
			d.Line, d.Col = tk.Position.Line, tk.Position.Column
		}
	}
	d.Msg = "YAML: " + d.Msg
	if strings.Contains(d.Msg, "already defined") {
		d.Hint = "write each key once; remove or merge the repeat"
	} else {
		d.Hint = "check the indentation: spaces, not tabs, keys of one mapping aligned, nested keys further in; " +
			"quote text that contains \": \" or starts with * & ! { [ | > % @ or `"
	}
	return d
}

// crossCheck decodes the document with goccy's own strict decoder as well.
// The schema walk in decode.go is what reports problems (goccy stops at the
// first one and reports unknown keys in map order), but it must never be
// laxer than the library the design names: anything goccy refuses and the
// walk let through still fails here.
func crossCheck(name string, body ast.Node) (diags Diagnostics) {
	defer func() {
		if p := recover(); p != nil {
			diags = Diagnostics{{File: name, Msg: fmt.Sprintf("cannot decode YAML: %v", p)}}
		}
	}()
	var r Recipe
	// AllowDuplicateMapKey: the parser already refuses a key written twice;
	// goccy's decoder would also refuse a key that overrides one from a
	// `<<: *anchor` merge, which YAML's merge rules allow.
	if err := yaml.NodeToValue(body, &r, yaml.Strict(), yaml.AllowDuplicateMapKey()); err != nil {
		d := yamlDiagnostic(name, err)
		d.Msg = strings.Replace(d.Msg, "YAML: ", "YAML (strict decoder): ", 1)
		return Diagnostics{d}
	}
	return nil
}
