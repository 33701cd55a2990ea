package experiment

// gdiv experiment replication: the paper's Figure 3a (Section 6.1) on
// digits. See experimentUsage for what is measured and how.

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"math"
	"math/rand/v2"

	"github.com/gdiv/gdiv/cmd/gdiv/internal/cli"

	"gonum.org/v1/plot/vg"

	"github.com/gdiv/gdiv/gdiv"
	"github.com/gdiv/gdiv/gdiv/train"
	"github.com/gdiv/gdiv/internal/plotx"
)

const (
	replDefaultLRs = "1e-4,2e-4,5e-4,1e-3,2e-3,5e-3,0.01,0.02,0.05,0.1,0.2"
	replQuickLRs   = "0.002,0.005,0.01,0.02,0.05,0.1"
	// replicateStream is the PCG stream of the r-replication draws.
	replicateStream uint64 = 0x5245504c // "REPL"
)

// replConfig is one (batch, DIM) configuration at one r, with the runs of
// every step size of the grid and every seed.
type replConfig struct {
	batch   int
	dropout bool
	// avg[l][k] is the training loss averaged over the checkpoints of the
	// run with step size lrs[l] and seed k (+Inf when it diverged);
	// losses[l][k] its checkpoint losses.
	avg    [][]float64
	losses [][][]float64
	// final[l][k] is the run's final weights (kept for the small batch
	// without DIM, whose B_S is reported).
	final [][][]float64
	best  int // index of the chosen step size
}

func runReplication(e *cli.Env, args []string) error {
	fs := flag.NewFlagSet("experiment replication", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	ef := addExpFlags(fs, "replication")
	pf := cli.AddProblemFlags(fs, "logistic")
	rFlag := fs.String("r", "1,2,4,8", "replication factors")
	small := fs.Int("small", 16, "small batch")
	large := fs.Int("large", 512, "large batch")
	lrFlag := fs.String("lrs", replDefaultLRs, "step-size grid")
	epochs := fs.Float64("epochs", 20, "passes per run")
	dropout := fs.Float64("dropout", 0.5, "dropout probability of the DIM runs")
	set, err := ef.parse(fs, args)
	if err != nil {
		return err
	}
	if ef.quick {
		if !set["lrs"] {
			*lrFlag = replQuickLRs
		}
		if !set["epochs"] {
			*epochs = 5
		}
	}
	applyDefaults(pf, set, 1e-3)
	rs, err := parseInts("r", *rFlag, 1)
	if err != nil {
		return err
	}
	lrs, err := parsePositiveFloats("lrs", *lrFlag)
	if err != nil {
		return err
	}
	switch {
	case *small < 1:
		return cli.Usagef("--small %d: want a batch size >= 1", *small)
	case *large <= *small:
		return cli.Usagef("--large %d: want a batch larger than --small %d", *large, *small)
	case *large > 1<<20:
		return cli.Usagef("--large %d: want at most %d", *large, 1<<20)
	case !(*epochs > 0 && *epochs <= 10000):
		return cli.Usagef("--epochs %v: want a number of passes in (0, 10000]", *epochs)
	case !(*dropout > 0 && *dropout < 1):
		return cli.Usagef("--dropout %v: want a probability 0 < p < 1", *dropout)
	}
	ds, err := pf.Dataset()
	if err != nil {
		return err
	}
	prob0, err := pf.Build(ds) // the unreplicated problem
	if err != nil {
		return err
	}
	n := ds.N
	if rs[len(rs)-1] > n {
		return cli.Usagef("--r %d exceeds the %d examples of %s", rs[len(rs)-1], n, pf.Data)
	}

	// Checkpoints every c examples, c a multiple of both batch sizes near
	// n/2, so that both runs are evaluated at the same example counts.
	l := *small / gcd(*small, *large) * *large
	c := l * max(1, int(math.Round(float64(n)/2/float64(l))))
	total := int(math.Ceil(*epochs*float64(n)/float64(c))) * c
	checkpoints := total / c

	// w*, the minimizer of the training loss of the unreplicated data: the
	// common point at which the B_S of every replicated set is compared.
	prog := ef.newProgress(e.Stderr)
	wStar := train.SeededInitialWeights(prob0, ef.seed)
	fStar, gStar := minimizeLoss(prob0, wStar, 1e-9, 2000)
	prog.printf("w* = argmin of the unreplicated training loss: F(w*) = %.10g, |grad F(w*)| = %.2g (L-BFGS)", fStar, gStar)

	mech := gdiv.Dropout{P: *dropout}
	var rows []replRow
	for _, r := range rs {
		// The r-replicated data set, problem and initial weights of each seed.
		probs := make([]train.Problem, ef.seeds)
		w0s := make([][]float64, ef.seeds)
		for k := range probs {
			dr, err := train.Replicate(ds, r, rand.New(rand.NewPCG(ef.seedOf(k), replicateStream)))
			if err != nil {
				return err
			}
			if probs[k], err = pf.Build(dr); err != nil {
				return err
			}
			w0s[k] = train.SeededInitialWeights(probs[k], ef.seedOf(k))
		}
		var cfgs []*replConfig
		for _, drop := range []bool{false, true} {
			for _, b := range []int{*small, *large} {
				cf := &replConfig{batch: b, dropout: drop}
				keep := b == *small && !drop
				for _, lr := range lrs {
					avgs := make([]float64, ef.seeds)
					losses := make([][]float64, ef.seeds)
					finals := make([][]float64, ef.seeds)
					for k := range probs {
						s := train.SGDSettings{LR: lr, Batch: b, Steps: total / b, EvalEvery: c / b, Seed: ef.seedOf(k)}
						if drop {
							s.Mechanism = mech
						}
						ls, w, err := replRun(probs[k], w0s[k], s, c, checkpoints)
						if err != nil {
							return err
						}
						if ls == nil {
							avgs[k] = math.Inf(1)
							continue
						}
						m, _ := meanSE(ls)
						avgs[k], losses[k] = m, ls
						if keep {
							finals[k] = w
						}
					}
					cf.avg = append(cf.avg, avgs)
					cf.losses = append(cf.losses, losses)
					cf.final = append(cf.final, finals)
				}
				score := make([]float64, len(lrs))
				for i, a := range cf.avg {
					score[i], _ = meanSE(a)
				}
				cf.best = argmin(score)
				if math.IsInf(score[cf.best], 1) {
					return fmt.Errorf("r=%d, batch %d, %s: every step size of --lrs diverged; try smaller ones", r, b, dimName(drop))
				}
				if len(lrs) > 1 && (cf.best == 0 || cf.best == len(lrs)-1) {
					prog.printf("note: r=%d batch %d %s: the best lr %g is at the edge of --lrs; the grid may be too narrow", r, b, dimName(drop), lrs[cf.best])
				}
				prog.printf("r=%d  batch %4d  %-7s  best lr %-7g  mean training loss %.5g  (%d lrs x %d seeds)",
					r, b, dimName(drop), lrs[cf.best], score[cf.best], len(lrs), ef.seeds)
				cfgs = append(cfgs, cf)
			}
		}
		row := replRow{r: r, distinct: n / r}
		for d := 0; d < 2; d++ {
			sm, lg := cfgs[2*d], cfgs[2*d+1]
			row.lr[2*d], row.lr[2*d+1] = lrs[sm.best], lrs[lg.best]
			ratios := make([]float64, ef.seeds)
			for k := range ratios {
				ls, ll := sm.losses[sm.best][k], lg.losses[lg.best][k]
				if ls == nil || ll == nil { // this seed diverged at the chosen lr
					ratios[k] = math.Inf(1)
					continue
				}
				var sum float64
				for t := range ls {
					sum += ll[t] / ls[t]
				}
				ratios[k] = sum / float64(len(ls))
			}
			row.ratio[d], row.ratioSE[d] = meanSE(ratios)
		}
		// B_S of the replicated set at w0 and at the small-batch run's final weights.
		sm := cfgs[0]
		bs0 := make([]float64, ef.seeds)
		bsT := make([]float64, ef.seeds)
		bsStar := make([]float64, ef.seeds)
		for k, p := range probs {
			if bs0[k], err = batchBound(p, w0s[k]); err != nil {
				return err
			}
			if bsStar[k], err = batchBound(p, wStar); err != nil {
				return err
			}
			if w := sm.final[sm.best][k]; w != nil {
				if bsT[k], err = batchBound(p, w); err != nil {
					return err
				}
			} else {
				bsT[k] = math.NaN()
			}
		}
		row.bs0, row.bs0se = meanSE(bs0)
		row.bsT, row.bsTse = meanSE(bsT)
		row.bsStar, row.bsStarSE = meanSE(bsStar)
		rows = append(rows, row)
	}

	// Output.
	header := []string{"r", "distinct", "batch_bound_w0", "batch_bound_w0_se", "batch_bound_final", "batch_bound_final_se",
		"batch_bound_wstar", "batch_bound_wstar_se",
		"lr_small", "lr_large", "lr_small_dropout", "lr_large_dropout", "ratio", "ratio_se", "ratio_dropout", "ratio_dropout_se"}
	vals := make([][]any, len(rows))
	for i, r := range rows {
		vals[i] = []any{r.r, r.distinct, r.bs0, r.bs0se, r.bsT, r.bsTse, r.bsStar, r.bsStarSE, r.lr[0], r.lr[1], r.lr[2], r.lr[3],
			r.ratio[0], r.ratioSE[0], r.ratio[1], r.ratioSE[1]}
	}
	if ef.csv != "" {
		if err := writeCSVFile(ef.csv, header, vals); err != nil {
			return err
		}
	}
	if ef.plot != "" {
		if err := plotReplication(ef.plot, rows, n, *small, *large, *dropout); err != nil {
			return err
		}
	}
	if ef.format == "json" {
		jrows := make([]obj, len(vals))
		for i, v := range vals {
			o := make(obj, len(header))
			for j, h := range header {
				o[j] = kv{h, v[j]}
			}
			jrows[i] = o
		}
		return writeJSON(e.Stdout, obj{
			{"experiment", "replication"}, {"data", pf.Data}, {"problem", pf.Problem}, {"positive", pf.Positive},
			{"n", n}, {"params", prob0.NumParams()}, {"l2", pf.L2}, {"small", *small}, {"large", *large},
			{"epochs", *epochs}, {"examples", total}, {"checkpoint_every", c}, {"checkpoints", checkpoints},
			{"dropout", *dropout}, {"seeds", ef.seeds}, {"seed", int(ef.seed)}, {"lrs", lrs}, {"rows", jrows},
		})
	}
	data := pf.Data
	if pf.Positive != "" {
		data += " (class 1 = labels " + pf.Positive + ")"
	}
	comments := []string{
		fmt.Sprintf("replication (Figure 3a): %s on %s, n = %d, %d params, l2 = %g, sum step, r-replicated data (train.Replicate)",
			pf.Problem, data, n, prob0.NumParams(), pf.L2),
		fmt.Sprintf("batch %d vs %d, %d examples per run (%.3g passes), F(w) every %d examples (%d checkpoints); dropout DIM p = %g",
			*small, *large, total, float64(total)/float64(n), c, checkpoints, *dropout),
		fmt.Sprintf("lr tuned per (r, batch, DIM) on {%s} by the mean training loss over the run; %d seeds from %d; mean ± se over seeds",
			fmtList(lrs), ef.seeds, ef.seed),
		fmt.Sprintf("ratio = mean over checkpoints of F(large batch)/F(small batch) at equal examples (> 1: the large batch is behind)"),
	}
	th := []string{"r", "distinct", "B_S(w0)", "B_S(w_final)", "B_S(w*)", "lr_small", "lr_large", "lr_small_drop", "lr_large_drop", "ratio (no DIM)", "ratio (dropout)"}
	tr := make([][]string, len(rows))
	for i, r := range rows {
		tr[i] = []string{cell(r.r), cell(r.distinct), pm(r.bs0, r.bs0se), pm(r.bsT, r.bsTse), pm(r.bsStar, r.bsStarSE), cell(r.lr[0]), cell(r.lr[1]),
			cell(r.lr[2]), cell(r.lr[3]), pm(r.ratio[0], r.ratioSE[0]), pm(r.ratio[1], r.ratioSE[1])}
	}
	return writeTable(e.Stdout, comments, th, tr, nil)
}

// replRun runs SGD and returns the training loss at the checkpoints (every
// c examples) and the final weights; nil losses when the run diverged.
func replRun(p train.Problem, w0 []float64, s train.SGDSettings, c, checkpoints int) ([]float64, []float64, error) {
	res, err := train.SGD(p, w0, s)
	if err != nil {
		if errors.Is(err, gdiv.ErrNonFinite) || errors.Is(err, gdiv.ErrOverflow) {
			return nil, nil, nil
		}
		return nil, nil, err
	}
	losses := make([]float64, 0, checkpoints)
	for _, rec := range res.History {
		if rec.Evaluated {
			if rec.Examples%c != 0 {
				return nil, nil, fmt.Errorf("internal error: evaluation at %d examples is not a checkpoint (every %d)", rec.Examples, c)
			}
			losses = append(losses, rec.Loss)
		}
	}
	if len(losses) != checkpoints {
		return nil, nil, fmt.Errorf("internal error: %d evaluations, want %d checkpoints", len(losses), checkpoints)
	}
	return losses, res.W, nil
}

// batchBound returns B_S(w) of all the examples of p (gdiv.ComputeStats of
// the per-example gradients).
func batchBound(p train.Problem, w []float64) (float64, error) {
	g, _ := train.PerExampleGrads(nil, p, w, nil)
	st, err := gdiv.ComputeStats(g, p.NumExamples(), p.NumParams())
	if err != nil {
		return 0, err
	}
	return st.BatchBound, nil
}

func dimName(dropout bool) string {
	if dropout {
		return "dropout"
	}
	return "no DIM"
}

// argmin returns the index of the smallest value (the first on ties).
func argmin(v []float64) int {
	best := 0
	for i, x := range v {
		if x < v[best] {
			best = i
		}
	}
	return best
}

// replRow is one line of the replication table.
type replRow struct {
	r, distinct            int
	bs0, bs0se, bsT, bsTse float64
	bsStar, bsStarSE       float64
	lr                     [4]float64 // small, large, small with dropout, large with dropout
	ratio, ratioSE         [2]float64 // no DIM, dropout
}

// envelope returns a closed path around mean ± se (up along x, back down),
// drawn as one dashed series.
func envelope(x, mean, se []float64) ([]float64, []float64) {
	var ex, ey []float64
	for i := range x {
		ex, ey = append(ex, x[i]), append(ey, mean[i]+se[i])
	}
	for i := len(x) - 1; i >= 0; i-- {
		ex, ey = append(ex, x[i]), append(ey, mean[i]-se[i])
	}
	return ex, ey
}

func plotReplication(path string, rows []replRow, n, small, large int, p float64) error {
	var r, ratio, se, ratioD, seD, bs0, bsT, bsStar, distinct []float64
	for _, x := range rows {
		r = append(r, float64(x.r))
		ratio, se = append(ratio, x.ratio[0]), append(se, x.ratioSE[0])
		ratioD, seD = append(ratioD, x.ratio[1]), append(seD, x.ratioSE[1])
		bs0, bsT = append(bs0, x.bs0), append(bsT, x.bsT)
		star := x.bsStar
		if star > 1e3*float64(n) { // the gradients cancel at w* (r = 1): B_S is infinite up to rounding
			star = math.NaN()
		}
		bsStar = append(bsStar, star)
		distinct = append(distinct, float64(x.distinct))
	}
	ux, uy := envelope(r, ratio, se)
	dx, dy := envelope(r, ratioD, seD)
	panels := []plotx.Panel{
		{Title: fmt.Sprintf("Figure 3a: loss ratio, batch %d / batch %d, at equal examples", large, small),
			XLabel: "replication factor r", YLabel: "mean loss ratio",
			Series: []plotx.Series{
				{Name: "no DIM", X: r, Y: ratio, Color: 1},
				{Name: fmt.Sprintf("dropout p=%g", p), X: r, Y: ratioD, Color: 2},
				{Name: "no DIM, mean ± se", X: ux, Y: uy, Dashed: true, Color: 1},
				{Name: "dropout, mean ± se", X: dx, Y: dy, Dashed: true, Color: 2},
			}},
		{Title: "batch-size bound of the replicated set", XLabel: "replication factor r", YLabel: "examples", LogY: true,
			Series: []plotx.Series{
				{Name: "B_S(w0)", X: r, Y: bs0},
				{Name: "B_S(w_final), small batch, no DIM", X: r, Y: bsT},
				{Name: "B_S(w*), w* = argmin of the unreplicated loss (inf omitted)", X: r, Y: bsStar},
				{Name: "distinct points n/r", X: r, Y: distinct, Dashed: true},
			}},
	}
	return plotx.Save(path, panels, 1, 6*vg.Inch, 3*vg.Inch)
}
