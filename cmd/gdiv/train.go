package main

import (
	"flag"
	"fmt"
	"io"
	"math"
	"os"
	"time"

	"gonum.org/v1/plot/vg"

	"github.com/gdiv/gdiv/cmd/gdiv/internal/cli"
	"github.com/gdiv/gdiv/gdiv/train"
	"github.com/gdiv/gdiv/internal/plotx"
)

var trainCmd = &command{
	name:    "train",
	summary: "train a model with mini-batch SGD, fixed or diversity-adaptive batch size",
	usage: `Usage: gdiv train --data NAME|FILE [problem flags] --lr G (--batch N | --policy diversity [policy flags])
                  (--steps K | --epochs E) [--seed S] [mechanism flags] [--out history.csv] [--plot history.png]

Train with mini-batch SGD (the Go reference trainer) and report the run: progress
on stderr, a summary on stdout, the per-step history as CSV (--out) and a PNG of
loss, batch-bound estimate and batch size against examples seen (--plot).

Data:
  --data NAME|FILE     digits or breast_cancer (bundled), or a CSV/.npy/Arrow file
                       of features plus a label column
  --label COL          label column of FILE: name or 0-based index (default: last)
  --classes K          FILE's labels are classes 0..K-1 (an error names a row
                       that is not); 0 = real-valued targets. Default: inferred
                       (non-negative integer labels are classes)
  --positive LIST      labels that form class 1 for --problem logistic on a
                       multiclass data set, e.g. 0,2,4,6,8 (even digits)
  --no-standardize     keep raw features (default: zero mean, unit variance)

Problem:
  --problem P          leastsquares, logistic, softmax (default) or mlp
  --hidden H           MLP hidden units (default 32)
  --activation A       MLP activation: tanh (default) or relu
  --l2 L               L2 regularization, part of every f_i (default 1e-4)

SGD:
  --lr G               step size (required)
  --step sum|mean      sum (default, the paper's w -= G sum_i g_i) or mean (w -= G/B sum_i g_i)
  --batch N            fixed batch size; with --policy, the initial batch size
  --steps K | --epochs E   stop after K steps or E passes over the data
  --sampling S         replacement (default, the paper's) or shuffle (epochs)
  --radius R           project w onto the ball |w| <= R after each step (eq. 3)
  --beta B             smoothing of the batch-bound estimate, ratio of EMAs (default 0.9)
  --eval-every K       full training loss every K steps (default: about 100 per
                       run; every step with --policy)
  --seed S             seed of all randomness (default 1)

Adaptive batch size (--policy diversity): after each step
  B_next = delta * B_S_hat + 1, clamped to [min-batch, max-batch], rounded to a
  multiple of --multiple-of, changed only when the relative change reaches
  --hysteresis, by at most a factor --max-growth per step, after --warmup steps.
  --delta D (default 1)  --min-batch A (default 2)  --max-batch Z (default n)
  --multiple-of K (1)    --hysteresis H (0)         --max-growth F (2)   --warmup W (0)
  --lr-rule linear|sqrt|none   LR change when the batch changes (mean step only)

Mechanism (optional; applied to every per-example gradient before the sum):
  --mechanism dropout --p P [--rescale] | langevin --std S | quantize [--levels L]

Output:
  --out FILE           per-step history as CSV
  --plot FILE          PNG of the history
  --quiet              no progress lines on stderr
  --format json|table  summary format (default table)
  --max-bytes SIZE     refuse a data file, or a model (about 64 bytes per
                       parameter), larger than SIZE (default 4GiB; K, M, G suffixes)

Summary keys: data, problem, n, params, steps, examples, initial_loss, final_loss,
train_accuracy (classification; -1 otherwise), first_batch, final_batch,
max_batch_used, batch_bound (final smoothed estimate), wall_seconds.
`,
	run: runTrain,
}

func runTrain(e *env, args []string) error {
	fs := flag.NewFlagSet("train", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	format := fs.String("format", "table", "json or table")
	pf := addProblemFlags(fs, "softmax")
	pol := addPolicyFlags(fs)
	mf := addMechFlags(fs)
	lr := fs.Float64("lr", 0, "step size")
	step := fs.String("step", "sum", "sum or mean")
	batch := fs.Int("batch", 0, "batch size")
	steps := fs.Int("steps", 0, "number of steps")
	epochs := fs.Float64("epochs", 0, "passes over the data")
	sampling := fs.String("sampling", "replacement", "replacement or shuffle")
	radius := fs.Float64("radius", 0, "projection radius")
	beta := fs.Float64("beta", 0.9, "estimate smoothing")
	evalEvery := fs.Int("eval-every", 0, "full-loss period")
	seed := fs.Uint64("seed", 1, "seed")
	out := fs.String("out", "", "history CSV")
	plotPath := fs.String("plot", "", "history PNG")
	quiet := fs.Bool("quiet", false, "no progress")
	pos, err := parseArgs(fs, args)
	if err != nil {
		return flagError(err)
	}
	if *format != "json" && *format != "table" {
		return usagef("--format %q: want json or table", *format)
	}
	if len(pos) > 0 {
		return usagef("unexpected argument %q (the data set is given by --data)", pos[0])
	}
	set := given(fs)
	policy, err := pol.Build(set)
	if err != nil {
		return err
	}
	mech, err := mf.build(set, false)
	if err != nil {
		return err
	}
	switch {
	case !set["lr"]:
		return usagef("missing --lr (the step size)")
	case !(*lr > 0) || math.IsInf(*lr, 0):
		return usagef("--lr %v: want a finite step size > 0", *lr)
	case policy == nil && !set["batch"]:
		return usagef("missing --batch N (or --policy diversity)")
	case set["batch"] && *batch < 1:
		return usagef("--batch %d: want at least 1", *batch)
	case set["steps"] == set["epochs"]:
		return usagef("give exactly one of --steps and --epochs")
	case set["steps"] && *steps < 1:
		return usagef("--steps %d: want at least 1", *steps)
	case set["epochs"] && !(*epochs > 0 && *epochs < 1e9):
		return usagef("--epochs %v: want a number of passes > 0", *epochs)
	case !(*beta >= 0 && *beta < 1):
		return usagef("--beta %v: want 0 <= beta < 1", *beta)
	}
	rule, err := train.ParseStepRule(*step)
	if err != nil {
		return usagef("--step %q: want sum or mean", *step)
	}
	samp, err := train.ParseSampling(*sampling)
	if err != nil {
		return usagef("--sampling %q: want replacement or shuffle", *sampling)
	}

	ds, err := pf.Dataset()
	if err != nil {
		return err
	}
	if params, need := pf.ProblemBytes(ds.D, ds.Classes); need > float64(*pf.MaxBytes) {
		return cli.CheckAlloc(*pf.MaxBytes, need, fmt.Sprintf("--problem %s with %.4g parameters", pf.Problem, params))
	}
	prob, err := pf.Build(ds)
	if err != nil {
		return err
	}
	s := train.SGDSettings{LR: *lr, Step: rule, Batch: *batch, Policy: policy, Steps: *steps,
		Sampling: samp, Radius: *radius, Mechanism: mech, Seed: *seed, EstimatorBeta: *beta, EvalEvery: *evalEvery}
	if set["epochs"] {
		s.Examples = int(math.Ceil(*epochs * float64(ds.N)))
	}
	if s.EvalEvery == 0 { // about 100 evaluations of F(w) per run, for the plot and the history
		switch {
		case policy != nil:
			s.EvalEvery = 1 // the batch grows: few steps, each worth plotting
		case s.Steps > 0:
			s.EvalEvery = max(1, s.Steps/100)
		default:
			s.EvalEvery = max(1, s.Examples / *batch / 100)
		}
	}
	if !*quiet {
		s.Progress = train.ProgressPrinter(e.stderr, s, ds.N)
	}
	start := time.Now()
	res, err := train.SGD(prob, train.SeededInitialWeights(prob, *seed), s)
	wall := time.Since(start).Seconds()
	if err != nil {
		return err
	}
	if *out != "" {
		if err := writeHistory(*out, res.History); err != nil {
			return err
		}
	}
	if *plotPath != "" {
		if err := plotHistory(*plotPath, fmt.Sprintf("%s on %s", pf.Problem, pf.Data), ds.N, res.History); err != nil {
			return err
		}
	}
	acc := -1.0
	if ds.Classes >= 2 {
		if acc, err = train.Accuracy(prob, res.W, ds); err != nil {
			return err
		}
	}
	maxB := 0
	for _, r := range res.History {
		maxB = max(maxB, r.Batch)
	}
	last := res.History[len(res.History)-1]
	return writeResult(e.stdout, *format, []kv{
		{"data", pf.Data}, {"problem", pf.Problem}, {"n", ds.N}, {"params", prob.NumParams()},
		{"steps", res.Steps}, {"examples", res.Examples},
		{"initial_loss", res.InitialLoss}, {"final_loss", res.FinalLoss}, {"train_accuracy", acc},
		{"first_batch", res.History[0].Batch}, {"final_batch", last.Batch}, {"max_batch_used", maxB},
		{"batch_bound", res.Estimate.BatchBound}, {"wall_seconds", math.Round(wall*1000) / 1000},
	})
}

func writeHistory(path string, h []train.Record) error {
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	if err := train.WriteHistoryCSV(f, h); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

// plotHistory draws loss, batch-bound estimate and batch size against the
// number of examples seen.
func plotHistory(path, title string, n int, h []train.Record) error {
	var ex, loss, bound, batch []float64
	for _, r := range h {
		x := float64(r.Examples)
		ex = append(ex, x)
		batch = append(batch, float64(r.Batch))
		bound = append(bound, r.BatchBound)
		if r.Evaluated {
			loss = append(loss, r.Loss)
		} else {
			loss = append(loss, math.NaN()) // only evaluated points are drawn
		}
	}
	panels := []plotx.Panel{
		{Title: title + ": training loss F(w)", XLabel: "examples seen", YLabel: "loss", LogY: true,
			Series: []plotx.Series{{Name: "F(w)", X: ex, Y: loss, Points: true}}},
		{Title: "batch-size bound estimate and batch size", XLabel: "examples seen", YLabel: "examples", LogY: true, LegendBottom: true,
			Series: []plotx.Series{{Name: "B_S estimate (smoothed)", X: ex, Y: bound}, {Name: "batch size B", X: ex, Y: batch, Dashed: true}}},
	}
	return plotx.Save(path, panels, 1, 7*vg.Inch, 3*vg.Inch)
}
