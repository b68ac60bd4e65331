// Command mkrepo makes a signed apt repository laid out like Tailscale's
// (https://pkgs.tailscale.com/stable/debian), holding a tailscale .deb built
// from the tailscale.com Go module, and optionally serves it on 127.0.0.1.
// scripts/tailscale-mirror.sh is its documented front end.
//
//	mkrepo -out OUT [-tailscale VERSION] [-deb FILE]... [-suite bookworm]
//	       [-cache DIR] [-serve 127.0.0.1:PORT [-serve-only]]
//
// OUT receives:
//
//	OUT/debian/          the repository (the apt URI): dists/SUITE/{InRelease,Release,Release.gpg},
//	                     dists/SUITE/main/binary-amd64/Packages(.gz), pool/, SUITE.noarmor.gpg
//	OUT/tailscale.gpg    the signing key as a binary keyring (Signed-By / a recipe's key:)
//	OUT/tailscale.asc    the same key, armored
//	OUT/key/             the private signing key (GnuPG home), reused by later runs so that
//	                     OUT/tailscale.gpg stays valid; never served
//	OUT/serve.pid, OUT/serve.url   while -serve runs (removed when it exits)
//
// With -serve, mkrepo serves OUT/debian until SIGINT or SIGTERM.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/bakeimg/bake/aptrepo"
	"github.com/bakeimg/bake/internal/execx"
)

type debList []string

func (d *debList) String() string     { return strings.Join(*d, ",") }
func (d *debList) Set(v string) error { *d = append(*d, v); return nil }

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := run(ctx, os.Args[1:], os.Stdout)
	stop()
	if errors.Is(err, flag.ErrHelp) {
		os.Exit(0)
	}
	if errors.Is(err, errUsage) {
		os.Exit(2)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "mkrepo:", err)
		os.Exit(1)
	}
}

var errUsage = errors.New("usage")

// run is main without the process: it serves until ctx is done.
func run(ctx context.Context, args []string, stdout io.Writer) error {
	fl := flag.NewFlagSet("mkrepo", flag.ContinueOnError)
	var (
		out       = fl.String("out", "", "output directory (required)")
		version   = fl.String("tailscale", aptrepo.DefaultTailscaleVersion, `tailscale.com module version to build and publish ("none": publish only -deb files)`)
		suite     = fl.String("suite", "bookworm", "suite (and codename)")
		cache     = fl.String("cache", defaultCache(), "cache for the tailscale binaries and .deb")
		serve     = fl.String("serve", "", "serve OUT/debian on this loopback address (127.0.0.1:0 picks a port) until killed")
		serveOnly = fl.Bool("serve-only", false, "with -serve: serve what an earlier run built, build nothing")
		verbose   = fl.Bool("v", false, "log every command and its output to stderr")
		debs      debList
	)
	fl.Var(&debs, "deb", "additional .deb to publish (repeatable)")
	fl.Usage = func() {
		fmt.Fprintf(fl.Output(), "usage: mkrepo -out DIR [flags]\n\n")
		fl.PrintDefaults()
	}
	if err := fl.Parse(args); err != nil {
		return err
	}
	if *out == "" || fl.NArg() != 0 {
		fl.Usage()
		return errUsage
	}
	if *verbose {
		execx.Default = execx.Host{Log: os.Stderr}
	}
	outDir, err := filepath.Abs(*out)
	if err != nil {
		return err
	}
	repoDir := filepath.Join(outDir, "debian")

	if !*serveOnly {
		if err := build(ctx, stdout, outDir, repoDir, *suite, *version, *cache, debs); err != nil {
			return err
		}
	} else if _, err := os.Stat(filepath.Join(repoDir, "dists", *suite, "InRelease")); err != nil {
		return fmt.Errorf("-serve-only: no repository built in %s: %w", repoDir, err)
	}
	if *serve == "" {
		fmt.Fprintf(stdout, "serve it on 127.0.0.1 with -serve ADDR (scripts/tailscale-mirror.sh --serve), or with any static HTTP server rooted at %s\n", repoDir)
		return nil
	}

	srv, err := aptrepo.ServeAddr(repoDir, *serve)
	if err != nil {
		return err
	}
	defer srv.Close()
	pidFile, urlFile := filepath.Join(outDir, "serve.pid"), filepath.Join(outDir, "serve.url")
	// The URL file is written last: its presence means "serving".
	if err := os.WriteFile(pidFile, fmt.Appendf(nil, "%d\n", os.Getpid()), 0o644); err != nil {
		return err
	}
	if err := os.WriteFile(urlFile, []byte(srv.URL()+"\n"), 0o644); err != nil {
		return err
	}
	defer os.Remove(pidFile)
	defer os.Remove(urlFile)
	fmt.Fprintf(stdout, "serving %s at %s (pid %d) until SIGINT/SIGTERM\n", repoDir, srv.URL(), os.Getpid())
	printRecipe(stdout, srv.URL(), *suite, filepath.Join(outDir, "tailscale.gpg"))
	<-ctx.Done()
	return nil
}

func build(ctx context.Context, stdout io.Writer, outDir, repoDir, suite, version, cache string, debs []string) error {
	if version != "none" {
		fmt.Fprintf(stdout, "tailscale %s: building from the tailscale.com module, or reusing %s (a cold build takes minutes)\n", strings.TrimPrefix(version, "v"), cache)
		start := time.Now()
		deb, err := aptrepo.BuildTailscaleDeb(ctx, version, cache, "")
		if err != nil {
			return err
		}
		fmt.Fprintf(stdout, "tailscale %s: %s (%.1fs)\n", strings.TrimPrefix(version, "v"), deb, time.Since(start).Seconds())
		debs = append([]string{deb}, debs...)
	}
	if len(debs) == 0 {
		return fmt.Errorf("nothing to publish: -tailscale none and no -deb")
	}
	key, err := aptrepo.OpenOrNewKey(filepath.Join(outDir, "key"))
	if err != nil {
		return err
	}
	err = aptrepo.BuildRepo(ctx, aptrepo.Repo{
		Dir:    repoDir,
		Suite:  suite,
		Origin: "Tailscale",
		Label:  "Tailscale (local mirror built by bake)",
		Debs:   debs,
		Key:    key,
	})
	if err != nil {
		return err
	}
	for src, dst := range map[string]string{key.Keyring: "tailscale.gpg", key.Armored: "tailscale.asc"} {
		b, err := os.ReadFile(src)
		if err != nil {
			return err
		}
		if err := os.WriteFile(filepath.Join(outDir, dst), b, 0o644); err != nil {
			return err
		}
	}
	fmt.Fprintf(stdout, "signed repository (key %s) in %s:\n", key.Fingerprint, repoDir)
	filepath.WalkDir(repoDir, func(p string, d fs.DirEntry, err error) error {
		if err == nil && !d.IsDir() {
			rel, _ := filepath.Rel(repoDir, p)
			fmt.Fprintln(stdout, "  "+rel)
		}
		return nil
	})
	fmt.Fprintf(stdout, "keyring for Signed-By: %s\n", filepath.Join(outDir, "tailscale.gpg"))
	return nil
}

func printRecipe(w io.Writer, url, suite, key string) {
	fmt.Fprintf(w, `recipe:
  apt:
    repositories:
      - name: tailscale
        uri: %s
        suite: %s
        components: [main]
        key: %s
`, url, suite, key)
}

func defaultCache() string {
	if d := os.Getenv("BAKE_CACHE"); d != "" {
		return filepath.Join(d, "tailscale")
	}
	if d, err := os.UserCacheDir(); err == nil {
		return filepath.Join(d, "bake", "tailscale")
	}
	return filepath.Join(os.TempDir(), "bake-cache", "tailscale")
}
