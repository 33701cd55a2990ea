package experiment

// gdiv experiment stability: the paper's Figure 4a (Section 6.2) with the
// quantities of Theorem 12. See experimentUsage for the set-up.

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"math"
	"math/rand/v2"
	"slices"
	"strconv"

	"github.com/gdiv/gdiv/cmd/gdiv/internal/cli"

	"gonum.org/v1/plot/vg"

	"github.com/gdiv/gdiv/gdiv"
	"github.com/gdiv/gdiv/gdiv/data"
	"github.com/gdiv/gdiv/gdiv/train"
	"github.com/gdiv/gdiv/internal/plotx"
)

// stabilityStream is the PCG stream of the held-out / replaced draws.
const stabilityStream uint64 = 0x53544142 // "STAB"

// neighbours is one pair of data sets differing in one example.
type neighbours struct {
	s, s2    train.Problem
	heldOut  int // index of the held-out example h in the full data set
	replaced int // index in S of the example replaced by h in S'
	// labels of the replaced example and of h
	oldLabel, newLabel float64
}

// stabRow is one (step size, batch size) line of the result.
type stabRow struct {
	lr                    float64
	batch                 int
	diverged              int       // seeds whose run diverged (left out of the means)
	dist, distSE          []float64 // per pass
	loss, lossSE          float64   // F_S(w_T)
	diffBound, diffBound0 float64   // mean and smallest B̄_S(w_T, w'_T) over seeds
	gamma                 float64   // eq. (9) with the smallest B̄_S
}

func runStability(e *cli.Env, args []string) error {
	fs := flag.NewFlagSet("experiment stability", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	ef := addExpFlags(fs, "stability")
	pf := cli.AddProblemFlags(fs, "logistic")
	batchFlag := fs.String("batches", "1,16,64,256", "batch sizes")
	lrFlag := fs.String("lrs", "0.003,0.03,0.1", "step sizes")
	stepFlag := fs.String("step", "sum", "sum or mean")
	passes := fs.Int("passes", 20, "passes over S")
	set, err := ef.parse(fs, args)
	if err != nil {
		return err
	}
	if ef.quick && !set["passes"] {
		*passes = 5
	}
	applyDefaults(pf, set, 1e-3)
	batches, err := parseInts("batches", *batchFlag, 1)
	if err != nil {
		return err
	}
	lrs, err := parsePositiveFloats("lrs", *lrFlag)
	if err != nil {
		return err
	}
	rule, err := train.ParseStepRule(*stepFlag)
	if err != nil {
		return cli.Usagef("--step %q: want sum or mean", *stepFlag)
	}
	if *passes < 1 || *passes > 10000 {
		return cli.Usagef("--passes %d: want 1 to 10000", *passes)
	}
	full, err := pf.Dataset()
	if err != nil {
		return err
	}
	if full.N < 3 {
		return fmt.Errorf("%s has %d examples; the experiment needs at least 3", pf.Data, full.N)
	}
	if _, err := pf.Build(full); err != nil {
		return err
	}
	n := full.N - 1
	if batches[len(batches)-1] > 1<<20 {
		return cli.Usagef("--batches %d: want at most %d", batches[len(batches)-1], 1<<20)
	}

	// The neighbouring data sets of each seed.
	pairs := make([]neighbours, ef.seeds)
	glm := math.NaN() // the smallest over the seeds; NaN when Theorem 1 does not apply
	for k := range pairs {
		if pairs[k], err = makeNeighbours(full, pf, ef.seedOf(k)); err != nil {
			return err
		}
		if b := glmBound(pairs[k].s); !(b >= glm) && !math.IsNaN(b) {
			glm = b
		}
	}
	beta := smoothness(pf.Problem, full, pf.L2)
	np := pairs[0].s.NumParams()

	prog := ef.newProgress(e.Stderr)
	var rows []stabRow
	for _, lr := range lrs {
		for _, b := range batches {
			row := stabRow{lr: lr, batch: b, dist: make([]float64, *passes), distSE: make([]float64, *passes),
				diffBound0: math.Inf(1)}
			dists := make([][]float64, *passes)
			var losses, bounds []float64
			for k, pr := range pairs {
				d, loss, bound, err := stabilityRun(pr, lr, rule, b, *passes, ef.seedOf(k))
				if err != nil {
					return err
				}
				if d == nil {
					row.diverged++
					continue
				}
				for j := range d {
					dists[j] = append(dists[j], d[j])
				}
				losses = append(losses, loss)
				bounds = append(bounds, bound)
				if !math.IsNaN(bound) {
					row.diffBound0 = min(row.diffBound0, bound)
				}
			}
			for j := range dists {
				row.dist[j], row.distSE[j] = meanSE(dists[j])
			}
			row.loss, row.lossSE = meanSE(losses)
			row.diffBound = nanMean(bounds)
			if math.IsInf(row.diffBound0, 1) {
				row.diffBound0 = math.NaN()
			}
			row.gamma = math.NaN()
			if !math.IsNaN(beta) && row.diffBound0 > 0 {
				if g, err := gdiv.StabilityStepConvex(beta, n, b, row.diffBound0); err == nil {
					row.gamma = g
				}
			}
			prog.printf("lr %-6g batch %4d: distance after %d passes %.4g, F(w_T) %.4g, B̄_S(w_T,w'_T) %.4g (%d seeds, %d diverged)",
				lr, b, *passes, row.dist[*passes-1], row.loss, row.diffBound, ef.seeds, row.diverged)
			rows = append(rows, row)
		}
	}

	if ef.csv != "" {
		var vals [][]any
		for _, r := range rows {
			for j := range r.dist {
				vals = append(vals, []any{r.lr, r.batch, j + 1, r.dist[j], r.distSE[j]})
			}
		}
		if err := writeCSVFile(ef.csv, []string{"lr", "batch", "pass", "distance", "distance_se"}, vals); err != nil {
			return err
		}
	}
	if ef.plot != "" {
		if err := plotStability(ef.plot, rows, lrs, batches, rule); err != nil {
			return err
		}
	}
	if ef.format == "json" {
		jrows := make([]obj, len(rows))
		for i, r := range rows {
			jrows[i] = obj{{"lr", r.lr}, {"batch", r.batch}, {"diverged", r.diverged},
				{"distance", r.dist}, {"distance_se", r.distSE},
				{"final_distance", r.dist[*passes-1]}, {"final_distance_se", r.distSE[*passes-1]},
				{"final_loss", r.loss}, {"diff_batch_bound", r.diffBound}, {"diff_batch_bound_min", r.diffBound0},
				{"gamma_eq9", r.gamma}}
		}
		return writeJSON(e.Stdout, obj{
			{"experiment", "stability"}, {"data", pf.Data}, {"problem", pf.Problem}, {"positive", pf.Positive},
			{"n", n}, {"params", np}, {"l2", pf.L2}, {"step", rule.String()}, {"passes", *passes},
			{"beta", beta}, {"glm_bound", glm}, {"seeds", ef.seeds}, {"seed", int(ef.seed)},
			{"lrs", lrs}, {"batches", batches}, {"neighbours", pairsJSON(pairs, ef)}, {"rows", jrows},
		})
	}

	shown := passColumns(*passes)
	data := pf.Data
	if pf.Positive != "" {
		data += " (class 1 = labels " + pf.Positive + ")"
	}
	comments := []string{
		fmt.Sprintf("stability (Figure 4a): %s on %s, l2 = %g, %s step; S = the data without one held-out example h (n = %d),",
			pf.Problem, data, pf.L2, rule, n),
		"  S' = S with example i replaced by h (h, i drawn per seed); same w0, same SGD seed, hence the same example indices",
		"distance = sqrt(|w-w'|^2/(|w|^2+|w'|^2)) after p passes, mean over seeds (± se for the final one)",
		fmt.Sprintf("B̄_S = differential batch bound of S at (w_T, w'_T) (Def. 6), mean over seeds; gamma_eq9 = eq. (9) step bound with beta = %s",
			fmtMaybe(beta)),
		fmt.Sprintf("  and the smallest B̄_S over the seeds (a plug-in value: eq. 9 wants a bound over all w != w'); Theorem 1 bound on B̄_S (l2 = 0): %s",
			fmtMaybe(glm)),
		fmt.Sprintf("%d seeds from %d; replaced example (label) <- held-out example (label): %s", ef.seeds, ef.seed, pairsText(pairs)),
	}
	th := []string{"lr", "batch"}
	for _, p := range shown {
		th = append(th, "d@"+strconv.Itoa(p))
	}
	th = append(th, fmt.Sprintf("final (%d passes)", *passes), "F(w_T)", "B̄_S(w_T,w'_T)", "gamma_eq9")
	anyDiverged := slices.ContainsFunc(rows, func(r stabRow) bool { return r.diverged > 0 })
	if anyDiverged {
		th = append(th, "diverged")
	}
	var tr [][]string
	for _, r := range rows {
		line := []string{cell(r.lr), cell(r.batch)}
		for _, p := range shown {
			line = append(line, cell(r.dist[p-1]))
		}
		line = append(line, pm(r.dist[*passes-1], r.distSE[*passes-1]), cell(r.loss), cell(r.diffBound), cell(r.gamma))
		if anyDiverged {
			line = append(line, cell(r.diverged))
		}
		tr = append(tr, line)
	}
	return writeTable(e.Stdout, comments, th, tr, nil)
}

// makeNeighbours draws the held-out example h and the replaced position i
// of one seed and builds the problems on S and S'.
func makeNeighbours(full *data.Dataset, pf *cli.ProblemFlags, seed uint64) (neighbours, error) {
	rng := rand.New(rand.NewPCG(seed, stabilityStream))
	h := int(rng.Uint64() % uint64(full.N))
	keep := make([]int, 0, full.N-1)
	for j := range full.N {
		if j != h {
			keep = append(keep, j)
		}
	}
	s := full.Subset(keep)
	i := int(rng.Uint64() % uint64(s.N))
	s2 := s.Clone()
	copy(s2.X[i*s.D:(i+1)*s.D], full.Row(h))
	s2.Y[i] = full.Y[h]
	p, err := pf.Build(s)
	if err != nil {
		return neighbours{}, err
	}
	p2, err := pf.Build(s2)
	if err != nil {
		return neighbours{}, err
	}
	return neighbours{s: p, s2: p2, heldOut: h, replaced: i, oldLabel: s.Y[i], newLabel: full.Y[h]}, nil
}

// stabilityRun trains on S with SGD (recording the batches), replays the
// batches on S and S' with train.SGDStep and returns the normalized distance
// after each pass, F_S(w_T) and B̄_S(w_T, w'_T) (NaN when w_T = w'_T). A nil
// distance slice means the run diverged.
func stabilityRun(pr neighbours, lr float64, rule train.StepRule, b, passes int, seed uint64) ([]float64, float64, float64, error) {
	n := pr.s.NumExamples()
	steps := (passes*n + b - 1) / b
	w0 := train.SeededInitialWeights(pr.s, seed)
	res, err := train.SGD(pr.s, w0, train.SGDSettings{LR: lr, Step: rule, Batch: b, Steps: steps, EvalEvery: -1,
		Seed: seed, RecordIndices: true})
	if err != nil {
		if errors.Is(err, gdiv.ErrNonFinite) || errors.Is(err, gdiv.ErrOverflow) {
			return nil, 0, 0, nil
		}
		return nil, 0, 0, err
	}
	w := slices.Clone(w0)
	w2 := slices.Clone(w0)
	dist := make([]float64, 0, passes)
	for k, idx := range res.Batches {
		if err := train.SGDStep(w, w, pr.s, idx, lr, rule, 0); err != nil {
			return nil, 0, 0, fmt.Errorf("internal error: replaying SGD's batches: %w", err)
		}
		if err := train.SGDStep(w2, w2, pr.s2, idx, lr, rule, 0); err != nil {
			if errors.Is(err, gdiv.ErrNonFinite) || errors.Is(err, gdiv.ErrOverflow) {
				return nil, 0, 0, nil
			}
			return nil, 0, 0, err
		}
		// Pass p ends at the first step whose examples reach p·n.
		for len(dist) < passes && (k+1)*b >= (len(dist)+1)*n {
			dist = append(dist, normDistance(w, w2))
		}
	}
	if !slices.Equal(w, res.W) {
		return nil, 0, 0, errors.New("internal error: the replayed weights differ from SGD's")
	}
	g := make([]float64, n*len(w))
	g2 := make([]float64, n*len(w))
	train.PerExampleGrads(g, pr.s, w, nil)
	train.PerExampleGrads(g2, pr.s, w2, nil)
	bound := math.NaN()
	st, err := gdiv.DifferentialStats(g, g2, n, len(w))
	switch {
	case err == nil:
		bound = st.BatchBound
	case !errors.Is(err, gdiv.ErrAllZero): // ErrAllZero: w_T = w'_T, B̄_S undefined
		return nil, 0, 0, err
	}
	return dist, res.FinalLoss, bound, nil
}

// pairsJSON describes the neighbouring data sets of each seed.
func pairsJSON(pairs []neighbours, ef *expFlags) []obj {
	out := make([]obj, len(pairs))
	for k, p := range pairs {
		out[k] = obj{{"seed", int(ef.seedOf(k))}, {"replaced", p.replaced}, {"replaced_label", p.oldLabel},
			{"held_out", p.heldOut}, {"held_out_label", p.newLabel}}
	}
	return out
}

func pairsText(pairs []neighbours) string {
	var b []byte
	for k, p := range pairs {
		if k > 0 {
			b = append(b, ", "...)
		}
		b = fmt.Appendf(b, "S[%d] (%g) <- %d (%g)", p.replaced, p.oldLabel, p.heldOut, p.newLabel)
	}
	return string(b)
}

// smoothness returns an upper bound β on the smoothness of every f_i of the
// problem on ds (all rows, so it covers S and S'): with x~ = [x, 1],
//
//	logistic      σ'(z) x~x~ᵀ + λI,            σ' ≤ 1/4:  β ≤ max|x~|²/4 + λ
//	softmax       (diag p − ppᵀ) ⊗ x~x~ᵀ + λI,  ‖diag p − ppᵀ‖ ≤ 1/2:  β ≤ max|x~|²/2 + λ
//	leastsquares  x~x~ᵀ + λI:                  β ≤ max|x~|² + λ
//
// and NaN for mlp (not convex: Theorem 12 does not apply).
func smoothness(problem string, ds *data.Dataset, l2 float64) float64 {
	var c float64
	switch problem {
	case "logistic":
		c = 0.25
	case "softmax":
		c = 0.5
	case "leastsquares":
		c = 1
	default:
		return math.NaN()
	}
	var m float64
	for i := range ds.N {
		s := 1.0 // the intercept's feature
		for _, x := range ds.Row(i) {
			s += x * x
		}
		m = max(m, s)
	}
	return c*m + l2
}

// glmBound returns Theorem 1's lower bound n·min|x~_i|²/σ²_max(X~) on B_S and
// B̄_S (λ = 0) for a problem with a GLM design (logistic, least squares),
// NaN for the others.
func glmBound(p train.Problem) float64 {
	g, ok := p.(train.GLM)
	if !ok {
		return math.NaN()
	}
	b, err := gdiv.BoundGLM(g.Design())
	if err != nil {
		return math.NaN()
	}
	return b.BatchBoundLower
}

// nanMean is the mean of the values that are not NaN (NaN if none).
func nanMean(v []float64) float64 {
	var s float64
	var k int
	for _, x := range v {
		if !math.IsNaN(x) {
			s += x
			k++
		}
	}
	if k == 0 {
		return math.NaN()
	}
	return s / float64(k)
}

// passColumns returns the passes shown as table columns: 1, 2, 5, 10, 20,
// 50, … below the last pass (which has its own column).
func passColumns(passes int) []int {
	var out []int
	for m := 1; m < passes; m *= 10 {
		for _, f := range []int{1, 2, 5} {
			if p := f * m; p < passes {
				out = append(out, p)
			}
		}
	}
	return out
}

func fmtMaybe(v float64) string {
	if math.IsNaN(v) {
		return "not stated for this problem"
	}
	return cell(v)
}

func plotStability(path string, rows []stabRow, lrs []float64, batches []int, rule train.StepRule) error {
	var panels []plotx.Panel
	for _, lr := range lrs {
		pn := plotx.Panel{Title: fmt.Sprintf("Figure 4a: models trained on neighbouring sets, lr %g (%s step)", lr, rule),
			XLabel: "passes over the data", YLabel: "normalized distance", LegendBottom: true}
		for _, r := range rows {
			if r.lr != lr {
				continue
			}
			x := make([]float64, len(r.dist))
			for j := range x {
				x[j] = float64(j + 1)
			}
			pn.Series = append(pn.Series, plotx.Series{Name: fmt.Sprintf("batch %d", r.batch), X: x, Y: r.dist})
		}
		lo, hi := positiveRange(pn.Series)
		if !(hi > 0) { // e.g. every run diverged: keep the figure drawable
			continue
		}
		pn.LogY = hi > 10*lo // a log axis needs a decade to show its ticks
		panels = append(panels, pn)
	}
	if len(panels) == 0 {
		return errors.New("nothing to plot: no run gave a positive finite distance")
	}
	return plotx.Save(path, panels, 1, 6*vg.Inch, 3*vg.Inch)
}

// positiveRange returns the smallest and largest positive finite values of
// the series (0, 0 when there are none).
func positiveRange(ss []plotx.Series) (lo, hi float64) {
	lo = math.Inf(1)
	for _, s := range ss {
		for _, y := range s.Y {
			if y > 0 && !math.IsInf(y, 0) {
				lo, hi = min(lo, y), max(hi, y)
			}
		}
	}
	if hi == 0 {
		return 0, 0
	}
	return lo, hi
}
