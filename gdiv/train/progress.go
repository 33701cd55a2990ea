package train

import (
	"fmt"
	"io"
	"math"
)

// ProgressPrinter returns an SGDSettings.Progress callback that prints
// about twenty lines per run, and the last step, on w, so that a long run
// shows it is alive in a log as well as on a terminal. s is the run's
// settings (its stopping rule sets the scale: steps, or examples when the
// run stops by examples or has a policy) and n the data set size (for the
// epoch column). gdiv train and the Python reference.train print these.
func ProgressPrinter(w io.Writer, s SGDSettings, n int) func(Record) {
	total, unit := s.Steps, "steps"
	if total == 0 || (s.Examples > 0 && s.Policy != nil) {
		total, unit = s.Examples, "examples"
	}
	every := max(1, total/20)
	next := every
	return func(r Record) {
		done := r.Step
		if unit == "examples" {
			done = r.Examples
		}
		if done < next && done < total {
			return
		}
		for next <= done {
			next += every
		}
		fmt.Fprintf(w, "train: %5.1f%%  step %6d  examples %8d  epoch %6.2f  loss %-10.5g  batch %5d  B_S_hat %.4g\n",
			100*math.Min(1, float64(done)/float64(total)), r.Step, r.Examples, float64(r.Examples)/float64(n),
			r.Loss, r.Batch, r.BatchBound)
	}
}
