package train

import (
	"bytes"
	"errors"
	"math"
	"math/rand/v2"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/gdiv/gdiv/gdiv"

	"gonum.org/v1/gonum/floats/scalar"
)

// sgdRandomLSQ returns a well-conditioned least-squares problem with n
// examples and d features, noisy targets (so the optimum has F* > 0 and
// the gradients do not all vanish there).
func sgdRandomLSQ(n, d int, seed uint64) sgdLSQ {
	rng := rand.New(rand.NewPCG(seed, 1))
	q := sgdLSQ{x: make([]float64, n*d), y: make([]float64, n), n: n, d: d}
	wtrue := make([]float64, d)
	for j := range wtrue {
		wtrue[j] = rng.NormFloat64()
	}
	for i := range n {
		var s float64
		for j := range d {
			v := rng.NormFloat64()
			q.x[i*d+j] = v
			s += v * wtrue[j]
		}
		q.y[i] = s + 0.5*rng.NormFloat64()
	}
	return q
}

func sgdHistoryCSV(t *testing.T, h []Record) string {
	t.Helper()
	var b bytes.Buffer
	if err := WriteHistoryCSV(&b, h); err != nil {
		t.Fatal(err)
	}
	return b.String()
}

func TestSGDDeterministic(t *testing.T) {
	q := sgdRandomLSQ(40, 5, 1)
	p := q.problem()
	w0 := make([]float64, q.d)
	for _, sampling := range []Sampling{WithReplacement, Shuffle} {
		t.Run(sampling.String(), func(t *testing.T) {
			s := SGDSettings{LR: 0.01, Batch: 6, Steps: 50, Sampling: sampling, Seed: 42, EstimatorBeta: 0.9, EvalEvery: 7, RecordIndices: true}
			a, err := SGD(p, w0, s)
			if err != nil {
				t.Fatal(err)
			}
			b, err := SGD(p, w0, s)
			if err != nil {
				t.Fatal(err)
			}
			ha, hb := sgdHistoryCSV(t, a.History), sgdHistoryCSV(t, b.History)
			if ha != hb {
				t.Fatal("same seed, different histories")
			}
			if !slices.Equal(a.W, b.W) || !slices.EqualFunc(a.Batches, b.Batches, slices.Equal) {
				t.Fatal("same seed, different weights or batches")
			}
			if strings.Count(ha, "\n") != 51 {
				t.Errorf("history CSV has %d lines, want header + 50", strings.Count(ha, "\n"))
			}
			s.Seed = 43
			c, err := SGD(p, w0, s)
			if err != nil {
				t.Fatal(err)
			}
			if sgdHistoryCSV(t, c.History) == ha || slices.Equal(a.W, c.W) {
				t.Error("different seeds, identical runs")
			}
		})
	}
}

// TestSGDReplay checks that replaying the recorded batches through SGDStep
// reproduces SGD's weights bit for bit (what the PyTorch comparison does).
func TestSGDReplay(t *testing.T) {
	q := sgdRandomLSQ(30, 4, 2)
	p := q.problem()
	w0 := []float64{1, -1, 0.5, 2}
	for _, rule := range []StepRule{SumStep, MeanStep} {
		for _, radius := range []float64{0, 1.5} {
			s := SGDSettings{LR: 0.02, Step: rule, Batch: 5, Steps: 40, Radius: radius, Seed: 7, RecordIndices: true}
			res, err := SGD(p, w0, s)
			if err != nil {
				t.Fatal(err)
			}
			w := slices.Clone(w0)
			for k, idx := range res.Batches {
				if len(idx) != 5 {
					t.Fatalf("batch %d has %d indices", k, len(idx))
				}
				if err := SGDStep(w, w, p, idx, s.LR, rule, radius); err != nil {
					t.Fatal(err)
				}
			}
			if !slices.Equal(w, res.W) {
				t.Errorf("%v step, radius %v: replay %v, SGD %v", rule, radius, w, res.W)
			}
			if radius > 0 && math.Sqrt(sgdDot(res.W, res.W)) > radius*(1+1e-12) {
				t.Errorf("radius %v: ‖w‖ = %v", radius, math.Sqrt(sgdDot(res.W, res.W)))
			}
		}
	}
}

func TestSGDConverges(t *testing.T) {
	q := sgdRandomLSQ(200, 4, 3)
	p := q.problem()
	wstar := q.optimum(t)
	fstar := FullLoss(p, nil, wstar)
	w0 := []float64{3, -3, 3, -3}
	for _, c := range []struct {
		name string
		s    SGDSettings
	}{
		{"sum step, with replacement", SGDSettings{LR: 0.002, Batch: 10, Steps: 3000, Seed: 1}},
		{"mean step, shuffle", SGDSettings{LR: 0.05, Step: MeanStep, Batch: 20, Examples: 200 * 150, Sampling: Shuffle, Seed: 1}},
	} {
		t.Run(c.name, func(t *testing.T) {
			res, err := SGD(p, w0, c.s)
			if err != nil {
				t.Fatal(err)
			}
			if !(res.FinalLoss < res.InitialLoss) {
				t.Fatalf("loss %v → %v did not decrease", res.InitialLoss, res.FinalLoss)
			}
			// Constant-step SGD converges to a noise ball around w*: its
			// excess loss is O(γ), here < 2% of F* and the initial gap
			// shrinks by orders of magnitude.
			if gap := res.FinalLoss - fstar; gap > 0.02*fstar || gap < 0 {
				t.Errorf("F(w) − F* = %v (F* = %v, F(w0) = %v)", gap, fstar, res.InitialLoss)
			}
			if d := math.Sqrt(sgdSqDist(res.W, wstar)); d > 0.1 {
				t.Errorf("‖w − w*‖ = %v", d)
			}
			if got := FullLoss(p, nil, res.W); got != res.FinalLoss {
				t.Errorf("FinalLoss %v, F(W) %v", res.FinalLoss, got)
			}
			last := res.History[len(res.History)-1]
			if !last.Evaluated || last.Loss != res.FinalLoss || last.Step != res.Steps || last.Examples != res.Examples {
				t.Errorf("last record %+v inconsistent with result", last)
			}
		})
	}
}

func TestSGDPolicy(t *testing.T) {
	q := sgdRandomLSQ(300, 6, 4)
	p := q.problem()
	w0 := []float64{4, -4, 4, -4, 4, -4}
	pol := &gdiv.BatchSizePolicy{Delta: 1, MinBatch: 4, MaxBatch: 128, MultipleOf: 4, MaxGrowth: 1.5, Hysteresis: 0.05, Warmup: 3, LR: gdiv.LRLinear}
	for _, rule := range []StepRule{SumStep, MeanStep} {
		t.Run(rule.String(), func(t *testing.T) {
			lr := 0.002
			if rule == MeanStep {
				lr = 0.008 // γ = lr/B₀ = 0.002 at the initial batch
			}
			var progress []Record
			s := SGDSettings{LR: lr, Step: rule, Policy: pol, Steps: 400, Seed: 5, EstimatorBeta: 0.8,
				Progress: func(r Record) { progress = append(progress, r) }}
			res, err := SGD(p, w0, s)
			if err != nil {
				t.Fatal(err)
			}
			if *res.Policy != *pol {
				t.Errorf("effective policy %+v, want %+v", *res.Policy, *pol)
			}
			h := res.History
			if sgdHistoryCSV(t, progress) != sgdHistoryCSV(t, h) {
				t.Error("Progress records differ from the history")
			}
			if h[0].Batch != 4 {
				t.Errorf("initial batch %d, want MinBatch 4", h[0].Batch)
			}
			sizes := map[int]bool{}
			examples := 0
			for k, r := range h {
				sizes[r.Batch] = true
				examples += r.Batch
				if r.Step != k+1 || r.Examples != examples {
					t.Fatalf("record %d: step %d, examples %d (want %d)", k, r.Step, r.Examples, examples)
				}
				if r.Batch%4 != 0 || r.Batch < 4 || r.Batch > 128 {
					t.Fatalf("step %d: batch %d outside the policy", r.Step, r.Batch)
				}
				if !r.HasEstimate {
					t.Fatalf("step %d: no estimate", r.Step)
				}
				wantLR := lr
				if rule == MeanStep {
					wantLR = lr * float64(r.Batch) / 4
				}
				if !scalar.EqualWithinAbsOrRel(r.LR, wantLR, 0, 1e-15) {
					t.Fatalf("step %d: lr %v, want %v", r.Step, r.LR, wantLR)
				}
				if k == 0 {
					continue
				}
				prev := h[k-1]
				est := gdiv.Estimate{M2: prev.M2, G: prev.G, BatchBound: prev.BatchBound, NoSignal: prev.NoSignal}
				if want := pol.Next(prev.Batch, est, prev.Step-1); r.Batch != want {
					t.Fatalf("step %d: batch %d, want Next(%d, B̂_S = %v, %d) = %d", r.Step, r.Batch, prev.Batch, prev.BatchBound, prev.Step-1, want)
				}
				if prev.Step <= pol.Warmup && r.Batch != prev.Batch {
					t.Fatalf("batch changed during warm-up at step %d", r.Step)
				}
			}
			if len(sizes) < 3 {
				t.Errorf("the policy used only the batch sizes %v; the test needs it to move", sizes)
			}
			if res.FinalLoss >= res.InitialLoss {
				t.Errorf("loss %v → %v", res.InitialLoss, res.FinalLoss)
			}
		})
	}
}

// TestSGDPolicyDefaults checks SGD's adjustments of a zero policy: MinBatch
// 2, MaxBatch n, and that a batch driven to no-signal hits n.
func TestSGDPolicyDefaults(t *testing.T) {
	// Pure noise: f_i(w) = ½‖w − c_i‖² with Σ c_i = 0, started at w = 0,
	// has ∇F(0) = 0, so Ĝ is ≤ 0 about half the time and the policy heads
	// for its maximum n.
	n, d := 16, 3
	c := make([]float64, n*d)
	rng := rand.New(rand.NewPCG(9, 9))
	for i := range n / 2 {
		for j := range d {
			v := rng.NormFloat64()
			c[i*d+j], c[(i+n/2)*d+j] = v, -v
		}
	}
	p := ProblemFunc{Params: d, Examples: n, Func: func(grad, w []float64, i int) float64 {
		var f float64
		for j := range d {
			r := w[j] - c[i*d+j]
			f += 0.5 * r * r
			if grad != nil {
				grad[j] = r
			}
		}
		return f
	}}
	res, err := SGD(p, make([]float64, d), SGDSettings{LR: 1e-9, Policy: &gdiv.BatchSizePolicy{}, Steps: 60, Seed: 3})
	if err != nil {
		t.Fatal(err)
	}
	if res.Policy.MinBatch != 2 || res.Policy.MaxBatch != n {
		t.Errorf("effective policy min %d max %d, want 2 and %d", res.Policy.MinBatch, res.Policy.MaxBatch, n)
	}
	if res.History[0].Batch != 2 {
		t.Errorf("initial batch %d, want 2", res.History[0].Batch)
	}
	sawNoSignal, sawMax := false, false
	for _, r := range res.History {
		sawNoSignal = sawNoSignal || r.NoSignal
		sawMax = sawMax || r.Batch == n
		if r.Batch < 2 || r.Batch > n {
			t.Fatalf("batch %d outside [2, %d]", r.Batch, n)
		}
		if r.NoSignal && !math.IsInf(r.BatchBound, 1) {
			t.Fatalf("no signal with batch bound %v", r.BatchBound)
		}
	}
	if !sawNoSignal || !sawMax {
		t.Errorf("no-signal seen: %v, batch n reached: %v", sawNoSignal, sawMax)
	}
}

func TestSGDShuffleEpochs(t *testing.T) {
	q := sgdRandomLSQ(10, 2, 5)
	p := q.problem()
	res, err := SGD(p, []float64{0, 0}, SGDSettings{LR: 0.01, Batch: 3, Steps: 20, Sampling: Shuffle, Seed: 11, RecordIndices: true})
	if err != nil {
		t.Fatal(err)
	}
	var all []int
	for _, b := range res.Batches {
		all = append(all, b...)
	}
	if len(all) != 60 {
		t.Fatalf("%d indices, want 60", len(all))
	}
	var epochs [][]int
	for e := 0; e < 6; e++ {
		ep := slices.Clone(all[e*10 : (e+1)*10])
		epochs = append(epochs, slices.Clone(ep))
		slices.Sort(ep)
		for i, v := range ep {
			if v != i {
				t.Fatalf("epoch %d is not a permutation of 0..9: %v", e, all[e*10:(e+1)*10])
			}
		}
	}
	distinct := 0
	for e := 1; e < len(epochs); e++ {
		if !slices.Equal(epochs[e], epochs[0]) {
			distinct++
		}
	}
	if distinct == 0 {
		t.Error("every epoch used the same permutation")
	}
	// With replacement, some index repeats within 60 draws from 10.
	res, err = SGD(p, []float64{0, 0}, SGDSettings{LR: 0.01, Batch: 10, Steps: 1, Seed: 11, RecordIndices: true})
	if err != nil {
		t.Fatal(err)
	}
	b := slices.Clone(res.Batches[0])
	slices.Sort(b)
	if len(slices.Compact(b)) == 10 {
		t.Error("a with-replacement batch of 10 from 10 has no repeat (possible but unlikely: 10!/10^10 ≈ 3.6e-4)")
	}
}

func TestSGDMechanism(t *testing.T) {
	q := sgdRandomLSQ(50, 4, 6)
	p := q.problem()
	w0 := make([]float64, 4)
	base := SGDSettings{LR: 0.01, Batch: 8, Steps: 30, Seed: 21, EstimatorBeta: 0.5, RecordIndices: true}
	none, err := SGD(p, w0, base)
	if err != nil {
		t.Fatal(err)
	}
	s := base
	s.Mechanism = gdiv.Dropout{P: 0}
	drop0, err := SGD(p, w0, s)
	if err != nil {
		t.Fatal(err)
	}
	if sgdHistoryCSV(t, drop0.History) != sgdHistoryCSV(t, none.History) || !slices.Equal(drop0.W, none.W) {
		t.Error("Dropout{P: 0} changed the run")
	}
	s.Mechanism = gdiv.Langevin{Std: 0.5}
	l1, err := SGD(p, w0, s)
	if err != nil {
		t.Fatal(err)
	}
	l2, err := SGD(p, w0, s)
	if err != nil {
		t.Fatal(err)
	}
	if sgdHistoryCSV(t, l1.History) != sgdHistoryCSV(t, l2.History) || !slices.Equal(l1.W, l2.W) {
		t.Error("Langevin run is not deterministic")
	}
	if slices.Equal(l1.W, none.W) {
		t.Error("Langevin did not change the weights")
	}
	if !slices.EqualFunc(l1.Batches, none.Batches, slices.Equal) {
		t.Error("the mechanism changed the sampled batches (streams not separate)")
	}
	// Langevin noise raises the per-batch M̂² by about d·σ² = 1.
	if l1.History[29].M2 <= none.History[29].M2 {
		t.Errorf("Langevin M̂² %v ≤ plain %v", l1.History[29].M2, none.History[29].M2)
	}
	s.Seed = 22
	l3, err := SGD(p, w0, s)
	if err != nil {
		t.Fatal(err)
	}
	if slices.Equal(l3.W, l1.W) {
		t.Error("different seeds gave the same Langevin run")
	}
}

func TestSGDEvalEvery(t *testing.T) {
	q := sgdRandomLSQ(20, 2, 7)
	p := q.problem()
	w0 := []float64{1, 1}
	for _, c := range []struct {
		name      string
		every     int
		batch     int
		steps     int
		evaluated []int
	}{
		{"every 3", 3, 4, 10, []int{3, 6, 9, 10}},
		{"default: once per epoch", 0, 4, 12, []int{5, 10, 12}},
		{"default, batch not dividing n", 0, 6, 9, []int{4, 8, 9}},
		{"only at the end", -1, 4, 7, []int{7}},
	} {
		t.Run(c.name, func(t *testing.T) {
			res, err := SGD(p, w0, SGDSettings{LR: 0.01, Batch: c.batch, Steps: c.steps, EvalEvery: c.every})
			if err != nil {
				t.Fatal(err)
			}
			var got []int
			loss := res.InitialLoss
			for _, r := range res.History {
				if r.Evaluated {
					got = append(got, r.Step)
					loss = r.Loss
				} else if r.Loss != loss {
					t.Fatalf("step %d: carried loss %v, want %v", r.Step, r.Loss, loss)
				}
			}
			if !slices.Equal(got, c.evaluated) {
				t.Errorf("evaluated at %v, want %v", got, c.evaluated)
			}
		})
	}
}

func TestSGDExamplesStop(t *testing.T) {
	q := sgdRandomLSQ(20, 2, 8)
	p := q.problem()
	for _, c := range []struct {
		name                 string
		steps, examples      int
		wantSteps, wantExamp int
	}{
		{"examples exact", 0, 30, 5, 30},
		{"examples overshoot", 0, 31, 6, 36},
		{"steps first", 3, 100, 3, 18},
		{"examples first", 100, 12, 2, 12},
	} {
		t.Run(c.name, func(t *testing.T) {
			res, err := SGD(p, []float64{0, 0}, SGDSettings{LR: 0.01, Batch: 6, Steps: c.steps, Examples: c.examples})
			if err != nil {
				t.Fatal(err)
			}
			if res.Steps != c.wantSteps || res.Examples != c.wantExamp || len(res.History) != c.wantSteps {
				t.Errorf("steps %d examples %d (history %d), want %d and %d", res.Steps, res.Examples, len(res.History), c.wantSteps, c.wantExamp)
			}
		})
	}
}

func TestSGDBatchOne(t *testing.T) {
	q := sgdRandomLSQ(20, 2, 8)
	res, err := SGD(q.problem(), []float64{0, 0}, SGDSettings{LR: 0.01, Batch: 1, Steps: 5})
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range res.History {
		if r.HasEstimate || !r.NoSignal || !math.IsInf(r.BatchBound, 1) {
			t.Fatalf("batch 1 record %+v claims an estimate", r)
		}
	}
}

func TestSGDErrors(t *testing.T) {
	q := sgdRandomLSQ(10, 2, 9)
	p := q.problem()
	w0 := []float64{0, 0}
	ok := SGDSettings{LR: 0.1, Batch: 2, Steps: 3}
	with := func(f func(*SGDSettings)) SGDSettings {
		s := ok
		f(&s)
		return s
	}
	cases := []struct {
		name string
		p    Problem
		w0   []float64
		s    SGDSettings
		err  error
		want string
	}{
		{"zero lr", p, w0, with(func(s *SGDSettings) { s.LR = 0 }), gdiv.ErrParam, "learning rate = 0"},
		{"negative lr", p, w0, with(func(s *SGDSettings) { s.LR = -1 }), gdiv.ErrParam, "learning rate = -1"},
		{"NaN lr", p, w0, with(func(s *SGDSettings) { s.LR = math.NaN() }), gdiv.ErrParam, "learning rate = NaN"},
		{"infinite lr", p, w0, with(func(s *SGDSettings) { s.LR = math.Inf(1) }), gdiv.ErrParam, "learning rate = +Inf"},
		{"no stopping rule", p, w0, with(func(s *SGDSettings) { s.Steps = 0 }), gdiv.ErrParam, "no stopping rule"},
		{"negative steps", p, w0, with(func(s *SGDSettings) { s.Steps = -1 }), gdiv.ErrParam, "steps = -1"},
		{"negative examples", p, w0, with(func(s *SGDSettings) { s.Examples = -5 }), gdiv.ErrParam, "examples = -5"},
		{"zero batch", p, w0, with(func(s *SGDSettings) { s.Batch = 0 }), gdiv.ErrParam, "batch = 0"},
		{"negative batch", p, w0, with(func(s *SGDSettings) { s.Batch = -2 }), gdiv.ErrParam, "batch = -2"},
		{"shuffle batch above n", p, w0, with(func(s *SGDSettings) { s.Batch = 11; s.Sampling = Shuffle }), gdiv.ErrParam, "batch = 11 exceeds the 10 examples"},
		{"bad step rule", p, w0, with(func(s *SGDSettings) { s.Step = 5 }), gdiv.ErrParam, "StepRule(5)"},
		{"bad sampling", p, w0, with(func(s *SGDSettings) { s.Sampling = -1 }), gdiv.ErrParam, "Sampling(-1)"},
		{"negative radius", p, w0, with(func(s *SGDSettings) { s.Radius = -1 }), gdiv.ErrParam, "radius = -1"},
		{"NaN radius", p, w0, with(func(s *SGDSettings) { s.Radius = math.NaN() }), gdiv.ErrParam, "radius = NaN"},
		{"beta 1", p, w0, with(func(s *SGDSettings) { s.EstimatorBeta = 1 }), gdiv.ErrParam, "estimator beta = 1"},
		{"bad mechanism", p, w0, with(func(s *SGDSettings) { s.Mechanism = gdiv.Dropout{P: 1} }), gdiv.ErrParam, "dropout p = 1"},
		{"bad policy", p, w0, with(func(s *SGDSettings) { s.Policy = &gdiv.BatchSizePolicy{Delta: -1} }), gdiv.ErrParam, "delta = -1"},
		{"initial batch not allowed by policy", p, w0, with(func(s *SGDSettings) { s.Batch = 6; s.Policy = &gdiv.BatchSizePolicy{MultipleOf: 4} }), gdiv.ErrParam, "initial batch = 6"},
		{"shuffle policy min above n", p, w0, with(func(s *SGDSettings) {
			s.Batch = 0
			s.Sampling = Shuffle
			s.Policy = &gdiv.BatchSizePolicy{MinBatch: 12}
		}), gdiv.ErrParam, "max batch = 12 exceeds the 10 examples"},
		{"shuffle policy max above n", p, w0, with(func(s *SGDSettings) { s.Sampling = Shuffle; s.Policy = &gdiv.BatchSizePolicy{MaxBatch: 64} }), gdiv.ErrParam, "max batch = 64 exceeds the 10 examples"},
		{"w0 too short", p, []float64{0}, ok, gdiv.ErrShape, "len(w0) = 1"},
		{"w0 non-finite", p, []float64{0, math.NaN()}, ok, gdiv.ErrNonFinite, "w0"},
		{"no examples", ProblemFunc{Params: 2, Examples: 0}, w0, ok, gdiv.ErrEmpty, "0 examples"},
		{"no parameters", ProblemFunc{Params: 0, Examples: 3}, nil, ok, gdiv.ErrZeroDim, "0 parameters"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			_, err := SGD(c.p, c.w0, c.s)
			if !errors.Is(err, c.err) {
				t.Fatalf("err = %v, want %v", err, c.err)
			}
			if !strings.Contains(err.Error(), c.want) {
				t.Errorf("err = %q, want it to mention %q", err, c.want)
			}
		})
	}
	sgdMustPanic(t, "nil Problem", func() { SGD(nil, w0, ok) })
}

// TestSGDDiverges: a step size far above 2/β makes least squares diverge;
// SGD stops with an error naming the step instead of returning NaN
// weights.
func TestSGDDiverges(t *testing.T) {
	q := sgdRandomLSQ(20, 3, 10)
	p := q.problem()
	for _, rule := range []StepRule{SumStep, MeanStep} {
		res, err := SGD(p, []float64{1, 1, 1}, SGDSettings{LR: 50, Step: rule, Batch: 4, Steps: 10000})
		if !errors.Is(err, gdiv.ErrNonFinite) {
			t.Fatalf("%v: err = %v, want ErrNonFinite", rule, err)
		}
		want := "at step " + strconv.Itoa(res.Steps+1)
		if !strings.Contains(err.Error(), want) {
			t.Errorf("%v: err = %q, want it to name the step (%q)", rule, err, want)
		}
		if res.Steps < 2 || res.Steps > 1000 || len(res.History) != res.Steps {
			t.Errorf("%v: stopped after %d steps (history %d)", rule, res.Steps, len(res.History))
		}
		for _, v := range res.W {
			if !gdiv.IsFinite(v) {
				t.Errorf("%v: returned weights %v are not finite", rule, res.W)
			}
		}
	}
}

func TestSGDNonFiniteGradient(t *testing.T) {
	q := sgdRandomLSQ(8, 2, 11)
	inner := q.problem()
	bad := ProblemFunc{Params: 2, Examples: 8, Func: func(grad, w []float64, i int) float64 {
		f := inner.Func(grad, w, i)
		if i == 5 && grad != nil {
			grad[1] = math.NaN()
		}
		return f
	}}
	for _, mech := range []gdiv.Mechanism{nil, gdiv.Dropout{P: 0.9}} {
		_, err := SGD(bad, []float64{0, 0}, SGDSettings{LR: 0.01, Batch: 8, Steps: 5, Sampling: Shuffle, Mechanism: mech, Seed: 1})
		if !errors.Is(err, gdiv.ErrNonFinite) || !strings.Contains(err.Error(), "gradient of example 5 is NaN at parameter 1") || !strings.Contains(err.Error(), "at step 1,") {
			t.Errorf("mechanism %v: err = %v, want a non-finite gradient naming example 5, parameter 1, step 1", mech, err)
		}
	}
	err := SGDStep(make([]float64, 2), []float64{0, 0}, bad, []int{1, 5}, 0.1, SumStep, 0)
	if !errors.Is(err, gdiv.ErrNonFinite) || !strings.Contains(err.Error(), "example 5") {
		t.Errorf("SGDStep err = %v", err)
	}
	badLoss := ProblemFunc{Params: 2, Examples: 8, Func: func(grad, w []float64, i int) float64 {
		inner.Func(grad, w, i)
		return math.Inf(1)
	}}
	_, err = SGD(badLoss, []float64{0, 0}, SGDSettings{LR: 0.01, Batch: 2, Steps: 5})
	if !errors.Is(err, gdiv.ErrNonFinite) || !strings.Contains(err.Error(), "F(w0)") {
		t.Errorf("infinite initial loss: err = %v", err)
	}
}

func TestSGDStepErrors(t *testing.T) {
	p := lemmaProblem.problem()
	w := []float64{0, 0}
	dst := make([]float64, 2)
	cases := []struct {
		name   string
		idx    []int
		lr     float64
		rule   StepRule
		radius float64
		err    error
	}{
		{"empty batch", nil, 0.1, SumStep, 0, gdiv.ErrEmpty},
		{"zero lr", []int{0}, 0, SumStep, 0, gdiv.ErrParam},
		{"bad rule", []int{0}, 0.1, StepRule(3), 0, gdiv.ErrParam},
		{"negative radius", []int{0}, 0.1, SumStep, -2, gdiv.ErrParam},
	}
	for _, c := range cases {
		if err := SGDStep(dst, w, p, c.idx, c.lr, c.rule, c.radius); !errors.Is(err, c.err) {
			t.Errorf("%s: err = %v, want %v", c.name, err, c.err)
		}
	}
	sgdMustPanic(t, "example index 3", func() { SGDStep(dst, w, p, []int{3}, 0.1, SumStep, 0) })
	sgdMustPanic(t, "len(w)", func() { SGDStep(dst, w[:1], p, []int{0}, 0.1, SumStep, 0) })
	sgdMustPanic(t, "nil Problem", func() { SGDStep(dst, w, nil, []int{0}, 0.1, SumStep, 0) })
}

func TestSGDStepProjectionHuge(t *testing.T) {
	// Finite weights whose squared norm overflows are still projected.
	p := ProblemFunc{Params: 2, Examples: 1, Func: func(grad, w []float64, i int) float64 {
		grad[0], grad[1] = 1, 1
		return 0
	}}
	dst := make([]float64, 2)
	if err := SGDStep(dst, []float64{1e200, 1e200}, p, []int{0}, 1, SumStep, 2); err != nil {
		t.Fatal(err)
	}
	if !scalar.EqualWithinAbsOrRel(dst[0], math.Sqrt2, 1e-15, 1e-15) || dst[0] != dst[1] {
		t.Errorf("projected %v, want (√2, √2)", dst)
	}
	// A per-example gradient whose squared norm overflows is an error.
	huge := ProblemFunc{Params: 2, Examples: 1, Func: func(grad, w []float64, i int) float64 {
		grad[0], grad[1] = 1e200, 1e200
		return 0
	}}
	if err := SGDStep(dst, []float64{0, 0}, huge, []int{0}, 1, SumStep, 0); !errors.Is(err, gdiv.ErrOverflow) {
		t.Errorf("overflowing gradient: err = %v, want ErrOverflow", err)
	}
}

func TestParseEnums(t *testing.T) {
	for _, r := range []StepRule{SumStep, MeanStep} {
		if got, err := ParseStepRule(strings.ToUpper(r.String())); err != nil || got != r {
			t.Errorf("ParseStepRule(%v) = %v, %v", r, got, err)
		}
	}
	for _, s := range []Sampling{WithReplacement, Shuffle} {
		if got, err := ParseSampling(" " + s.String()); err != nil || got != s {
			t.Errorf("ParseSampling(%v) = %v, %v", s, got, err)
		}
	}
	if _, err := ParseStepRule("avg"); !errors.Is(err, gdiv.ErrParam) {
		t.Errorf("ParseStepRule(avg) err = %v", err)
	}
	if _, err := ParseSampling("without"); !errors.Is(err, gdiv.ErrParam) {
		t.Errorf("ParseSampling(without) err = %v", err)
	}
}

// TestUniformIndex checks the index draws are uniform (chi-squared) and
// in range, including a range that forces rejections.
func TestUniformIndex(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	const n, draws = 7, 70000
	var counts [n]int
	for range draws {
		counts[uniformIndex(rng, n)]++
	}
	var chi2 float64
	for _, c := range counts {
		e := float64(draws) / n
		chi2 += (float64(c) - e) * (float64(c) - e) / e
	}
	if chi2 > 22.5 { // p ≈ 0.001 for 6 degrees of freedom
		t.Errorf("χ² = %v for counts %v", chi2, counts)
	}
	big := 1<<62 + 1
	for range 1000 {
		if v := uniformIndex(rng, big); v < 0 || v >= big {
			t.Fatalf("uniformIndex(%d) = %d", big, v)
		}
	}
}

// sgdMustPanic is gdiv's policy_test helper: f must panic with a "gdiv: "
// message containing want.
func sgdMustPanic(t *testing.T, want string, f func()) {
	t.Helper()
	defer func() {
		t.Helper()
		r := recover()
		if r == nil {
			t.Fatalf("no panic, want one mentioning %q", want)
		}
		msg, ok := r.(string)
		if !ok {
			if e, isErr := r.(error); isErr {
				msg = e.Error()
			}
		}
		if !strings.HasPrefix(msg, "gdiv: ") || !strings.Contains(msg, want) {
			t.Fatalf("panic %q, want a gdiv panic mentioning %q", msg, want)
		}
	}()
	f()
}
