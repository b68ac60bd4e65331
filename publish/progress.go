package publish

import (
	"fmt"
	"io"
	"os"
	"time"

	"github.com/vbauerster/mpb/v8"
	"github.com/vbauerster/mpb/v8/decor"
	"golang.org/x/sys/unix"
)

// progress shows an upload: an mpb bar (bytes, rate) on a terminal, one
// plain line at the end otherwise (a CI log wants no carriage returns).
type progress struct {
	w     io.Writer
	label string
	p     *mpb.Progress
	bar   *mpb.Bar
	start time.Time
	n     int64
}

func newProgress(w io.Writer, label string) *progress {
	pr := &progress{w: w, label: label, start: time.Now()}
	if w != nil && isTerminal(w) {
		pr.p = mpb.New(mpb.WithOutput(w), mpb.WithWidth(40), mpb.WithRefreshRate(150*time.Millisecond))
		pr.bar = pr.p.AddBar(0,
			mpb.PrependDecorators(decor.Name(label+" "), decor.CountersKibiByte("% .1f / % .1f")),
			mpb.AppendDecorators(decor.Percentage(decor.WC{W: 5}), decor.Name(" "), decor.AverageSpeed(decor.SizeB1024(0), "% .1f")),
		)
	}
	return pr
}

func (p *progress) update(complete, total int64) {
	p.n = complete
	if p.bar != nil {
		p.bar.SetTotal(total, false)
		p.bar.SetCurrent(complete)
	}
}

func (p *progress) finish(ok bool) {
	if p.bar != nil {
		if ok {
			p.bar.SetTotal(-1, true)
		} else {
			p.bar.Abort(false)
		}
		p.p.Wait()
		return
	}
	if p.w == nil {
		return
	}
	d := time.Since(p.start)
	state := "uploaded"
	if !ok {
		state = "failed after"
	}
	fmt.Fprintf(p.w, "%s: %s %.1f MiB in %.1fs (%.1f MiB/s)\n", p.label, state, float64(p.n)/(1<<20), d.Seconds(), float64(p.n)/(1<<20)/max(d.Seconds(), 0.001))
}

func isTerminal(w io.Writer) bool {
	f, ok := w.(*os.File)
	if !ok {
		return false
	}
	_, err := unix.IoctlGetTermios(int(f.Fd()), unix.TCGETS)
	return err == nil
}
