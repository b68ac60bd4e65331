// Package builder owns the middle of the pipeline: it compiles a validated
// recipe into a plan of named stages (what `bake plan` prints) and runs them
// with a cleanup stack (what `bake build` does): base tree, steps on the tree,
// sysprep, disk assembly, output formats, and the atomic publication of the
// outputs with their SHA256SUMS and build manifest.
package builder

import (
	"io"
	"time"

	"github.com/bakeimg/bake/appliance"
	"github.com/bakeimg/bake/builder/recipe"
	"github.com/bakeimg/bake/internal/execx"
)

// Version is bake's version, set at link time (-ldflags -X).
var Version = "dev"

// Options are the build host's settings for one build; nothing here changes
// what the image contains except SourceDateEpoch (file times).
type Options struct {
	OutputDir string // where NAME.qcow2, SHA256SUMS, NAME.manifest.json appear
	CacheDir  string // apt archives and downloads kept between builds
	// SourceDateEpoch clamps file times in the tree and in filesystems.
	SourceDateEpoch int64
	Stdout          io.Writer // progress lines
	KeepWork        bool      // keep the work dir on failure (debugging)
	// NoBootstrapCache makes the bootstrap run mmdebstrap even when the
	// cache holds a tree made from the same inputs and archive state.
	NoBootstrapCache bool
}

// State is what stages share while a build runs.
type State struct {
	Recipe *recipe.Recipe
	Opts   Options
	Runner execx.Runner
	Log    io.Writer // the build log (every command and its output)

	WorkDir string // beside the output dir, removed at the end
	Tree    string // WorkDir/tree
	Started time.Time

	// Filled in by stages.
	Raw      string   // assembled raw image in WorkDir
	Files    []string // output files in WorkDir, published in order
	Manifest *Manifest
	Failed   bool // set before cleanups run
	// Containers are the images the containers stage resolved and stored
	// in the image (digest, image ID, unit), for the manifest.
	Containers []appliance.ContainerRecord
	// cloud is what the extract stage learnt of a base.image (its raw
	// copy, layout, digest, boot files) for the reassemble stage.
	cloud   *cloudState
	cleanup cleanupStack
}

// Defer registers undo work that runs on every way out of the build.
func (s *State) Defer(name string, fn func() error) { s.cleanup.push(name, fn) }

// containerRecords is s.Containers for the manifest (an empty list, not
// null, when there are none).
func (s *State) containerRecords() []appliance.ContainerRecord {
	if s.Containers == nil {
		return []appliance.ContainerRecord{}
	}
	return s.Containers
}
