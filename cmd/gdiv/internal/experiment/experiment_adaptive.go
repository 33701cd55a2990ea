package experiment

// gdiv experiment adaptive: the diversity-driven batch-size policy against
// fixed small and large batches at the same example budget and per-example
// step (Theorem 3's claim, measured). See experimentUsage.

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"math"
	"time"

	"github.com/gdiv/gdiv/cmd/gdiv/internal/cli"

	"gonum.org/v1/plot/vg"

	"github.com/gdiv/gdiv/gdiv"
	"github.com/gdiv/gdiv/gdiv/data"
	"github.com/gdiv/gdiv/gdiv/train"
	"github.com/gdiv/gdiv/internal/plotx"
)

const adaptiveTuneLRs = "0.01,0.02,0.05,0.1,0.2"

// adaptiveRun is one SGD run of the experiment.
type adaptiveRun struct {
	steps, examples int
	final, accuracy float64
	wall            float64
	history         []train.Record // evaluated records only
}

// adaptiveKind is one of the three compared trainers, with its runs at the
// chosen step size.
type adaptiveKind struct {
	name   string
	batch  int                   // fixed batch; 0 for the policy
	policy *gdiv.BatchSizePolicy // nil for a fixed batch
	lr     float64               // the step size used (chosen with --tune)
	runs   []adaptiveRun         // one per seed
}

func runAdaptive(e *cli.Env, args []string) error {
	fs := flag.NewFlagSet("experiment adaptive", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	ef := addExpFlags(fs, "adaptive")
	pf := cli.AddProblemFlags(fs, "softmax")
	pol := cli.AddPolicyFlags(fs)
	lr := fs.Float64("lr", 0.05, "per-example step of all runs")
	tune := fs.Bool("tune", false, "tune lr per run over --lrs")
	lrFlag := fs.String("lrs", adaptiveTuneLRs, "step-size grid of --tune")
	small := fs.Int("small", 16, "small fixed batch")
	large := fs.Int("large", 512, "large fixed batch")
	beta := fs.Float64("beta", 0.9, "estimate smoothing")
	epochs := fs.Float64("epochs", 20, "passes over the data")
	set, err := ef.parse(fs, args)
	if err != nil {
		return err
	}
	if ef.quick && !set["epochs"] {
		*epochs = 5
	}
	applyDefaults(pf, set, 1e-4)
	if !set["policy"] {
		pol.Policy = "diversity"
	}
	if !set["min-batch"] {
		pol.MinBatch = 16
	}
	if !set["max-batch"] {
		pol.MaxBatch = 1024
	}
	policy, err := pol.Build(set)
	if err != nil {
		return err
	}
	if policy == nil {
		return cli.Usagef("--policy %q: want diversity", pol.Policy)
	}
	lrs := []float64{*lr}
	switch {
	case *tune && set["lr"]:
		return cli.Usagef("--lr and --tune exclude each other (--tune chooses lr from --lrs)")
	case !*tune && set["lrs"]:
		return cli.Usagef("--lrs applies only with --tune")
	case !(*lr > 0) || math.IsInf(*lr, 0):
		return cli.Usagef("--lr %v: want a finite step size > 0", *lr)
	case *small < 1:
		return cli.Usagef("--small %d: want a batch size >= 1", *small)
	case *large <= *small:
		return cli.Usagef("--large %d: want a batch larger than --small %d", *large, *small)
	case !(*beta >= 0 && *beta < 1):
		return cli.Usagef("--beta %v: want 0 <= beta < 1", *beta)
	case !(*epochs > 0 && *epochs <= 10000):
		return cli.Usagef("--epochs %v: want a number of passes in (0, 10000]", *epochs)
	}
	if *tune {
		if lrs, err = parsePositiveFloats("lrs", *lrFlag); err != nil {
			return err
		}
	}
	ds, err := pf.Dataset()
	if err != nil {
		return err
	}
	prob, err := pf.Build(ds)
	if err != nil {
		return err
	}
	n := ds.N
	budget := int(math.Ceil(*epochs * float64(n)))
	prog := ef.newProgress(e.Stderr)

	// F* = min F, the reference of the suboptimality ratio.
	gradTol := 1e-9
	if ef.quick {
		gradTol = 1e-7 // F* to about 1e-10: plenty for a smoke run
	}
	wStar := train.SeededInitialWeights(prob, ef.seed)
	fStar, fStarGrad := minimizeLoss(prob, wStar, gradTol, 2000)
	prog.printf("F* = %.10g (L-BFGS, |grad F| = %.2g)", fStar, fStarGrad)

	kinds := []*adaptiveKind{
		{name: "small", batch: *small},
		{name: "large", batch: *large},
		{name: "adaptive", policy: policy},
	}
	for _, kd := range kinds {
		bestScore := math.Inf(1)
		for _, g := range lrs {
			runs := make([]adaptiveRun, ef.seeds)
			finals := make([]float64, ef.seeds)
			diverged := false
			for k := range runs {
				r, err := adaptiveOne(prob, ds, kd, g, *beta, budget, ef.seedOf(k))
				if err != nil {
					if errors.Is(err, gdiv.ErrNonFinite) || errors.Is(err, gdiv.ErrOverflow) {
						diverged = true
						break
					}
					return err
				}
				runs[k], finals[k] = r, r.final
			}
			score, _ := meanSE(finals)
			if diverged {
				score = math.Inf(1)
				prog.printf("%-8s lr %-6g diverged", kd.name, g)
			} else {
				prog.printf("%-8s lr %-6g final loss %.6g (mean of %d seeds)", kd.name, g, score, ef.seeds)
			}
			if score < bestScore {
				bestScore, kd.lr, kd.runs = score, g, runs
			}
		}
		if len(lrs) > 1 && (kd.lr == lrs[0] || kd.lr == lrs[len(lrs)-1]) {
			prog.printf("note: run %s: the best lr %g is at the edge of --lrs; the grid may be too narrow", kd.name, kd.lr)
		}
		if kd.runs == nil {
			if *tune {
				return fmt.Errorf("run %s: every step size of --lrs diverged; try smaller ones", kd.name)
			}
			return fmt.Errorf("run %s diverged at --lr %g; lower it", kd.name, *lr)
		}
	}

	// Per-run summaries.
	type rowT struct {
		name, batch                   string
		lr, steps, examples, meanB    float64
		final, finalSE                float64
		ratio, subopt, accuracy, wall float64
		within, subWithin             bool
		fewer                         float64
	}
	bound := 1 + policy.Delta/2
	var rows []rowT
	var smallFinal, smallSteps float64
	for i, kd := range kinds {
		var steps, examples, finals, accs, walls []float64
		for _, r := range kd.runs {
			steps = append(steps, float64(r.steps))
			examples = append(examples, float64(r.examples))
			finals = append(finals, r.final)
			accs = append(accs, r.accuracy)
			walls = append(walls, r.wall)
		}
		row := rowT{name: kd.name, lr: kd.lr}
		row.steps, _ = meanSE(steps)
		row.examples, _ = meanSE(examples)
		row.meanB = row.examples / row.steps
		row.final, row.finalSE = meanSE(finals)
		row.accuracy, _ = meanSE(accs)
		row.wall, _ = meanSE(walls)
		if i == 0 {
			smallFinal, smallSteps = row.final, row.steps
		}
		row.ratio = row.final / smallFinal
		row.subopt = (row.final - fStar) / (smallFinal - fStar)
		row.within, row.subWithin = row.ratio <= bound, row.subopt <= bound
		row.fewer = smallSteps / row.steps
		if kd.policy != nil {
			row.batch = fmt.Sprintf("%d..%d", kd.policy.MinBatch, kd.policy.MaxBatch)
		} else {
			row.batch = fmt.Sprint(kd.batch)
		}
		rows = append(rows, row)
	}

	if ef.csv != "" {
		var vals [][]any
		for _, kd := range kinds {
			for k, r := range kd.runs {
				for _, h := range r.history {
					vals = append(vals, []any{kd.name, int(ef.seedOf(k)), h.Step, h.Examples, h.Batch, h.Loss})
				}
			}
		}
		if err := writeCSVFile(ef.csv, []string{"run", "seed", "step", "examples", "batch", "loss"}, vals); err != nil {
			return err
		}
	}
	if ef.plot != "" {
		if err := plotAdaptive(ef.plot, kinds, fStar, ef.seed); err != nil {
			return err
		}
	}
	if ef.format == "json" {
		jrows := make([]obj, len(rows))
		for i, r := range rows {
			jrows[i] = obj{{"run", r.name}, {"batch", r.batch}, {"lr", r.lr}, {"steps", r.steps}, {"examples", r.examples},
				{"mean_batch", r.meanB}, {"final_loss", r.final}, {"final_loss_se", r.finalSE}, {"ratio", r.ratio},
				{"within_bound", r.within}, {"subopt_ratio", r.subopt}, {"subopt_within_bound", r.subWithin},
				{"accuracy", r.accuracy}, {"wall_seconds", r.wall}, {"fewer_steps", r.fewer}}
		}
		return writeJSON(e.Stdout, obj{
			{"experiment", "adaptive"}, {"data", pf.Data}, {"problem", pf.Problem}, {"n", n}, {"params", prob.NumParams()},
			{"l2", pf.L2}, {"epochs", *epochs}, {"examples_budget", budget}, {"delta", policy.Delta}, {"bound", bound},
			{"min_batch", policy.MinBatch}, {"max_batch", policy.MaxBatch}, {"beta", *beta}, {"tuned", *tune},
			{"seeds", ef.seeds}, {"seed", int(ef.seed)}, {"f_star", fStar}, {"f_star_grad_norm", fStarGrad},
			{"rows", jrows},
		})
	}
	lrNote := fmt.Sprintf("the same per-example step lr = %g for all runs", *lr)
	if *tune {
		lrNote = fmt.Sprintf("lr tuned per run on {%s} by the mean final loss", fmtList(lrs))
	}
	comments := []string{
		fmt.Sprintf("adaptive: %s on %s, n = %d, %d params, l2 = %g, sum step, %s; budget %d examples (%g passes) per run",
			pf.Problem, pf.Data, n, prob.NumParams(), pf.L2, lrNote, budget, *epochs),
		fmt.Sprintf("policy: B = delta*B_S_hat + 1, delta = %g, batch in [%d, %d], estimate smoothing beta = %g; %d seeds from %d; mean (± se) over seeds",
			policy.Delta, policy.MinBatch, policy.MaxBatch, *beta, ef.seeds, ef.seed),
		fmt.Sprintf("F* = %.8g (L-BFGS, |grad F| = %.2g); ratio = F/F_small, subopt = (F - F*)/(F_small - F*); bound 1 + delta/2 = %g",
			fStar, fStarGrad, bound),
	}
	th := []string{"run", "batch", "lr", "steps", "examples", "mean_B", "final loss", "ratio", "<=bound", "subopt", "<=bound", "accuracy", "wall_s", "fewer_steps"}
	var tr [][]string
	for _, r := range rows {
		tr = append(tr, []string{r.name, r.batch, cell(r.lr), cell(r.steps), cell(r.examples), cell(r.meanB), pm(r.final, r.finalSE),
			cell(r.ratio), cell(r.within), cell(r.subopt), cell(r.subWithin), cell(r.accuracy), cell(math.Round(r.wall*1000) / 1000), cell(r.fewer)})
	}
	a := rows[2]
	verdict := func(ok bool) string {
		if ok {
			return "met"
		}
		return "NOT met"
	}
	notes := []string{
		fmt.Sprintf("adaptive vs batch %d: raw loss ratio %.4g <= %g: %s; suboptimality ratio %.4g <= %g: %s; %.3g times fewer steps (%.4g vs %.4g)",
			*small, a.ratio, bound, verdict(a.within), a.subopt, bound, verdict(a.subWithin), a.fewer, a.steps, rows[0].steps),
		fmt.Sprintf("fixed batch %d: raw loss ratio %.4g, suboptimality ratio %.4g", *large, rows[1].ratio, rows[1].subopt),
	}
	return writeTable(e.Stdout, comments, th, tr, notes)
}

// adaptiveOne runs one trainer of the experiment with step size lr.
func adaptiveOne(p train.Problem, ds *data.Dataset, kd *adaptiveKind, lr, beta float64, budget int, seed uint64) (adaptiveRun, error) {
	s := train.SGDSettings{LR: lr, Batch: kd.batch, Policy: kd.policy, Examples: budget, EstimatorBeta: beta, Seed: seed}
	if kd.policy != nil {
		s.EvalEvery = 1 // few steps, each worth a point of the curve
	} else {
		s.EvalEvery = max(1, budget/kd.batch/100)
	}
	start := time.Now()
	res, err := train.SGD(p, train.SeededInitialWeights(p, seed), s)
	wall := time.Since(start).Seconds()
	if err != nil {
		return adaptiveRun{}, err
	}
	r := adaptiveRun{steps: res.Steps, examples: res.Examples, final: res.FinalLoss, wall: wall, accuracy: math.NaN()}
	if _, ok := p.(train.Classifier); ok && ds.Classes >= 2 {
		if r.accuracy, err = train.Accuracy(p, res.W, ds); err != nil {
			return adaptiveRun{}, err
		}
	}
	r.history = append(r.history, train.Record{Loss: res.InitialLoss, Batch: res.History[0].Batch})
	for _, h := range res.History {
		if h.Evaluated {
			r.history = append(r.history, h)
		}
	}
	return r, nil
}

func plotAdaptive(path string, kinds []*adaptiveKind, fStar float64, seed uint64) error {
	loss := plotx.Panel{Title: fmt.Sprintf("training loss above F* (seed %d)", seed), XLabel: "examples seen",
		YLabel: "F(w) - F*", LogY: true}
	batch := plotx.Panel{Title: "batch size", XLabel: "examples seen", YLabel: "batch size", LogY: true, LegendBottom: true}
	for _, kd := range kinds {
		name := fmt.Sprintf("%s (batch %d, lr %g)", kd.name, kd.batch, kd.lr)
		if kd.policy != nil {
			name = fmt.Sprintf("adaptive (delta %g, lr %g)", kd.policy.Delta, kd.lr)
		}
		var x, y, b []float64
		for _, h := range kd.runs[0].history {
			x = append(x, float64(h.Examples))
			y = append(y, h.Loss-fStar)
			b = append(b, float64(h.Batch))
		}
		loss.Series = append(loss.Series, plotx.Series{Name: name, X: x, Y: y})
		batch.Series = append(batch.Series, plotx.Series{Name: kd.name, X: x, Y: b})
	}
	return plotx.Save(path, []plotx.Panel{loss, batch}, 1, 6*vg.Inch, 3*vg.Inch)
}
