package cli

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/signal"
	"strings"
	"syscall"

	"github.com/spf13/cobra"

	"github.com/bakeimg/bake/builder"
	"github.com/bakeimg/bake/publish"
	"github.com/bakeimg/bake/verify"
)

func newPublish() *cobra.Command {
	var opts publish.Options
	var partMiB int64
	var lo publishLibvirtOptions
	c := &cobra.Command{
		Use:   "publish IMAGE --to oci://REGISTRY/REPO:TAG | s3://BUCKET/KEY | libvirt://POOL/NAME",
		Short: "Publish an image: to a registry (KubeVirt containerDisk), an S3 bucket or a libvirt host; checked and atomic",
		Long: `Publish delivers IMAGE (an image bake build or bake convert wrote, with
NAME.manifest.json beside it; a qcow2 for oci and libvirt) to a destination.

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
  s3://BUCKET/KEY           the image file itself (qcow2, raw, or another
                            output the build manifest lists, e.g. a vhd for
                            AWS's import) as one object in an S3 bucket (AWS
                            S3 or, with --endpoint, an S3-compatible store),
                            with its SHA-256 in the object's metadata
                            (x-amz-meta-bake-sha256: a multipart upload's ETag
                            is not a digest) and bake-format, bake-recipe,
                            bake-version, bake-source-date-epoch and
                            bake-part-size.

  libvirt://POOL/NAME       a libvirt domain NAME on --connect URI (default
                            qemu:///system; any libvirt URI, e.g.
                            qemu+ssh://root@host/system). The qcow2 is
                            uploaded into the storage pool POOL as
                            NAME.image.qcow2 and read back (its SHA-256 must
                            equal the local one); the domain's disk is
                            NAME.qcow2, a qcow2 overlay on it (the image
                            volume stays as published); the seed, NAME.seed,
                            is made by bake seed's writer from --admin-key
                            (and --hostname), or is --seed FILE (from bake
                            seed). The domain, defined last: type kvm when
                            bake's KVM probe finds KVM usable here, else qemu
                            (kvm for a remote --connect; or --virt-type); the image's firmware (--firmware
                            auto: SeaBIOS when the disk has a BIOS boot
                            partition or an MBR, else OVMF, picked by libvirt,
                            Secure Boot off: bake's UEFI path is not signed);
                            q35, virtio disk, NIC and RNG; a serial console;
                            the seed a read-only virtio disk. Network: --network
                            user (user-mode; --ssh-forward PORT forwards
                            127.0.0.1:PORT to the guest's SSH port: passt's
                            portForward on libvirt 9.2 and later, else QEMU's
                            user network with a hostfwd through
                            <qemu:commandline>),
                            network:NAME or bridge:NAME. --start starts it.
                            Anything that fails removes every volume and the
                            domain this run made. A domain NAME that bake
                            defined from this very image is left as it is (its
                            image volume read back and checked); a domain NAME
                            from another image, or volumes named like this
                            one's without a domain, are refused.

oci: the push is atomic: blobs and the manifest go first, by digest; the
manifest is pulled back and its config and layer digests compared with the
local ones, the layer blob's size and digest asked for; only then is the tag
set (and read back). A re-run with the same image finds the tag naming the
same digest and pushes nothing. A tag that names other content is refused
unless --force.

s3: an image larger than --part-size is sent as a multipart upload (parts
streamed from the file, 4 at a time, each with its SHA-256, which the store
checks); the upload is completed last, so nothing is visible under KEY before
the whole image is there, and on any failure or interruption (Ctrl-C) it is
aborted (and checked to be gone): no object and no parts are left. The
completion is conditional (If-None-Match: *, or If-Match: the ETag --force
replaces): another client's write meanwhile fails the upload. A smaller image
is one PUT with its SHA-256. Afterwards the object is asked for (HEAD) and its
size, bake-sha256 and the store's own SHA-256 checksum (of the object, or of
its parts) compared with the local ones; a store that reports no checksum has
the object read back and hashed. A re-run with the same image finds it there
and uploads nothing. A KEY holding other content is refused unless --force. An
upload a killed or cut-off run left unfinished is resumed by the next run when
its parts are this image's (same part size and SHA-256s): those parts are not
sent again; --abort removes the key's unfinished uploads instead and uploads
nothing.

s3 credentials never go on the command line: --credentials FILE (an AWS
credentials file, profile $AWS_PROFILE or default), else AWS_ACCESS_KEY_ID and
AWS_SECRET_ACCESS_KEY (and AWS_SESSION_TOKEN) in the environment, else
$AWS_SHARED_CREDENTIALS_FILE or ~/.aws/credentials. They are never printed or
recorded (messages name where they came from). The region: --region, else
AWS_REGION or AWS_DEFAULT_REGION, else us-east-1; the endpoint: --endpoint,
else AWS_ENDPOINT_URL_S3 or AWS_ENDPOINT_URL, else AWS S3.

oci credentials come from the Docker config ($DOCKER_CONFIG/config.json, else
~/.docker/config.json: 'docker login' writes it) and its credential helpers.
Only HTTPS is spoken; --ca adds a CA (PEM) to the system's.

Progress goes to stderr (a bar on a terminal, one line otherwise). The receipt,
IMAGE.publish.json (e.g. out/openclaw.qcow2.publish.json), records per
destination what went where: for oci the tag, the pinned reference
(REGISTRY/REPO@sha256:...), the manifest, config and layer digests; for s3 the
bucket, key, endpoint, region, ETag, version ID, the store's checksum, the
upload ID, parts and part size; for libvirt the URI, pool, domain and its
UUID, domain type, firmware, and each volume's name, path and SHA-256 (read
back from libvirt); for all the image's SHA-256 and what was checked at the
destination.

Exit status: 0 published (or already there), 1 the push failed or the tag,
object or domain holds other content, 2 bad usage or an IMAGE bake cannot publish
(nothing pushed), 130 interrupted (nothing left at the destination).`,
		Example: `  bake publish out/openclaw.qcow2 --to oci://registry.example.com/appliances/openclaw:2026.12
  bake publish out/openclaw.qcow2 --to oci://127.0.0.1:5000/openclaw:test --ca ca.pem
  bake publish out/openclaw.qcow2 --to oci://registry.example.com/openclaw:stable --force
  AWS_PROFILE=images bake publish out/openclaw.qcow2 --to s3://my-images/openclaw/2026.12.qcow2 --region eu-west-1
  bake publish out/openclaw.raw --to s3://images/openclaw.raw --endpoint https://s3.example.net:9000 --credentials ~/.config/s3.ini --ca ca.pem
  bake publish out/openclaw.qcow2 --to libvirt://default/openclaw-1 --admin-key ~/.ssh/id_ed25519.pub --network network:default --start
  bake publish out/openclaw.qcow2 --to libvirt://images/gw-2 --connect qemu+ssh://root@kvm1/system --seed gw-2.iso`,
		Args: func(cmd *cobra.Command, args []string) error {
			if len(args) != 1 {
				return usageErr(fmt.Errorf("publish takes one IMAGE, got %d arguments (e.g. bake publish out/openclaw.qcow2 --to oci://registry.example.com/openclaw:1.0)", len(args)))
			}
			return nil
		},
		RunE: func(cmd *cobra.Command, args []string) error {
			if opts.To == "" {
				return usageErr(errors.New("no --to given: want oci://REGISTRY/REPO:TAG, s3://BUCKET/KEY or libvirt://POOL/NAME"))
			}
			isLibvirt := strings.HasPrefix(opts.To, "libvirt://")
			if used := libvirtFlagsUsed(cmd.Flags().Changed); len(used) > 0 && !isLibvirt {
				return usageErr(fmt.Errorf("%s: for libvirt:// destinations only", strings.Join(used, ", ")))
			}
			if isLibvirt && (opts.CAFile != "" || opts.Force) {
				return usageErr(errors.New("--ca and --force are for oci:// and s3:// destinations"))
			}
			if isLibvirt && (opts.Endpoint != "" || opts.Region != "" || opts.CredentialsFile != "" || cmd.Flags().Changed("part-size") || opts.Abort) {
				return usageErr(errors.New("--endpoint, --region, --credentials, --part-size and --abort are for s3:// destinations"))
			}
			ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM, syscall.SIGHUP)
			defer stop()
			opts.Image = args[0]
			if isLibvirt {
				if _, _, err := publish.ParseLibvirt(opts.To); err != nil {
					return usageErr(err)
				}
				var work string
				defer func() {
					if work != "" {
						os.RemoveAll(work)
					}
				}()
				mk := func() (string, error) {
					var err error
					work, err = mkPublishWork()
					return work, err
				}
				note := func(format string, a ...any) { fmt.Fprintf(cmd.OutOrStdout(), format+"\n", a...) }
				if err := planPublishLibvirt(ctx, opts.Image, &lo, mk, &opts.Libvirt, note); err != nil {
					return err
				}
				note("domain type %s (%s); firmware %s (%s)", opts.Libvirt.VirtType, opts.Libvirt.VirtWhy, opts.Libvirt.Firmware, opts.Libvirt.FirmwareWhy)
			}
			opts.Stdout = cmd.OutOrStdout()
			opts.Progress = cmd.ErrOrStderr()
			opts.UserAgent = "bake/" + builder.Version
			if partMiB < 0 {
				return usageErr(fmt.Errorf("--part-size %d: want a size in MiB", partMiB))
			}
			if cmd.Flags().Changed("part-size") {
				opts.PartSize = partMiB << 20
			}
			res, err := publish.Publish(ctx, opts)
			if err != nil {
				if errors.Is(err, publish.ErrUsage) {
					return usageErr(err)
				}
				if errors.Is(err, publish.ErrInterrupted) {
					return &exitError{130, err}
				}
				return &exitError{ExitFailure, err}
			}
			if res.Receipt != "" {
				fmt.Fprintf(cmd.OutOrStdout(), "receipt: %s\n", res.Receipt)
			}
			if r := res.Record.Libvirt; r != nil {
				fmt.Fprintf(cmd.OutOrStdout(), "domain: %s (uuid %s) on %s; console: virsh -c %s console %s\n", r.Domain, r.UUID, r.URI, r.URI, r.Domain)
				return nil
			}
			if res.Record.Pinned != "" {
				fmt.Fprintf(cmd.OutOrStdout(), "deploy: %s\n", res.Record.Pinned)
			}
			return nil
		},
	}
	f := c.Flags()
	f.StringVar(&opts.To, "to", "", "destination: oci://REGISTRY/REPO:TAG, s3://BUCKET/KEY or libvirt://POOL/NAME")
	f.StringVar(&opts.CAFile, "ca", "", "oci, s3: PEM file of a CA to trust besides the system's (a registry or S3 store with its own CA)")
	f.BoolVar(&opts.Force, "force", false, "oci, s3: replace a tag or object that holds other content")
	f.StringVar(&opts.Endpoint, "endpoint", "", "s3: https://HOST[:PORT] of an S3-compatible store (default: $AWS_ENDPOINT_URL_S3, $AWS_ENDPOINT_URL, else AWS S3)")
	f.StringVar(&opts.Region, "region", "", "s3: region (default: $AWS_REGION, $AWS_DEFAULT_REGION, else us-east-1)")
	f.StringVar(&opts.CredentialsFile, "credentials", "", "s3: AWS credentials file (INI, profile $AWS_PROFILE or default); default: the environment's AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, else ~/.aws/credentials")
	f.BoolVar(&opts.Abort, "abort", false, "s3: abort the key's unfinished multipart uploads (left by a killed or cut-off run) and upload nothing")
	f.Int64Var(&partMiB, "part-size", publish.DefaultPartSize>>20, "s3: MiB per part of a multipart upload (5 to 5120; larger images get larger parts to stay within 10,000)")
	f.StringVar(&lo.connect, "connect", publish.DefaultLibvirtURI, "libvirt: the libvirt URI")
	f.StringVar(&lo.virtType, "virt-type", "auto", "libvirt: the domain type: auto (bake's KVM probe), kvm or qemu")
	f.StringVar(&lo.firmware, "firmware", "auto", "libvirt: auto (from the image's partitions), bios or uefi")
	f.IntVar(&lo.memory, "memory", verify.DefaultMemoryMiB, "libvirt: the domain's memory, MiB")
	f.IntVar(&lo.cpus, "cpus", 2, "libvirt: the domain's vCPUs")
	f.StringVar(&lo.network, "network", "user", "libvirt: user, network:NAME or bridge:NAME")
	f.IntVar(&lo.sshForward, "ssh-forward", 0, "libvirt, --network user: forward 127.0.0.1:PORT to the guest's SSH port")
	f.BoolVar(&lo.start, "start", false, "libvirt: start the domain once it is defined")
	f.StringVar(&lo.seed, "seed", "", "libvirt: attach this NoCloud seed (ISO9660 or FAT, from bake seed)")
	f.StringArrayVar(&lo.adminKeys, "admin-key", nil, "libvirt: make the seed with the admin's SSH public keys from this file (repeatable)")
	f.StringVar(&lo.hostname, "hostname", "", "libvirt: the instance's host name, in the made seed")
	return c
}
