package cli

import (
	"context"
	"os"
	"os/signal"
	"path/filepath"
	"syscall"

	"github.com/spf13/cobra"

	"github.com/bakeimg/bake/cloudimg"
)

func newInspect() *cobra.Command {
	return &cobra.Command{
		Use:   "inspect IMAGE",
		Short: "Show an image's partition table, filesystems, OS release, kernel and package count",
		Long: `Inspect reads a raw or qcow2 disk image without modifying or mounting it:
the partition table with its GUIDs, each filesystem's type, UUID and label,
the roles bake assigns (root, /boot, ESP, BIOS boot), the OS release, kernels
and the number of installed packages. A qcow2 is converted to a temporary
sparse raw file first.`,
		Example: `  bake inspect out/openclaw.qcow2
  bake inspect debian-12-genericcloud-amd64.qcow2`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
			defer stop()
			img, err := cloudimg.Open(ctx, args[0])
			if err != nil {
				return &exitError{ExitFailure, err}
			}
			raw := args[0]
			if img.Format != cloudimg.FormatRaw {
				tmp, err := os.MkdirTemp("", "bake-inspect-")
				if err != nil {
					img.Close()
					return err
				}
				defer os.RemoveAll(tmp)
				raw = filepath.Join(tmp, "disk.raw")
				if err := cloudimg.ToRaw(ctx, img, raw); err != nil {
					img.Close()
					return &exitError{ExitFailure, err}
				}
			}
			img.Close()
			l, err := cloudimg.Inspect(ctx, raw)
			if err != nil {
				return &exitError{ExitFailure, err}
			}
			l.Path = args[0]
			l.Print(cmd.OutOrStdout())
			return nil
		},
	}
}
