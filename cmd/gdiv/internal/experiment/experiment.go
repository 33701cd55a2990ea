package experiment

// gdiv experiment: the paper's experiments (Section 6) on the bundled data,
// run with the Go reference trainer. This file holds what the three
// experiments share — the command, the common flags, list parsing, seed
// averaging, and the table / JSON / CSV writers. The experiments are in
// experiment_replication.go, experiment_stability.go and
// experiment_adaptive.go. Every formula (losses, gradients, statistics,
// bounds, the trainer) comes from package gdiv; what lives here is
// orchestration: grids, loops over seeds and averages.

import (
	"encoding/csv"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"math"
	"os"
	"slices"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/gdiv/gdiv/cmd/gdiv/internal/cli"

	"gonum.org/v1/gonum/floats"
	"gonum.org/v1/gonum/optimize"

	"github.com/gdiv/gdiv/gdiv/train"
)

// Name, Summary and Usage describe the command "gdiv experiment" to the
// CLI's command table and help.
const (
	Name    = "experiment"
	Summary = "run the paper's experiments: replication (Fig. 3a), stability (Fig. 4a), adaptive batch"
)

// Usage is the help text of "gdiv experiment".
const Usage = experimentUsage

const experimentUsage = `Usage: gdiv experiment replication|stability|adaptive [flags]

Run one of the paper's experiments on the bundled digits data with the Go
reference trainer (mini-batch SGD, the paper's sum step w -= lr * sum_i g_i
unless stated otherwise). Progress lines go to stderr (one per finished
configuration, with the elapsed time); the result table goes to stdout.
Runs are deterministic for a fixed --seed: the same flags give the same
stdout (adaptive's wall_seconds column excepted).

Flags of every experiment:
  --quick              a small version (a few seconds; what the tests run);
                       flags given explicitly still win
  --seeds N            independent repetitions (default 5; 2 with --quick);
                       repetition k uses seed S+k for the data draws, the
                       initial weights and SGD's sampling
  --seed S             first seed (default 1)
  --format table|json  stdout format (default table)
  --csv FILE           write the experiment's data as CSV (see below)
  --plot FILE.png      write a PNG figure
  --quiet              no progress lines on stderr
  --data, --positive, --problem, --l2, --no-standardize, --hidden, --activation,
  --label              the data set and model, as for 'gdiv train' (defaults below)

Means are over seeds; "se" is the standard error of that mean (sd/sqrt(seeds),
0 with one seed). In JSON, +Inf is the string "inf" and an undefined value
is null; in tables an undefined value is "-".

replication — Figure 3a: large vs small batch on r-replicated data
  Binary logistic regression on digits, even vs odd (--positive 0,2,4,6,8),
  standardized, L2 --l2 (default 1e-3: without it a replicated set of n/r
  distinct points is separable, the loss tends to 0 and the ratio below to 0/0).
  For each r the data set is replaced by its r-replication (train.Replicate: a
  random n/r of the points, filled back to n by sampling them), drawn afresh
  per seed. Runs with batch --small and --large see the same number of
  examples (--epochs passes, rounded up to whole checkpoints); the training
  loss F(w) is evaluated every c examples, c = lcm(small, large) rounded to
  about n/2. Metric: the ratio F_large/F_small at each checkpoint, averaged
  over the checkpoints of the run, then over seeds. The step size is tuned
  per (r, batch, DIM) on the grid --lrs: the lr whose run has the smallest
  training loss averaged over the checkpoints (and seeds); a diverging lr
  is skipped. Each configuration is run without a DIM and with gradient
  dropout (--dropout P: gdiv.Dropout{P} on every per-example gradient).
  B_S(w0), B_S(w_final) and B_S(w*) are batch-size bounds of the replicated
  set (gdiv.ComputeStats of its n per-example gradients) at the initial
  weights, at the final weights of the small-batch no-DIM run, and at w*, the
  minimizer of the unreplicated training loss (L-BFGS). At w* the gradients
  of all n points cancel, so B_S(w*) is infinite up to rounding for r = 1,
  while a replicated set of n/r distinct points keeps about n/(r-1): the
  cap that replication puts on B_S wherever the model does not fit the kept
  subset itself.
    --r LIST        replication factors (default 1,2,4,8)
    --small B       small batch (default 16)     --large B   large batch (default 512)
    --lrs LIST      step-size grid (default 1e-4,2e-4,5e-4,1e-3,2e-3,5e-3,0.01,0.02,0.05,0.1,0.2;
                    --quick: 0.002,0.005,0.01,0.02,0.05)
    --epochs E      passes over the data per run (default 20; --quick 5)
    --dropout P     dropout probability of the DIM runs, 0 < P < 1 (default 0.5)
  Columns / JSON row keys: r, distinct (n/r), batch_bound_w0 (+_se),
  batch_bound_final (+_se), batch_bound_wstar (+_se), lr_small, lr_large, lr_small_dropout,
  lr_large_dropout, ratio (+_se), ratio_dropout (+_se). JSON: {"experiment",
  "data", "problem", "n", "params", "l2", "small", "large", "epochs",
  "examples", "checkpoint_every", "checkpoints", "dropout", "seeds", "seed",
  "lrs", "rows": [...]}. CSV: the rows. Plot: the ratio against r (no DIM,
  dropout; dashed: mean +- se) and the batch-size bounds against r.

stability — Figure 4a: distance between models trained on neighbouring sets
  S is digits (even vs odd, logistic, standardized on all 1797 examples,
  --l2 default 1e-3) without one held-out example h; S' is S with its
  example i replaced by h (Theorem 10's S^(i)); h and i are drawn per seed.
  Both are trained from the same w0 with the same SGD seed, hence the same
  example indices (the sampler does not look at the data): SGD runs on S
  recording its batches, which are replayed through train.SGDStep on S and
  on S' (bit-identical to SGD) to snapshot both weight vectors at each pass.
  Reported: the normalized distance sqrt(|w-w'|^2 / (|w|^2 + |w'|^2)) after
  each pass (at the first step that completes p*n examples, which for a
  batch that does not divide n is up to B-1 examples past it), per batch
  size and step size; B̄_S(w_T, w'_T), the differential
  batch-size bound (Definition 6: gdiv.DifferentialStats of the per-example
  gradients of S at w_T and w'_T); and gamma_eq9, the largest step size of
  eq. (9) (gdiv.StabilityStepConvex) with beta = max_i |x~_i|^2/4 + l2 for
  logistic (|x~_i|^2/2 + l2 for softmax; none for mlp, which is not convex),
  x~_i = [x_i, 1], and B̄ = the smallest B̄_S(w_T, w'_T) over the seeds, a
  plug-in value (the theorem wants a bound over all w != w'), so gamma_eq9
  indicates, it does not certify.
    --batches LIST  batch sizes (default 1,16,64,256)
    --lrs LIST      step sizes, each run for every batch size (default
                    0.003,0.03,0.1: about 2/beta, the serial bound, where every
                    batch is stable; then past the stable range of the
                    largest batches)
    --step sum|mean the step rule (default sum: the same per-example step for
                    every batch, the setting of Theorem 12)
    --passes P      passes over S (default 20; --quick 5)
  Columns / JSON row keys: lr, batch, distance (one per pass; the table shows
  passes 1, 2, 5, 10, 20, 50, ...), distance_se, final_distance (+_se),
  final_loss (F on S at w_T), diff_batch_bound (mean over seeds),
  diff_batch_bound_min, gamma_eq9. JSON: {"experiment", "data", "problem",
  "n", "params", "l2", "step", "passes", "beta", "glm_bound", "seeds", "seed",
  "lrs", "batches", "neighbours": [{"seed", "replaced", "replaced_label",
  "held_out", "held_out_label"}], "rows": [...]}; glm_bound is Theorem 1's
  lower bound n min|x~_i|^2/sigma_max^2 (for l2 = 0; it bounds B̄_S too). CSV: lr, batch,
  pass, distance, distance_se. Plot: the distance against passes, one panel
  per lr, one line per batch size.

adaptive — the diversity-driven batch size against fixed batches
  Softmax regression on digits (10 classes, standardized, --l2 default
  1e-4), sum step, the same example budget (--epochs passes) and the same
  per-example step --lr for three runs: a fixed small batch (--small), a
  fixed large batch (--large) and the adaptive policy B = delta*B_S_hat + 1
  (--delta, within [--min-batch, --max-batch], smoothed estimate --beta; the
  other 'gdiv train' policy flags apply). F* is min F (L-BFGS on the full
  training loss to |grad F| <= 1e-9, or its iteration limit). Criterion of
  Theorem 3: F_adaptive <= (1 + delta/2) F_small, on the raw loss ("ratio")
  and on the suboptimality, (F_adaptive - F*)/(F_small - F*) ("subopt_ratio").
    --lr G          per-example step of all three runs (default 0.05, the best
                    of 0.01..0.4 for the small batch at 20 epochs)
    --tune          tune lr per run instead, over --lrs (default 0.01,0.02,0.05,0.1,0.2),
                    by the mean final training loss
    --small B (16)  --large B (512)  --delta D (1)  --min-batch (16)  --max-batch (1024)
    --beta B        estimate smoothing (default 0.9)
    --epochs E      passes over the data (default 20; --quick 5)
  Columns / JSON row keys: run (small, large, adaptive), lr, steps (mean over
  seeds), examples (mean), mean_batch (examples/steps), final_loss (+_se),
  ratio (final_loss / small's), within_bound (ratio <= 1 + delta/2),
  subopt_ratio ((final_loss - F*)/(small's - F*)), subopt_within_bound,
  accuracy (training accuracy, mean), wall_seconds (mean per run), fewer_steps
  (small's steps / steps). JSON: {"experiment", "data", "problem", "n",
  "params", "l2", "epochs", "examples_budget", "delta", "bound" (1 + delta/2),
  "min_batch", "max_batch", "beta", "tuned", "seeds", "seed", "f_star",
  "f_star_grad_norm", "rows": [...]}. CSV: run, seed, step, examples, batch,
  loss (every evaluation of every run). Plot: F - F* and the batch size
  against examples seen, for the first seed.
`

var experimentNames = []string{"replication", "stability", "adaptive"}

// Run runs "gdiv experiment ARGS...": args[0] names the experiment, the
// rest are its flags. Errors are those the CLI reports with cli.Report: a
// *cli.UsageError for a bad command line, flag.ErrHelp for --help, other
// errors (bad data) labeled "experiment NAME".
func Run(e *cli.Env, args []string) error {
	if len(args) == 0 {
		return cli.Usagef("missing experiment name: want %s", strings.Join(experimentNames, ", "))
	}
	name := args[0]
	switch name {
	case "-h", "-help", "--help", "help":
		return flag.ErrHelp
	}
	var f func(e *cli.Env, args []string) error
	switch name {
	case "replication":
		f = runReplication
	case "stability":
		f = runStability
	case "adaptive":
		f = runAdaptive
	default:
		return cli.Usagef("unknown experiment %q: want %s", name, strings.Join(experimentNames, ", "))
	}
	if err := f(e, args[1:]); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return err
		}
		return &cli.LabeledError{Label: "experiment " + name, Err: err}
	}
	return nil
}

// --- common flags ------------------------------------------------------------

// expFlags are the flags every experiment has.
type expFlags struct {
	name      string
	quick     bool
	seeds     int
	seed      uint64
	format    string
	csv, plot string
	quiet     bool
}

func addExpFlags(fs *flag.FlagSet, name string) *expFlags {
	f := &expFlags{name: name}
	fs.BoolVar(&f.quick, "quick", false, "small version")
	fs.IntVar(&f.seeds, "seeds", 5, "repetitions")
	fs.Uint64Var(&f.seed, "seed", 1, "first seed")
	fs.StringVar(&f.format, "format", "table", "table or json")
	fs.StringVar(&f.csv, "csv", "", "CSV output")
	fs.StringVar(&f.plot, "plot", "", "PNG output")
	fs.BoolVar(&f.quiet, "quiet", false, "no progress")
	return f
}

// parse parses args into fs and checks the common flags; it returns the set
// of flags given. With --quick, --seeds defaults to 2.
func (f *expFlags) parse(fs *flag.FlagSet, args []string) (map[string]bool, error) {
	pos, err := cli.ParseArgs(fs, args)
	if err != nil {
		return nil, cli.FlagError(err)
	}
	if len(pos) > 0 {
		return nil, cli.Usagef("unexpected argument %q", pos[0])
	}
	set := cli.Given(fs)
	if f.quick && !set["seeds"] {
		f.seeds = 2
	}
	switch {
	case f.format != "json" && f.format != "table":
		return nil, cli.Usagef("--format %q: want json or table", f.format)
	case f.seeds < 1:
		return nil, cli.Usagef("--seeds %d: want at least 1", f.seeds)
	case f.seeds > 1000:
		return nil, cli.Usagef("--seeds %d: want at most 1000", f.seeds)
	case set["plot"] && f.plot == "":
		return nil, cli.Usagef("--plot needs a file name")
	case set["csv"] && f.csv == "":
		return nil, cli.Usagef("--csv needs a file name")
	}
	return set, nil
}

// seedOf returns the seed of repetition k.
func (f *expFlags) seedOf(k int) uint64 { return f.seed + uint64(k) }

// progress prints one progress line (unless --quiet) with the elapsed time.
type progress struct {
	w     io.Writer
	name  string
	start time.Time
	quiet bool
}

func (f *expFlags) newProgress(w io.Writer) *progress {
	return &progress{w: w, name: f.name, start: time.Now(), quiet: f.quiet}
}

func (p *progress) printf(format string, args ...any) {
	if p.quiet {
		return
	}
	fmt.Fprintf(p.w, "experiment %s: [%6.1fs] %s\n", p.name, time.Since(p.start).Seconds(), fmt.Sprintf(format, args...))
}

// --- list flags ----------------------------------------------------------------

// parseInts parses a comma-separated list of integers ≥ lo.
func parseInts(flagName, s string, lo int) ([]int, error) {
	var out []int
	for _, f := range strings.Split(s, ",") {
		f = strings.TrimSpace(f)
		if f == "" {
			continue
		}
		v, err := strconv.Atoi(f)
		if err != nil {
			return nil, cli.Usagef("--%s %q: %q is not an integer", flagName, s, f)
		}
		if v < lo {
			return nil, cli.Usagef("--%s %q: %d is below %d", flagName, s, v, lo)
		}
		out = append(out, v)
	}
	if len(out) == 0 {
		return nil, cli.Usagef("--%s %q: empty list", flagName, s)
	}
	return dedupInts(out), nil
}

// parsePositiveFloats parses a comma-separated list of finite numbers > 0.
func parsePositiveFloats(flagName, s string) ([]float64, error) {
	var out []float64
	for _, f := range strings.Split(s, ",") {
		f = strings.TrimSpace(f)
		if f == "" {
			continue
		}
		v, err := strconv.ParseFloat(f, 64)
		if err != nil || !(v > 0) || math.IsInf(v, 0) {
			return nil, cli.Usagef("--%s %q: %q is not a finite number > 0", flagName, s, f)
		}
		out = append(out, v)
	}
	if len(out) == 0 {
		return nil, cli.Usagef("--%s %q: empty list", flagName, s)
	}
	return dedupFloats(out), nil
}

// dedupInts sorts ascending and removes repeats.
func dedupInts(v []int) []int {
	s := slices.Clone(v)
	slices.Sort(s)
	return slices.Compact(s)
}

// dedupFloats sorts ascending and removes repeats.
func dedupFloats(v []float64) []float64 {
	s := slices.Clone(v)
	slices.Sort(s)
	return slices.Compact(s)
}

// applyDefaults sets the experiment's defaults of the shared problem flags
// that were not given: the data set (digits), the classes of a binary
// problem on digits (even vs odd) and the L2 coefficient.
func applyDefaults(f *cli.ProblemFlags, set map[string]bool, l2 float64) {
	if !set["data"] {
		f.Data = "digits"
	}
	if !set["positive"] && f.Problem == "logistic" && f.Data == "digits" {
		f.Positive = "0,2,4,6,8"
	}
	if !set["l2"] {
		f.L2 = l2
	}
}

func gcd(a, b int) int {
	for b != 0 {
		a, b = b, a%b
	}
	return a
}

// --- averages ------------------------------------------------------------------

// meanSE returns the mean of v and its standard error sd/sqrt(len v)
// (sample sd; 0 for a single value). Non-finite values propagate.
func meanSE(v []float64) (mean, se float64) {
	if len(v) == 0 {
		return math.NaN(), math.NaN()
	}
	for _, x := range v {
		mean += x
	}
	mean /= float64(len(v))
	if len(v) < 2 {
		return mean, 0
	}
	var ss float64
	for _, x := range v {
		ss += (x - mean) * (x - mean)
	}
	return mean, math.Sqrt(ss / float64(len(v)-1) / float64(len(v)))
}

// normDistance is the paper's normalized distance between two models,
// sqrt(|w - w'|^2 / (|w|^2 + |w'|^2)) (Section 6.2); 0 when both are zero.
func normDistance(w, w2 []float64) float64 {
	var d2, n2 float64
	for i := range w {
		d := w[i] - w2[i]
		d2 += d * d
		n2 += w[i]*w[i] + w2[i]*w2[i]
	}
	if n2 == 0 {
		return 0
	}
	return math.Sqrt(d2 / n2)
}

// --- output --------------------------------------------------------------------

// kv is one key of an obj and its value.
type kv struct {
	key string
	val any
}

// obj is a JSON object with ordered keys. Values: int, float64 (NaN is
// written as null, ±Inf as "inf"/"-inf"), string, bool, []float64, []int,
// []string, obj, []obj.
type obj []kv

func writeJSON(w io.Writer, o obj) error {
	var b strings.Builder
	encodeJSON(&b, o, "")
	b.WriteString("\n")
	_, err := io.WriteString(w, b.String())
	return err
}

func encodeJSON(b *strings.Builder, v any, indent string) {
	in := indent + "  "
	switch x := v.(type) {
	case obj:
		if len(x) == 0 {
			b.WriteString("{}")
			return
		}
		b.WriteString("{\n")
		for i, f := range x {
			k, _ := json.Marshal(f.key)
			fmt.Fprintf(b, "%s%s: ", in, k)
			encodeJSON(b, f.val, in)
			if i < len(x)-1 {
				b.WriteString(",")
			}
			b.WriteString("\n")
		}
		b.WriteString(indent + "}")
	case []obj:
		if len(x) == 0 {
			b.WriteString("[]")
			return
		}
		b.WriteString("[\n")
		for i, o := range x {
			b.WriteString(in)
			encodeJSON(b, o, in)
			if i < len(x)-1 {
				b.WriteString(",")
			}
			b.WriteString("\n")
		}
		b.WriteString(indent + "]")
	case []float64:
		b.WriteString("[")
		for i, f := range x {
			if i > 0 {
				b.WriteString(", ")
			}
			encodeJSON(b, f, in)
		}
		b.WriteString("]")
	case []int:
		b.WriteString("[")
		for i, n := range x {
			if i > 0 {
				b.WriteString(", ")
			}
			b.WriteString(strconv.Itoa(n))
		}
		b.WriteString("]")
	case float64:
		if math.IsNaN(x) {
			b.WriteString("null")
			return
		}
		b.WriteString(cli.JSONValue(x))
	default:
		b.WriteString(cli.JSONValue(x))
	}
}

// cell formats a table value: floats with 4 significant digits, NaN as "-".
func cell(v any) string {
	switch x := v.(type) {
	case float64:
		if math.IsNaN(x) {
			return "-"
		}
		if s, ok := cli.NonFinite(x); ok {
			return s
		}
		if a := math.Abs(x); a >= 1000 && a < 1e9 { // 36240, not 3.624e+04
			return strconv.FormatFloat(x, 'f', 0, 64)
		}
		return strconv.FormatFloat(x, 'g', 4, 64)
	case int:
		return strconv.Itoa(x)
	case bool:
		if x {
			return "yes"
		}
		return "no"
	case string:
		return x
	}
	return fmt.Sprint(v)
}

// pm formats "mean ± se" for a table.
func pm(mean, se float64) string {
	if math.IsNaN(mean) {
		return "-"
	}
	return cell(mean) + " ± " + cell(se)
}

// writeTable prints comment lines ("# ..."), then a header and rows with
// columns aligned (left-aligned text, right-aligned otherwise), then notes.
func writeTable(w io.Writer, comments []string, header []string, rows [][]string, notes []string) error {
	var b strings.Builder
	for _, c := range comments {
		b.WriteString("# " + c + "\n")
	}
	width := make([]int, len(header))
	for j, h := range header {
		width[j] = utf8.RuneCountInString(h)
	}
	for _, r := range rows {
		for j, c := range r {
			width[j] = max(width[j], utf8.RuneCountInString(c))
		}
	}
	line := func(cells []string) {
		for j, c := range cells {
			pad := strings.Repeat(" ", width[j]-utf8.RuneCountInString(c))
			if j > 0 {
				b.WriteString("  ")
			}
			if j == 0 {
				b.WriteString(c + pad)
			} else {
				b.WriteString(pad + c)
			}
		}
		b.WriteString("\n")
	}
	line(header)
	for _, r := range rows {
		line(r)
	}
	for _, n := range notes {
		b.WriteString("# " + n + "\n")
	}
	_, err := io.WriteString(w, b.String())
	return err
}

// writeCSVFile writes a header and rows of values to path; floats in the
// shortest form that reads back exactly, NaN as an empty cell.
func writeCSVFile(path string, header []string, rows [][]any) error {
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	cw := csv.NewWriter(f)
	_ = cw.Write(header)
	rec := make([]string, len(header))
	for _, r := range rows {
		for j, v := range r {
			switch x := v.(type) {
			case float64:
				switch {
				case math.IsNaN(x):
					rec[j] = ""
				case math.IsInf(x, 1):
					rec[j] = "+Inf"
				case math.IsInf(x, -1):
					rec[j] = "-Inf"
				default:
					rec[j] = strconv.FormatFloat(x, 'g', -1, 64)
				}
			default:
				rec[j] = cell(v)
			}
		}
		_ = cw.Write(rec)
	}
	cw.Flush()
	if err := cw.Error(); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

// fmtList formats floats compactly for a comment line.
func fmtList(v []float64) string {
	s := make([]string, len(v))
	for i, x := range v {
		s[i] = strconv.FormatFloat(x, 'g', -1, 64)
	}
	return strings.Join(s, ",")
}

func fmtInts(v []int) string {
	s := make([]string, len(v))
	for i, x := range v {
		s[i] = strconv.Itoa(x)
	}
	return strings.Join(s, ",")
}

// --- F* ----------------------------------------------------------------------

// minimizeLoss minimizes the training loss F = train.FullLoss(p, ·) from w
// in place with gonum's L-BFGS, until ‖∇F‖ ≤ gradTol or maxIter major
// iterations, and returns F and ‖∇F‖ at the result. It gives F* and w* for
// the suboptimality ratios of the convex problems; for a non-convex
// problem (mlp) the result is a local minimum. A line search that can no
// longer decrease F (convergence to rounding) ends the run without error.
func minimizeLoss(p train.Problem, w []float64, gradTol float64, maxIter int) (f, gradNorm float64) {
	prob := optimize.Problem{
		Func: func(x []float64) float64 { return train.FullLoss(p, nil, x) },
		Grad: func(grad, x []float64) { train.FullLoss(p, grad, x) },
	}
	settings := &optimize.Settings{
		GradientThreshold: gradTol,
		MajorIterations:   maxIter,
		Converger:         &optimize.FunctionConverge{Absolute: 0, Relative: 0, Iterations: maxIter},
	}
	res, err := optimize.Minimize(prob, w, settings, &optimize.LBFGS{Store: 10})
	if res == nil {
		g := make([]float64, len(w))
		f = train.FullLoss(p, g, w)
		return f, floats.Norm(g, 2)
	}
	_ = err // a failed line search at the rounding floor is not an error here
	copy(w, res.X)
	g := make([]float64, len(w))
	f = train.FullLoss(p, g, w)
	return f, floats.Norm(g, 2)
}
