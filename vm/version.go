package vm

import (
	"context"
	"fmt"
	"io"
	"os/exec"
	"regexp"
	"strconv"
	"sync"
	"time"
)

var (
	versionMu    sync.Mutex
	versionCache = map[string][2]int{}
	versionRE    = regexp.MustCompile(`QEMU emulator version ([0-9]+)\.([0-9]+)`)
)

// QEMUVersion is the major and minor version qemu (a binary name or path;
// "" is DefaultQEMU) reports in `qemu --version` ("QEMU emulator version
// 10.0.2 (Debian ...)"), asked once per binary: the first 4 KiB of its
// output within 10 seconds.
func QEMUVersion(qemu string) (major, minor int, err error) {
	if qemu == "" {
		qemu = DefaultQEMU
	}
	versionMu.Lock()
	defer versionMu.Unlock()
	if v, ok := versionCache[qemu]; ok {
		return v[0], v[1], nil
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, qemu, "--version")
	out, err := cmd.StdoutPipe()
	if err != nil {
		return 0, 0, err
	}
	if err := cmd.Start(); err != nil {
		return 0, 0, fmt.Errorf("%s --version: %w", qemu, err)
	}
	b, _ := io.ReadAll(io.LimitReader(out, 4096))
	io.Copy(io.Discard, out)
	if err := cmd.Wait(); err != nil {
		return 0, 0, fmt.Errorf("%s --version: %w", qemu, err)
	}
	major, minor, err = parseQEMUVersion(string(b))
	if err != nil {
		return 0, 0, fmt.Errorf("%s --version: %w", qemu, err)
	}
	versionCache[qemu] = [2]int{major, minor}
	return major, minor, nil
}

func parseQEMUVersion(s string) (major, minor int, err error) {
	m := versionRE.FindStringSubmatch(s)
	if m == nil {
		return 0, 0, fmt.Errorf("no \"QEMU emulator version X.Y\" in %q", s)
	}
	major, err1 := strconv.Atoi(m[1])
	minor, err2 := strconv.Atoi(m[2])
	if err1 != nil || err2 != nil {
		return 0, 0, fmt.Errorf("version %s.%s out of range", m[1], m[2])
	}
	return major, minor, nil
}
