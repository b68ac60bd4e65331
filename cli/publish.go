package cli

import (
	"context"
	"errors"
	"fmt"
	"os/signal"
	"syscall"

	"github.com/spf13/cobra"

	"github.com/bakeimg/bake/builder"
	"github.com/bakeimg/bake/publish"
)

func newPublish() *cobra.Command {
	var opts publish.Options
	c := &cobra.Command{
		Use:   "publish IMAGE --to oci://REGISTRY/REPO:TAG",
		Short: "Push an image to a registry as a KubeVirt containerDisk, checked and atomic",
		Long: `Publish delivers IMAGE (a qcow2 that bake build or bake convert wrote, with
NAME.manifest.json beside it) to a destination.

  oci://REGISTRY/REPO:TAG   a KubeVirt containerDisk: one uncompressed layer
                            holding /disk/NAME.qcow2, owned 107:107 (KubeVirt's
                            qemu user), mode 0440; the build's labels
                            (io.github.bakeimg.*: recipe, bake version, base,
                            container versions, disk SHA-256) and the
                            org.opencontainers.image.* ones in the image
                            config, the latter also as manifest annotations.
                            Every time in the layer and config is the build's
                            SOURCE_DATE_EPOCH, so the same image always gives
                            the same digest.

The push is atomic: blobs and the manifest go first, by digest; the manifest
is pulled back and its config and layer digests compared with the local ones,
the layer blob's size and digest asked for; only then is the tag set (and read
back). A re-run with the same image finds the tag naming the same digest and
pushes nothing. A tag that names other content is refused unless --force.

Credentials come from the Docker config ($DOCKER_CONFIG/config.json, else
~/.docker/config.json: 'docker login' writes it) and its credential helpers.
Only HTTPS is spoken; --ca adds a CA (PEM) to the system's.

Progress goes to stderr (a bar on a terminal, one line otherwise). The receipt,
IMAGE.publish.json (e.g. out/openclaw.qcow2.publish.json), records per
destination what went where: the tag, the pinned reference
(REGISTRY/REPO@sha256:...), the manifest, config and layer digests, the image's
SHA-256 and what was checked at the registry.

Exit status: 0 published (or already there), 1 the push failed or the tag
names other content, 2 bad usage or an IMAGE bake cannot publish (nothing
pushed).`,
		Example: `  bake publish out/openclaw.qcow2 --to oci://registry.example.com/appliances/openclaw:2026.12
  bake publish out/openclaw.qcow2 --to oci://127.0.0.1:5000/openclaw:test --ca ca.pem
  bake publish out/openclaw.qcow2 --to oci://registry.example.com/openclaw:stable --force`,
		Args: func(cmd *cobra.Command, args []string) error {
			if len(args) != 1 {
				return usageErr(fmt.Errorf("publish takes one IMAGE, got %d arguments (e.g. bake publish out/openclaw.qcow2 --to oci://registry.example.com/openclaw:1.0)", len(args)))
			}
			return nil
		},
		RunE: func(cmd *cobra.Command, args []string) error {
			if opts.To == "" {
				return usageErr(errors.New("no --to given: want oci://REGISTRY/REPO:TAG"))
			}
			ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM, syscall.SIGHUP)
			defer stop()
			opts.Image = args[0]
			opts.Stdout = cmd.OutOrStdout()
			opts.Progress = cmd.ErrOrStderr()
			opts.UserAgent = "bake/" + builder.Version
			res, err := publish.Publish(ctx, opts)
			if err != nil {
				if errors.Is(err, publish.ErrUsage) {
					return usageErr(err)
				}
				return &exitError{ExitFailure, err}
			}
			if res.Receipt != "" {
				fmt.Fprintf(cmd.OutOrStdout(), "receipt: %s\n", res.Receipt)
			}
			fmt.Fprintf(cmd.OutOrStdout(), "deploy: %s\n", res.Record.Pinned)
			return nil
		},
	}
	f := c.Flags()
	f.StringVar(&opts.To, "to", "", "destination: oci://REGISTRY/REPO:TAG")
	f.StringVar(&opts.CAFile, "ca", "", "PEM file of a CA to trust besides the system's (a registry with its own CA)")
	f.BoolVar(&opts.Force, "force", false, "replace a tag that names other content")
	return c
}
