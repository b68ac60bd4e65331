package cli

import (
	"context"
	"errors"
	"fmt"
	"os/signal"
	"syscall"

	"github.com/spf13/cobra"

	"github.com/bakeimg/bake/upgrade"
)

func newUpgrade() *cobra.Command {
	return &cobra.Command{
		Use:   "upgrade DISK NEW_IMAGE",
		Short: "Give a stopped single-disk instance a new image, keeping its state partition",
		Long: `Upgrade rewrites the system partitions (BIOS boot, ESP, root) of DISK, the
disk of a stopped instance (raw or qcow2), with NEW_IMAGE's, and keeps its
state partition (state: {partition: ...}, docs/state.md) byte for byte.
NEW_IMAGE must keep its state on a partition with the same label. Rolling
back is the same command with the old image.

DISK is never written in place: the new disk is made beside it (as much
free space as DISK's data takes, twice that for a qcow2), read back and
checked (the partition table, NEW_IMAGE's file system UUIDs that its
grub.cfg and fstab name, the state partition's sha256), then renamed over
DISK. Interrupted or failed, DISK is as it was. A disk that a process has
open (QEMU) or that a loop device is on is refused. Root grows into the
space up to the state partition at the next boot (bake-growroot).`,
		Example: `  sudo bake upgrade /var/lib/libvirt/images/app1.qcow2 out/openclaw.qcow2`,
		Args:    cobra.ExactArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM, syscall.SIGHUP)
			defer stop()
			out := cmd.OutOrStdout()
			res, err := upgrade.Run(ctx, upgrade.Options{Disk: args[0], Image: args[1], Log: out})
			var b *upgrade.BadInput
			switch {
			case errors.As(err, &b):
				return usageErr(err)
			case ctx.Err() != nil:
				return &exitError{ExitFailure, fmt.Errorf("interrupted: %s is unchanged (the new disk was removed)", args[0])}
			case err != nil:
				return &exitError{ExitFailure, fmt.Errorf("%w; %s is unchanged", err, args[0])}
			}
			fmt.Fprintf(out, "upgraded %s (%s) to %s; state partition p%d kept (sha256 %s)\n", args[0], res.Format, args[1], res.Plan.State.Number, res.StateSHA256)
			return nil
		},
	}
}
