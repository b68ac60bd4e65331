// Package cli is bake's command line (cobra). main is a one-liner around
// Main so that tests run the real CLI in-process and check exit statuses and
// messages exactly as a user sees them.
package cli

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"runtime"
	"strings"
	"syscall"

	"github.com/spf13/cobra"

	"github.com/bakeimg/bake/builder"
	"github.com/bakeimg/bake/builder/recipe"
)

// Exit statuses.
const (
	ExitOK      = 0
	ExitFailure = 1 // the build (or the image, for verify) failed
	ExitUsage   = 2 // bad recipe or bad command line: nothing was done
)

// exitError carries an exit status through cobra.
type exitError struct {
	code int
	err  error
}

func (e *exitError) Error() string { return e.err.Error() }
func (e *exitError) Unwrap() error { return e.err }

func usageErr(err error) error { return &exitError{ExitUsage, err} }

// Main runs bake with args and returns the exit status.
func Main(args []string, stdin io.Reader, stdout, stderr io.Writer) int {
	mainArgs = args
	root := NewRoot(stdin, stdout, stderr)
	root.SetArgs(args)
	err := root.Execute()
	if err == nil {
		return ExitOK
	}
	var ee *exitError
	if errors.As(err, &ee) {
		if ee.err != nil && ee.err.Error() != "" {
			fmt.Fprintln(stderr, "bake:", strings.TrimSpace(ee.err.Error()))
		}
		return ee.code
	}
	var diags recipe.Diagnostics
	if errors.As(err, &diags) {
		fmt.Fprintln(stderr, diags.Error())
		fmt.Fprintf(stderr, "bake: %d problem(s) in the recipe; nothing was built\n", len(diags))
		return ExitUsage
	}
	fmt.Fprintln(stderr, "bake:", err)
	// cobra's own errors (unknown flag, wrong arg count) are usage errors.
	if strings.Contains(err.Error(), "unknown flag") || strings.Contains(err.Error(), "unknown command") ||
		strings.Contains(err.Error(), "accepts ") || strings.Contains(err.Error(), "requires ") {
		return ExitUsage
	}
	return ExitFailure
}

// mainArgs are the arguments Main was called with; build re-executes bake
// with them inside its namespaces.
var mainArgs []string

// NewRoot builds the command tree.
func NewRoot(stdin io.Reader, stdout, stderr io.Writer) *cobra.Command {
	root := &cobra.Command{
		Use:   "bake",
		Short: "Bake hardened, immutable appliance disk images",
		Long: `bake turns a recipe into a bootable, hardened disk image (raw, qcow2, or
the formats clouds and hypervisors import: vmdk, ova, vhd, vhdx, gce):
a Debian root tree is bootstrapped (or a cloud image is read), customized in a
chroot with no daemon running, cleaned of per-instance state, and assembled
into a GPT disk that boots under BIOS and UEFI.`,
		Example: `  bake validate recipes/openclaw.yaml
  bake plan recipes/openclaw.yaml
  sudo bake build recipes/openclaw.yaml -o out/
  sudo bake build recipes/minimal.yaml --set disk_size=2GiB
  bake convert out/openclaw.qcow2 --format ova --format vhd`,
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	root.SetIn(stdin)
	root.SetOut(stdout)
	root.SetErr(stderr)
	root.AddCommand(newBuild(), newValidate(), newPlan(), newVerify(), newInspect(), newConvert(), newSeed(), newRun(), newPublish(), newUpgrade(), newVersion())
	return root
}

// setFlags parses repeated --set NAME=VALUE.
func parseSets(sets []string) (map[string]string, error) {
	m := map[string]string{}
	for _, s := range sets {
		name, value, ok := strings.Cut(s, "=")
		if !ok || name == "" {
			return nil, usageErr(fmt.Errorf("--set %q: expected NAME=VALUE, e.g. --set mirror=http://192.0.2.10/debian", s))
		}
		m[name] = value
	}
	return m, nil
}

// contextFlag adds --context DIR to c.
func contextFlag(c *cobra.Command, dir *string) {
	c.Flags().StringVar(dir, "context", "", "the folder the recipe's sources must stay in (default: the recipe's folder, or its context: up to the working directory and the repository root)")
}

func loadRecipe(path string, sets []string, contextDir string) (*recipe.Recipe, error) {
	m, err := parseSets(sets)
	if err != nil {
		return nil, err
	}
	r, err := recipe.LoadWith(path, m, recipe.LoadOptions{ContextDir: contextDir})
	if err != nil {
		var diags recipe.Diagnostics
		if errors.As(err, &diags) {
			return nil, err
		}
		return nil, usageErr(err)
	}
	return r, nil
}

func newValidate() *cobra.Command {
	var contextDir string
	var sets []string
	c := &cobra.Command{
		Use:   "validate RECIPE",
		Short: "Check a recipe and report every problem at once",
		Example: `  bake validate recipes/openclaw.yaml
  bake validate recipe.yaml --set mirror=http://mirror.internal/debian`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			r, err := loadRecipe(args[0], sets, contextDir)
			if err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "%s: recipe %q is valid\n", args[0], r.Name)
			return nil
		},
	}
	c.Flags().StringArrayVar(&sets, "set", nil, "override a recipe variable (NAME=VALUE, repeatable)")
	contextFlag(c, &contextDir)
	return c
}

func newPlan() *cobra.Command {
	var contextDir string
	var sets []string
	var out string
	var asJSON bool
	c := &cobra.Command{
		Use:   "plan RECIPE",
		Short: "Print the stages a build would run, with their inputs, without running them",
		Example: `  bake plan recipes/openclaw.yaml
  bake plan --json recipes/openclaw.yaml | jq .model.kernel`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			r, err := loadRecipe(args[0], sets, contextDir)
			if err != nil {
				return err
			}
			p, err := builder.Compile(r, builder.Options{OutputDir: out})
			if err != nil {
				return usageErr(err)
			}
			if asJSON {
				return p.PrintJSON(cmd.OutOrStdout())
			}
			p.Print(cmd.OutOrStdout())
			return nil
		},
	}
	c.Flags().StringArrayVar(&sets, "set", nil, "override a recipe variable (NAME=VALUE, repeatable)")
	contextFlag(c, &contextDir)
	c.Flags().StringVarP(&out, "output", "o", "out", "output directory")
	c.Flags().BoolVar(&asJSON, "json", false, "print the resolved model (every default applied) and the stages as JSON; paths under the recipe's folder relative to it")
	return c
}

func newVersion() *cobra.Command {
	return &cobra.Command{
		Use:   "version",
		Short: "Print bake's version",
		Args:  cobra.NoArgs,
		Run: func(cmd *cobra.Command, args []string) {
			fmt.Fprintf(cmd.OutOrStdout(), "bake %s (%s, %s/%s)\n", builder.Version, runtime.Version(), runtime.GOOS, runtime.GOARCH)
		},
	}
}

func newBuild() *cobra.Command {
	var contextDir string
	var sets []string
	var opts builder.Options
	c := &cobra.Command{
		Use:   "build RECIPE",
		Short: "Bake the disk image a recipe describes (as root)",
		Long: `Build runs every stage of the plan (see 'bake plan') and writes the recipe's
outputs, SHA256SUMS and NAME.manifest.json into the output directory. The
outputs appear atomically: an interrupted or failed build leaves nothing at the
output paths and no mount anywhere (the build runs in private mount and PID
namespaces).`,
		Example: `  sudo bake build recipes/openclaw.yaml
  sudo bake build recipes/openclaw.yaml -o /srv/images --set disk_size=8GiB
  SOURCE_DATE_EPOCH=1700000000 sudo bake build recipe.yaml   # reproducible times`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			// Validate before anything else, outside the namespaces, so a bad
			// recipe costs nothing and reports exit status 2.
			r, err := loadRecipe(args[0], sets, contextDir)
			if err != nil {
				return err
			}
			if os.Geteuid() != 0 {
				return usageErr(errors.New("bake build needs root (package maintainer scripts run in a chroot); run it with sudo"))
			}
			if !builder.Isolated() {
				code, err := builder.RunIsolated(mainArgs)
				if err != nil {
					return &exitError{ExitFailure, err}
				}
				if code != 0 {
					return &exitError{code, nil}
				}
				return nil
			}
			ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM, syscall.SIGHUP)
			defer stop()
			opts.Stdout = cmd.OutOrStdout()
			if err := builder.Build(ctx, r, opts); err != nil {
				return &exitError{ExitFailure, err}
			}
			return nil
		},
	}
	c.Flags().StringArrayVar(&sets, "set", nil, "override a recipe variable (NAME=VALUE, repeatable)")
	contextFlag(c, &contextDir)
	c.Flags().StringVarP(&opts.OutputDir, "output", "o", "out", "output directory")
	c.Flags().StringVar(&opts.CacheDir, "cache-dir", defaultCacheDir(), "cache for apt archives and downloads (env BAKE_CACHE_DIR)")
	c.Flags().BoolVar(&opts.KeepWork, "keep-work", false, "keep the work directory after a failed build (for debugging)")
	c.Flags().BoolVar(&opts.NoBootstrapCache, "no-bootstrap-cache", false, "run mmdebstrap even when the cache has a tree made from the same inputs and archive state")
	return c
}

func defaultCacheDir() string {
	if d := os.Getenv("BAKE_CACHE_DIR"); d != "" {
		return d
	}
	return "/var/cache/bake"
}
