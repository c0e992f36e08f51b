package projectorcli

import (
	"fmt"
	"io"
	"os"
	"time"

	"github.com/schollz/progressbar/v3"
	"golang.org/x/term"
)

// reporter shows progress: a bar fitted to the terminal's width, or off a
// terminal (a log file, a pipe) a plain line at most every plainEvery.
type reporter struct {
	w     io.Writer
	tty   bool
	width int
	bar   *progressbar.ProgressBar
	desc  string

	lastLine  string
	lastPrint time.Time
	onLine    bool // a \r line is on screen
}

func newReporter(w io.Writer) *reporter {
	r := &reporter{w: w, width: 80}
	if f, ok := w.(*os.File); ok && term.IsTerminal(int(f.Fd())) {
		r.tty = true
		if cols, _, err := term.GetSize(int(f.Fd())); err == nil && cols > 0 {
			r.width = cols
		}
	}
	return r
}

func crop(s string, n int) string {
	if n <= 1 {
		return ""
	}
	rs := []rune(s)
	if len(rs) > n {
		return string(rs[:n-1]) + "…"
	}
	return s
}

// line shows a status line: in place on a terminal, else printed when it
// changes or every plainEvery.
func (r *reporter) line(s string) {
	if r.tty {
		fmt.Fprintf(r.w, "\r\x1b[K%s", crop(s, r.width-1))
		r.onLine = true
		return
	}
	if s != r.lastLine || time.Since(r.lastPrint) >= plainEvery {
		fmt.Fprintln(r.w, s)
		r.lastLine, r.lastPrint = s, time.Now()
	}
}

func (r *reporter) startBar(desc string, total int64) {
	r.desc = desc
	if !r.tty {
		r.lastLine = ""
		return
	}
	if r.onLine {
		fmt.Fprint(r.w, "\r\x1b[K")
		r.onLine = false
	}
	r.bar = progressbar.NewOptions64(total,
		progressbar.OptionSetWriter(r.w),
		progressbar.OptionSetDescription(desc),
		progressbar.OptionFullWidth(),
		progressbar.OptionShowCount(),
		progressbar.OptionShowIts(),
		progressbar.OptionSetItsString("ev"),
		progressbar.OptionSetPredictTime(true),
		progressbar.OptionThrottle(0),
		progressbar.OptionSetRenderBlankState(true),
		progressbar.OptionUseANSICodes(true),
	)
}

func (r *reporter) changeMax(total int64) {
	if r.bar != nil {
		r.bar.ChangeMax64(total)
	}
}

// set reports done of total events replayed, lag left.
func (r *reporter) set(done, total, lag int64) {
	r.setDetail(done, total, fmt.Sprintf("%d of %d events replayed, %d behind", done, total, lag))
}

// setDetail reports done of total; off a terminal the line ends with
// detail.
func (r *reporter) setDetail(done, total int64, detail string) {
	if r.bar != nil {
		_ = r.bar.Set64(done)
		return
	}
	pct := 100 * float64(done) / float64(max(total, 1))
	s := fmt.Sprintf("%s: %3.0f%% (%s)", r.desc, pct, detail)
	if time.Since(r.lastPrint) >= plainEvery || r.lastLine == "" {
		fmt.Fprintln(r.w, s)
		r.lastLine, r.lastPrint = s, time.Now()
	}
}

func (r *reporter) finishBar() {
	if r.bar != nil {
		_ = r.bar.Finish()
		fmt.Fprintln(r.w)
		r.bar = nil
	} else if r.desc != "" && !r.tty {
		fmt.Fprintf(r.w, "%s: 100%%\n", r.desc)
	}
	r.desc = ""
}

// interrupt leaves the cursor on a fresh line so that the reason that
// follows is not glued to a bar.
func (r *reporter) interrupt() {
	if r.bar != nil {
		_ = r.bar.Exit()
		fmt.Fprintln(r.w)
		r.bar = nil
	} else if r.onLine {
		fmt.Fprintln(r.w)
	}
	r.onLine = false
}

func (r *reporter) done(s string) {
	if r.onLine {
		fmt.Fprint(r.w, "\r\x1b[K")
		r.onLine = false
	}
	fmt.Fprintln(r.w, s)
}
