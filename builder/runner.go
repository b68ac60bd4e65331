package builder

import (
	"context"
	"errors"
	"fmt"
	"io"
	"time"
)

// Stage is one named step of a build. Inputs are what `bake plan` prints for
// it; Run does the work. A stage registers undo work with State.Defer.
type Stage struct {
	Name   string
	Inputs []string
	Run    func(ctx context.Context, s *State) error
}

// cleanupStack runs its functions in reverse order, on every way out of a
// build (success, failure, cancellation). Errors are collected, not fatal:
// every cleanup gets its chance.
type cleanupStack struct {
	fns []namedCleanup
}

type namedCleanup struct {
	name string
	fn   func() error
}

func (c *cleanupStack) push(name string, fn func() error) {
	c.fns = append(c.fns, namedCleanup{name, fn})
}

func (c *cleanupStack) run() error {
	var errs []error
	for i := len(c.fns) - 1; i >= 0; i-- {
		if err := c.fns[i].fn(); err != nil {
			errs = append(errs, fmt.Errorf("cleanup %s: %w", c.fns[i].name, err))
		}
	}
	c.fns = nil
	return errors.Join(errs...)
}

// runStages runs stages in order, printing `[n/N] name ... 12.3s` for each,
// and always runs the cleanup stack before returning.
func runStages(ctx context.Context, out io.Writer, stages []Stage, s *State) (err error) {
	defer func() {
		s.Failed = err != nil
		if cerr := s.cleanup.run(); cerr != nil {
			err = errors.Join(err, cerr)
		}
	}()
	n := len(stages)
	for i, st := range stages {
		if ctx.Err() != nil {
			return fmt.Errorf("build interrupted before stage %s: %w", st.Name, context.Cause(ctx))
		}
		start := time.Now()
		fmt.Fprintf(out, "[%d/%d] %s ...\n", i+1, n, st.Name)
		if s.Log != nil {
			fmt.Fprintf(s.Log, "\n===== [%d/%d] %s =====\n", i+1, n, st.Name)
		}
		if err := st.Run(ctx, s); err != nil {
			fmt.Fprintf(out, "[%d/%d] %s ... FAILED after %.1fs\n", i+1, n, st.Name, time.Since(start).Seconds())
			if ctx.Err() != nil {
				return fmt.Errorf("%s: interrupted (%v): %w", st.Name, context.Cause(ctx), err)
			}
			return fmt.Errorf("%s: %w", st.Name, err)
		}
		fmt.Fprintf(out, "[%d/%d] %s ... %.1fs\n", i+1, n, st.Name, time.Since(start).Seconds())
	}
	return nil
}
