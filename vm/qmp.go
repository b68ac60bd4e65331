package vm

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"time"
)

// qmpLineMax bounds one line QEMU's monitor sends (a reply or an event).
const qmpLineMax = 64 << 10

// Powerdown asks the guest to power itself off (QMP system_powerdown: an
// ACPI power button press) through Config.QMPSocket. It returns once QEMU
// has accepted the command; the guest may take its time, or ignore it:
// the caller waits for Exited and calls Stop after a grace period.
func (v *VM) Powerdown(ctx context.Context) error {
	if v.Config.QMPSocket == "" {
		return errors.New("vm: no QMP socket (Config.QMPSocket)")
	}
	return QMPCommand(ctx, v.Config.QMPSocket, "system_powerdown")
}

// QMPCommand connects to the QMP socket at path, leaves capabilities
// negotiation mode and runs one command without arguments, returning
// QEMU's error for it if any. Events QEMU sends meanwhile are skipped.
func QMPCommand(ctx context.Context, path, command string) error {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	var d net.Dialer
	c, err := d.DialContext(ctx, "unix", path)
	if err != nil {
		return fmt.Errorf("vm: qmp: %w", err)
	}
	defer c.Close()
	if dl, ok := ctx.Deadline(); ok {
		c.SetDeadline(dl)
	}
	r := bufio.NewReaderSize(c, 4096)
	type reply struct {
		QMP    json.RawMessage `json:"QMP"`
		Return json.RawMessage `json:"return"`
		Event  string          `json:"event"`
		Error  *struct {
			Class string `json:"class"`
			Desc  string `json:"desc"`
		} `json:"error"`
	}
	read := func() (reply, error) {
		for {
			var line []byte
			for {
				chunk, isPrefix, err := r.ReadLine()
				if err != nil {
					return reply{}, fmt.Errorf("vm: qmp: %w", err)
				}
				line = append(line, chunk...)
				if len(line) > qmpLineMax {
					return reply{}, fmt.Errorf("vm: qmp: a line longer than %d bytes", qmpLineMax)
				}
				if !isPrefix {
					break
				}
			}
			var m reply
			if err := json.Unmarshal(line, &m); err != nil {
				return reply{}, fmt.Errorf("vm: qmp: %q: %w", line, err)
			}
			if m.Event != "" {
				continue
			}
			return m, nil
		}
	}
	greet, err := read()
	if err != nil {
		return err
	}
	if greet.QMP == nil {
		return errors.New("vm: qmp: no greeting")
	}
	for _, cmd := range []string{"qmp_capabilities", command} {
		b, _ := json.Marshal(map[string]string{"execute": cmd})
		if _, err := c.Write(append(b, '\n')); err != nil {
			return fmt.Errorf("vm: qmp %s: %w", cmd, err)
		}
		m, err := read()
		if err != nil {
			return fmt.Errorf("vm: qmp %s: %w", cmd, err)
		}
		if m.Error != nil {
			return fmt.Errorf("vm: qmp %s: %s: %s", cmd, m.Error.Class, m.Error.Desc)
		}
		if m.Return == nil {
			return fmt.Errorf("vm: qmp %s: no return", cmd)
		}
	}
	return nil
}
