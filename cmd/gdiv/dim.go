package main

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"strings"

	"github.com/gdiv/gdiv/cmd/gdiv/internal/cli"
	"github.com/gdiv/gdiv/gdiv"
)

var dimCmd = &command{
	name:    "dim",
	summary: "expected diversity under a diversity-inducing mechanism (dropout, langevin, quantize)",
	usage: `Usage: gdiv dim --mechanism dropout|langevin|quantize [mechanism flags]
                [--samples N [--seed K]] [--format json|table] [--cols SPEC] FILE

Compute, in closed form (eqs. 22-24 of the paper), the expected gradient
diversity and batch-size bound after applying a diversity-inducing mechanism
(DIM) independently to each per-example gradient in FILE, next to those of the
gradients themselves. With --samples, also estimate the expected diversity by
Monte Carlo, as an independent check.

Mechanisms and their flags (a flag of another mechanism is an error):
  --mechanism dropout   keep each coordinate with probability 1-P
      --p P             drop probability, 0 <= P < 1 (required)
      --rescale         divide kept coordinates by 1-P (unbiased dropout)
  --mechanism langevin  add Gaussian noise N(0, S^2 I)
      --std S           noise standard deviation, S >= 0 (required)
  --mechanism quantize  stochastic quantization with L levels (QSGD)
      --levels L        number of levels, L >= 1 (default 1, the paper's Q)

Monte Carlo:
  --samples N           number of random draws, N >= 2
  --seed K              seed of the random source (default 1; needs --samples)

Output keys:
  mechanism         the mechanism's name
  diversity         expected diversity under the mechanism (eq. 6)
  batch_bound       n * diversity
  base_diversity    diversity of the gradients themselves
  base_batch_bound  batch-size bound of the gradients themselves
  mc_diversity      Monte-Carlo estimate of diversity (only with --samples)
  mc_stderr         its standard error (only with --samples)
diversity and batch_bound are inf when the expected squared norm of the sum
is zero; base_* are inf when the gradients sum to exactly zero.

` + commonHelp,
	run: runDim,
}

func runDim(e *env, args []string) error {
	fs, c := newFlagSet("dim")
	mf := addMechFlags(fs)
	samples := fs.Int("samples", 0, "Monte-Carlo draws")
	seed := fs.Uint64("seed", 1, "Monte-Carlo seed")
	pos, err := parseArgs(fs, args)
	if err != nil {
		return flagError(err)
	}
	if err := c.check(); err != nil {
		return err
	}
	set := given(fs)

	m, err := mf.build(set, true)
	if err != nil {
		return err
	}
	if set["samples"] && *samples < 2 {
		return usagef("--samples %d: want at least 2 draws (the standard error needs 2)", *samples)
	}
	if set["seed"] && !set["samples"] {
		return usagef("--seed applies only with --samples")
	}
	if err := positionals(pos, "FILE"); err != nil {
		return err
	}
	// MonteCarlo holds two float64 per draw and a copy of the gradients.
	if err := cli.CheckAlloc(*c.maxBytes, 16*float64(*samples), fmt.Sprintf("--samples %d", *samples)); err != nil {
		return err
	}

	x, err := e.readMatrix(pos[0], c)
	if err != nil {
		return err
	}
	if err := cli.CheckAlloc(*c.maxBytes, 16*float64(*samples)+8*float64(len(x.Data)), fmt.Sprintf("--samples %d on %d×%d gradients", *samples, x.Rows, x.Cols)); err != nil {
		return err
	}
	ex, err := gdiv.Expected(m, x.Data, x.Rows, x.Cols)
	if err != nil {
		return dimErr(pos[0], err)
	}
	fields := []kv{
		{"mechanism", m.Name()},
		{"diversity", ex.Diversity},
		{"batch_bound", ex.BatchBound},
		{"base_diversity", ex.BaseDiversity},
		{"base_batch_bound", ex.BaseBatchBound},
	}
	if set["samples"] {
		rng := rand.New(rand.NewPCG(*seed, 0))
		mc, err := gdiv.MonteCarlo(m, x.Data, x.Rows, x.Cols, *samples, rng)
		if err != nil {
			return dimErr(pos[0], err)
		}
		fields = append(fields, kv{"mc_diversity", mc.Diversity}, kv{"mc_stderr", mc.StdErr})
	}
	return writeResult(e.stdout, c.format, fields)
}

// dimErr reports a library error: a parameter error is a usage error, the
// rest are data errors.
func dimErr(path string, err error) error {
	if errors.Is(err, gdiv.ErrParam) {
		return usagef("%s", strings.TrimPrefix(err.Error(), "gdiv: "))
	}
	return dataErr(path, err)
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}
