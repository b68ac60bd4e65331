package verify

import (
	"testing"
	"time"
)

// refusalWatch concludes "nothing listens" refusedGrace after both the
// first refusal and the first login prompt, never before a prompt.
func TestRefusalWatch(t *testing.T) {
	t0 := time.Date(2026, 12, 6, 4, 0, 0, 0, time.UTC)
	at := func(s int) time.Time { return t0.Add(time.Duration(s) * time.Second) }
	g := int(refusedGrace / time.Second)
	cases := []struct {
		name      string
		prompt    int   // seconds after t0; -1: never
		answers   []int // an SSH server answered at these seconds
		refusals  []int // refused at these seconds, in order
		concludes int   // the first refusal that concludes; -1: none
	}{
		// The plain image: refusals from the lease on, the prompt soon after.
		{"prompt after the first refusal", 40, nil, seq(35, 35+3*g, 2), 40 + g + 1},
		// A slow boot (cloud-init's datasource probe): 140 s of refusals
		// before the prompt, sshd answers 5 s after it (the refusals end).
		{"long refusals before the prompt", 190, nil, seq(50, 194, 2), -1},
		{"long refusals before the prompt, then none listens", 190, nil, seq(50, 190+2*g, 2), 190 + g + 2},
		// No prompt: never concluded here (sshWaitMax bounds the wait).
		{"no prompt", -1, nil, seq(10, 10+20*g, 2), -1},
		// The prompt long before the first refusal (a lease came late).
		{"prompt first", 10, nil, seq(100, 100+2*g, 2), 100 + g + 2},
		// An answer (sshd refusing the key) starts the refusals anew.
		{"answer between", 10, []int{40}, append(seq(20, 38, 2), seq(42, 42+2*g, 2)...), 42 + g + 2},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			var w refusalWatch
			got := -1
			ai := 0
			for _, s := range c.refusals {
				if c.prompt >= 0 && s >= c.prompt && w.promptAt.IsZero() {
					w.promptAt = at(c.prompt)
				}
				for ai < len(c.answers) && c.answers[ai] <= s {
					w.answered()
					ai++
				}
				if w.refusal(at(s)) {
					got = s
					break
				}
			}
			if got != c.concludes {
				t.Errorf("concluded at %d s, want %d s (refusedGrace %s)", got, c.concludes, refusedGrace)
			}
		})
	}
}

func seq(from, to, step int) []int {
	var out []int
	for s := from; s <= to; s += step {
		out = append(out, s)
	}
	return out
}
