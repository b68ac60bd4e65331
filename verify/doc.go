// Package verify is the last stage of bake's pipeline: it boots a built
// image in QEMU and proves its security claims by behaviour, from inside the
// guest (over SSH with a throwaway key) and from outside it (a network
// namespace joined to the VM by a tap device, with a real port scan), and
// scans the image itself for secrets left by the build.
//
// One run (Run) is:
//
//  1. Preflight: the host tools (qemu-system-x86_64, qemu-img, OVMF for
//     UEFI). When they are missing the host cannot run the VM: the report
//     says why and the exit status is 2.
//  2. For each firmware: a fresh ed25519 key and 64-character token, a
//     NoCloud seed (WriteSeed) that bake's first-boot unit and cloud-init
//     both read, a copy-on-write overlay per instance (the image is never
//     written), and QEMU on a Link of its own (root) or on user-mode
//     networking with restrict=on (not root: the checks that need the
//     outside say Skip with the reason). Then SSH is awaited with a deadline
//     while the serial console is kept as evidence, the checks run, and the
//     VMs are powered off and every process, tap device and namespace is
//     removed, on every way out (errors, deadline, Ctrl-C).
//  3. The image's raw disk, free blocks included, and every gzip, zstd,
//     xz, bzip2 and lz4 stream in it, nested (container layers, initramfs,
//     compressed files), is scanned for private keys and tokens
//     (Scanner), within bounds on bytes, memory and depth; a stream it
//     had to stop reading fails the check.
//  4. A Report: a human summary, report.json and junit.xml, each naming the
//     image's sha256, and an exit status: 0 every check passed, 1 a check
//     failed or could not run (the image is not proven; an image that never
//     lets the throwaway key log in has failed), 2 the host could not run
//     the VM.
//
// Every check states a claim and is Pass, Fail or Skip with evidence: the
// commands run and what they printed, addresses probed and what answered.
// Verify fails closed: a Skip is a failure unless it is accepted, because
// Options.AllowSkip (--allow-skip) names it or because the run's options
// left the check out (identity.* with one instance: "skipped by request",
// Report.ListByRequest).
//
// The guest is hostile: nothing it sends back is unbounded. QEMU runs
// under its seccomp sandbox (vm.Sandbox) and is stopped when the serial
// console passes vm.DefaultSerialLogMax (64 MiB); the serial tails in the
// evidence read only the log's last vm.SerialTailMax bytes, and the copy
// kept in the report directory at most its last 64 MiB. A command run over
// SSH keeps at most 8 MiB of stdout and of stderr: past that it is killed
// and its result is cut, which is an error of the command, never evidence
// a check can pass on.
package verify
