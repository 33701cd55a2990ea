package main

import (
	"github.com/gdiv/gdiv/gdiv"
)

var boundCmd = &command{
	name:    "bound",
	summary: "data-dependent lower bounds on the batch-size bound (glm, sparse)",
	usage: `Usage: gdiv bound glm    [--format json|table] [--cols SPEC] FILE
       gdiv bound sparse [--format json|table] [--cols SPEC] FILE

Lower bounds on the batch-size bound that hold for every model w (Section 4.1).

gdiv bound glm FILE
  Theorem 1, generalized linear models f_i(w) = l_i(x_i'w): the rows of FILE
  are the feature vectors x_i; batch_bound >= n * min_i |x_i|^2 / sigma_max(X)^2.
  Output keys:
    n                  number of examples (rows)
    dim                dimension (columns)
    min_sq_norm        min_i |x_i|^2
    sigma_max_sq       largest eigenvalue of X'X
    batch_bound_lower  n * min_sq_norm / sigma_max_sq, in [0, n]

gdiv bound sparse FILE
  Theorem 2, sparse conflicts: the rows of FILE are gradients (or any values
  with the same support, e.g. 1s); examples i and j conflict when their
  non-zero coordinates overlap; batch_bound >= n / (max_degree + 1).
  Output keys:
    n                  number of examples (rows)
    max_degree         maximum number of other examples one example conflicts with
    batch_bound_lower  n / (max_degree + 1)

` + commonHelp,
	run: runBound,
}

func runBound(e *env, args []string) error {
	fs, c := newFlagSet("bound")
	pos, err := parseArgs(fs, args)
	if err != nil {
		return flagError(err)
	}
	if err := c.check(); err != nil {
		return err
	}
	if len(pos) == 0 {
		return usagef("missing kind: want glm or sparse")
	}
	kind := pos[0]
	if kind != "glm" && kind != "sparse" {
		return usagef("unknown kind %q: want glm or sparse", kind)
	}
	label := "bound " + kind
	if err := positionals(pos[1:], "FILE"); err != nil {
		return &labeledError{Label: label, Err: err}
	}
	x, err := e.readMatrix(pos[1], c)
	if err != nil {
		return &labeledError{Label: label, Err: err}
	}
	var fields []kv
	if kind == "glm" {
		b, err := gdiv.BoundGLM(x.Data, x.Rows, x.Cols)
		if err != nil {
			return &labeledError{Label: label, Err: dataErr(pos[1], err)}
		}
		fields = []kv{
			{"n", b.N},
			{"dim", b.Dim},
			{"min_sq_norm", b.MinSqNorm},
			{"sigma_max_sq", b.SigmaMaxSq},
			{"batch_bound_lower", b.BatchBoundLower},
		}
	} else {
		b, err := gdiv.BoundSparse(x.Data, x.Rows, x.Cols)
		if err != nil {
			return &labeledError{Label: label, Err: dataErr(pos[1], err)}
		}
		fields = []kv{
			{"n", b.N},
			{"max_degree", b.MaxDegree},
			{"batch_bound_lower", b.BatchBoundLower},
		}
	}
	return writeResult(e.stdout, c.format, fields)
}
