package main

import (
	"errors"
	"fmt"

	"github.com/gdiv/gdiv/gdiv"
)

const statsKeys = `Output keys:
  n               number of examples (rows)
  dim             dimension (columns)
  sum_sq_norms    sum_i |g_i|^2
  sq_norm_of_sum  |sum_i g_i|^2
  m2              M^2 = sum_sq_norms / n
  g               G = |mean_i g_i|^2 = sq_norm_of_sum / n^2
  diversity       sum_sq_norms / sq_norm_of_sum, in [1/n, inf]
  batch_bound     n * diversity = m2 / g, in [1, inf]
  noise_scale     batch_bound - 1 (McCandlish et al.'s simple noise scale)
`

var statsCmd = &command{
	name:    "stats",
	summary: "gradient diversity and batch-size bound of per-example gradients",
	usage: `Usage: gdiv stats [--format json|table] [--cols SPEC] FILE

Compute the gradient diversity (Definition 4) and the batch-size bound
(Definition 5) of the per-example gradients in FILE, one gradient per row.
diversity, batch_bound and noise_scale are inf when the gradients sum to
exactly zero.

` + statsKeys + "\n" + commonHelp,
	run: runStats,
}

var diffCmd = &command{
	name:    "diff",
	summary: "differential gradient diversity between two parameter points",
	usage: `Usage: gdiv diff [--format json|table] [--cols SPEC] FILE_W FILE_W2

Compute the differential gradient diversity and batch-size bound
(Definition 6) of the row-wise differences g_i(w) - g_i(w'): row i of FILE_W
holds example i's gradient at w, row i of FILE_W2 its gradient at w'. Both
files must have the same shape (after --cols, applied to both). The output
keys are those of gdiv stats, for the differences.

` + statsKeys + "\n" + commonHelp,
	run: runDiff,
}

func statsFields(s gdiv.Stats) []kv {
	return []kv{
		{"n", s.N},
		{"dim", s.Dim},
		{"sum_sq_norms", s.SumSqNorms},
		{"sq_norm_of_sum", s.SqNormOfSum},
		{"m2", s.M2},
		{"g", s.G},
		{"diversity", s.Diversity},
		{"batch_bound", s.BatchBound},
		{"noise_scale", s.NoiseScale},
	}
}

func runStats(e *env, args []string) error {
	fs, c := newFlagSet("stats")
	pos, err := parseArgs(fs, args)
	if err != nil {
		return flagError(err)
	}
	if err := c.check(); err != nil {
		return err
	}
	if err := positionals(pos, "FILE"); err != nil {
		return err
	}
	m, err := e.readMatrix(pos[0], c)
	if err != nil {
		return err
	}
	s, err := gdiv.ComputeStats(m.Data, m.Rows, m.Cols)
	if err != nil {
		return dataErr(pos[0], err)
	}
	return writeResult(e.stdout, c.format, statsFields(s))
}

func runDiff(e *env, args []string) error {
	fs, c := newFlagSet("diff")
	pos, err := parseArgs(fs, args)
	if err != nil {
		return flagError(err)
	}
	if err := c.check(); err != nil {
		return err
	}
	if err := positionals(pos, "FILE_W", "FILE_W2"); err != nil {
		return err
	}
	if pos[0] == "-" && pos[1] == "-" {
		return usagef("only one of FILE_W and FILE_W2 can be - (standard input)")
	}
	a, err := e.readMatrix(pos[0], c)
	if err != nil {
		return err
	}
	b, err := e.readMatrix(pos[1], c)
	if err != nil {
		return err
	}
	if a.Rows != b.Rows || a.Cols != b.Cols {
		return fmt.Errorf("shape mismatch: %s is %d×%d but %s is %d×%d (row i of both must be example i)",
			displayName(pos[0]), a.Rows, a.Cols, displayName(pos[1]), b.Rows, b.Cols)
	}
	s, err := gdiv.DifferentialStats(a.Data, b.Data, a.Rows, a.Cols)
	if err != nil {
		if errors.Is(err, gdiv.ErrAllZero) {
			return fmt.Errorf("%s and %s hold identical gradients: every difference is zero, so the differential diversity is 0/0 (undefined)",
				displayName(pos[0]), displayName(pos[1]))
		}
		return dataErr(pos[0]+" - "+pos[1], err)
	}
	return writeResult(e.stdout, c.format, statsFields(s))
}
