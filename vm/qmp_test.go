package vm

import (
	"bufio"
	"context"
	"net"
	"path/filepath"
	"strings"
	"testing"
)

// fakeQMP serves one QMP connection on a unix socket: the greeting, then
// for each command line an event and the reply answer gives.
func fakeQMP(t *testing.T, answer func(cmd string) string) (string, <-chan []string) {
	t.Helper()
	path := filepath.Join(t.TempDir(), "qmp.sock")
	l, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	got := make(chan []string, 1)
	go func() {
		c, err := l.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		c.Write([]byte(`{"QMP": {"version": {"qemu": {"major": 7}}, "capabilities": ["oob"]}}` + "\n"))
		var cmds []string
		sc := bufio.NewScanner(c)
		for sc.Scan() {
			cmds = append(cmds, sc.Text())
			c.Write([]byte(`{"event": "SOMETHING", "timestamp": {"seconds": 1}}` + "\n" + answer(sc.Text()) + "\n"))
		}
		got <- cmds
	}()
	return path, got
}

func TestQMPCommand(t *testing.T) {
	path, got := fakeQMP(t, func(string) string { return `{"return": {}}` })
	if err := QMPCommand(context.Background(), path, "system_powerdown"); err != nil {
		t.Fatal(err)
	}
	cmds := <-got
	if strings.Join(cmds, "|") != `{"execute":"qmp_capabilities"}|{"execute":"system_powerdown"}` {
		t.Errorf("QEMU was sent %q", cmds)
	}

	path, _ = fakeQMP(t, func(cmd string) string {
		if strings.Contains(cmd, "system_powerdown") {
			return `{"error": {"class": "GenericError", "desc": "no ACPI"}}`
		}
		return `{"return": {}}`
	})
	err := QMPCommand(context.Background(), path, "system_powerdown")
	if err == nil || !strings.Contains(err.Error(), "system_powerdown: GenericError: no ACPI") {
		t.Errorf("error %v, want QEMU's", err)
	}

	v := &VM{}
	if err := v.Powerdown(context.Background()); err == nil {
		t.Error("Powerdown without a QMP socket succeeded")
	}
	if err := QMPCommand(context.Background(), filepath.Join(t.TempDir(), "none"), "quit"); err == nil {
		t.Error("QMPCommand without a socket succeeded")
	}
}
