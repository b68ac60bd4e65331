package verify

import (
	"strings"
	"testing"
)

func TestJudgeFirstbootAgain(t *testing.T) {
	for _, c := range []struct {
		name, out, problem, line string
	}{
		{"once", "unit: yes\nbake-firstboot: instance 0123 was set up on 2026-12-05T10:00:00Z; nothing to do\n", "", "nothing to do"},
		{"no unit", "unit: no\n", "", ""},
		{"acted again", "unit: yes\nbake-firstboot: first boot of instance 0123; seed sources: nocloud credentials\nbake-firstboot: done for instance 0123\n", "acted again", "first boot of instance"},
		{"silent", "unit: yes\n", "did not log", "-"},
		{"garbage", "sudo: a password is required\n", "cannot tell", ""},
		{"empty", "", "cannot tell", ""},
	} {
		problem, line := judgeFirstbootAgain(c.out)
		if (c.problem == "") != (problem == "") || !strings.Contains(problem, c.problem) {
			t.Errorf("%s: problem %q, want one with %q", c.name, problem, c.problem)
		}
		if (c.line == "") != (line == "") || !strings.Contains(line, c.line) {
			t.Errorf("%s: line %q, want one with %q", c.name, line, c.line)
		}
	}
}
