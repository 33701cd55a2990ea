package gdiv

import (
	"errors"
	"math"
	"math/rand/v2"
	"slices"
	"testing"

	"gonum.org/v1/gonum/floats/scalar"
)

// ctrlSums returns seeded per-example-like batch sums (Σ‖g_i‖² ≥ ‖Σg_i‖²/b).
func ctrlSums(rng *rand.Rand, b int) (sumSq, sqSum float64) {
	sumSq = float64(b) * (1 + rng.Float64())
	sqSum = sumSq * float64(b) * rng.Float64() * 0.5
	return sumSq, sqSum
}

// TestControllerMatchesHandLoop checks Observe against the loop that every
// trainer used to write by hand: EstimateBatch(Finite), Estimator.Update,
// BatchSizePolicy.Next on the adjusted policy, ScaleLR from B₀.
func TestControllerMatchesHandLoop(t *testing.T) {
	pol := &BatchSizePolicy{Delta: 1.5, MinBatch: 1, MultipleOf: 2, MaxGrowth: 1.5, Warmup: 2, LR: LRSqrt}
	for _, samp := range []Sampling{WithReplacement, Shuffle} {
		t.Run(samp.String(), func(t *testing.T) {
			const n = 500
			c, err := NewController(ControllerSettings{Policy: pol, DatasetSize: n, Sampling: samp, EstimatorBeta: 0.8, Step: MeanStep, LR: LRSqrt})
			if err != nil {
				t.Fatal(err)
			}
			adj := pol.resolved()
			adj.MinBatch, adj.MaxBatch = 2, n
			if got := c.Policy(); *got != adj {
				t.Fatalf("adjusted policy %+v, want %+v", *got, adj)
			}
			est := Estimator{Beta: 0.8}
			batch, b0 := 2, 2
			if c.Batch() != batch {
				t.Fatalf("initial batch %d, want 2", c.Batch())
			}
			rng := rand.New(rand.NewPCG(3, 4))
			for k := 1; k <= 60; k++ {
				s1, s2 := ctrlSums(rng, batch)
				// Measured as a mean loss under a loss scale of 8: both sums
				// are B² too small and 64 too large.
				bf := float64(batch)
				d, err := c.Observe(Observation{Batch: batch, SumSqNorms: s1 / (bf * bf) * 64, SqNormBatchGrad: s2 / (bf * bf) * 64, Mean: true, NormsScale: 8, GradScale: 8})
				if err != nil {
					t.Fatal(err)
				}
				var e Estimate
				if samp == Shuffle {
					e, _ = EstimateBatchFinite(batch, n, s1, s2)
				} else {
					e, _ = EstimateBatch(batch, s1, s2)
				}
				sm, _ := est.Update(e)
				next := adj.Next(batch, sm, k-1)
				if !scalar.EqualWithinAbsOrRel(d.Smoothed.BatchBound, sm.BatchBound, 0, 1e-12) || d.Smoothed.NoSignal != sm.NoSignal {
					t.Fatalf("step %d: smoothed %v, want %v", k, d.Smoothed, sm)
				}
				if !scalar.EqualWithinAbsOrRel(d.SumSqNorms, s1, 0, 1e-14) || !scalar.EqualWithinAbsOrRel(d.SqNormOfSum, s2, 0, 1e-14) {
					t.Fatalf("step %d: sums %v %v, want %v %v", k, d.SumSqNorms, d.SqNormOfSum, s1, s2)
				}
				if want := ScaleLR(LRSqrt, 1, b0, batch); d.LRFactor != want {
					t.Fatalf("step %d: lr factor %v, want %v", k, d.LRFactor, want)
				}
				// The decision may differ from the hand loop only through
				// rounding of the estimate (1e-12 relative): recompute Next
				// on the controller's own smoothed value.
				if want := adj.Next(batch, d.Smoothed, k-1); d.NextBatch != want {
					t.Fatalf("step %d: next batch %d, want %d (hand loop: %d)", k, d.NextBatch, want, next)
				}
				if d.Step != k || d.Skipped != NotSkipped || !scalar.EqualWithinAbsOrRel(d.Diversity, d.Smoothed.BatchBound/n, 0, 1e-15) {
					t.Fatalf("step %d: decision %+v", k, d)
				}
				batch = d.NextBatch
			}
			if st := c.State(); st.Steps != 60 || st.Decisions != 60 || st.FirstBatch != 2 {
				t.Errorf("state %+v", st)
			}
		})
	}
}

func TestControllerSkips(t *testing.T) {
	c, err := NewController(ControllerSettings{Policy: &BatchSizePolicy{MaxBatch: 64}, EstimatorBeta: 0.5})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.Observe(Observation{Batch: 4, SumSqNorms: 10, SqNormBatchGrad: 12}); err != nil {
		t.Fatal(err)
	}
	before := c.State()
	for _, o := range []struct {
		obs  Observation
		want Skip
	}{
		{Observation{Batch: 1, SumSqNorms: 1, SqNormBatchGrad: 1}, SkipBatchOfOne},
		{Observation{Batch: 4, SumSqNorms: math.NaN(), SqNormBatchGrad: 1}, SkipNonFinite},
		{Observation{Batch: 4, SumSqNorms: 1, SqNormBatchGrad: math.Inf(1)}, SkipNonFinite},
		{Observation{Batch: 4, SumSqNorms: math.MaxFloat64, SqNormBatchGrad: 1, Mean: true}, SkipNonFinite},
	} {
		d, err := c.Observe(o.obs)
		if err != nil {
			t.Fatal(err)
		}
		if d.Skipped != o.want {
			t.Errorf("%+v: skipped %q, want %q", o.obs, d.Skipped, o.want)
		}
		if o.want == SkipNonFinite && !(errors.Is(d.Err, ErrNonFinite) || errors.Is(d.Err, ErrOverflow)) {
			t.Errorf("%+v: err %v", o.obs, d.Err)
		}
		if d.NextBatch != before.Batch {
			t.Errorf("%+v: a skipped step moved the batch %d → %d", o.obs, before.Batch, d.NextBatch)
		}
	}
	after := c.State()
	if after.Estimator != before.Estimator || after.Decisions != before.Decisions || after.Batch != before.Batch {
		t.Errorf("skipped steps changed the estimate or policy state: %+v → %+v", before, after)
	}
	if after.Steps != before.Steps+4 || after.Examples != before.Examples+13 {
		t.Errorf("counters %+v, want 4 more steps and 13 more examples", after)
	}
	// Without a policy the next batch is the observed one.
	c2, _ := NewController(ControllerSettings{})
	if d, _ := c2.Observe(Observation{Batch: 7, SumSqNorms: 3, SqNormBatchGrad: 2}); d.NextBatch != 7 || c2.Batch() != 7 {
		t.Errorf("no policy: next batch %d", d.NextBatch)
	}
}

// TestControllerLangevin checks the correction from ⟨g, ξ⟩ and ‖ξ‖²
// against the noisy vector itself, and M̂² shifted by d·σ².
func TestControllerLangevin(t *testing.T) {
	const b, d, std = 6, 5, 0.3
	rng := rand.New(rand.NewPCG(1, 2))
	g, xi, noisy := make([]float64, d), make([]float64, d), make([]float64, d)
	for j := range g {
		g[j], xi[j] = rng.NormFloat64(), rng.NormFloat64()
	}
	for _, step := range []StepRule{SumStep, MeanStep} {
		c, err := NewController(ControllerSettings{Step: step, LangevinStd: std})
		if err != nil {
			t.Fatal(err)
		}
		s := (Langevin{Std: std}).SumNoiseStd(b, step == MeanStep) * 2 // loss scale 2
		var dot, xx float64
		for j := range g {
			dot += g[j] * xi[j]
			xx += xi[j] * xi[j]
			noisy[j] = g[j] + s*xi[j]
		}
		sumSq := 40.0
		dec, err := c.Observe(Observation{Batch: b, SumSqNorms: sumSq, SqNormBatchGrad: sqNorm(g), Mean: step == MeanStep,
			NormsScale: 2, GradScale: 2, Dim: d, NoiseDot: dot, NoiseSqNorm: xx})
		if err != nil {
			t.Fatal(err)
		}
		if !scalar.EqualWithinAbsOrRel(dec.NoiseStd, s, 0, 1e-15) {
			t.Errorf("%v: noise std %v, want %v", step, dec.NoiseStd, s)
		}
		_, wantSq, _ := BatchSumsFromScalars(b, 1, sqNorm(noisy), step == MeanStep, 2, 2)
		if !scalar.EqualWithinAbsOrRel(dec.SqNormOfSum, wantSq, 0, 1e-12) {
			t.Errorf("%v: ‖Σg‖² %v, want %v", step, dec.SqNormOfSum, wantSq)
		}
		clean := sumSq / 4
		if step == MeanStep {
			clean *= b * b
		}
		if want := clean + b*d*std*std; !scalar.EqualWithinAbsOrRel(dec.SumSqNorms, want, 0, 1e-14) {
			t.Errorf("%v: Σ‖g_i‖² %v, want %v", step, dec.SumSqNorms, want)
		}
	}
	if _, err := (&Controller{lang: Langevin{Std: 1}}).Observe(Observation{Batch: 2}); !errors.Is(err, ErrParam) {
		t.Errorf("Langevin without Dim: %v", err)
	}
}

func TestControllerTwoScale(t *testing.T) {
	c, _ := NewController(ControllerSettings{})
	d, err := c.Observe(Observation{Batch: 32, BSmall: 8, SqNormSmall: 3, SqNormBatchGrad: 1.5, Mean: true})
	if err != nil {
		t.Fatal(err)
	}
	want, _ := EstimateTwoScale(8, 3, 32, 1.5)
	if d.BatchEstimate != want || d.Smoothed.BatchBound != want.BatchBound {
		t.Errorf("two-scale %+v, want %+v", d.BatchEstimate, want)
	}
	// The same pair measured as sums (B² larger) and scaled: local gradients
	// 0.5× (accumulated as ℓ/2), the global one 4× (a loss scale).
	c2, _ := NewController(ControllerSettings{})
	d2, err := c2.Observe(Observation{Batch: 32, BSmall: 8, SqNormSmall: 3 * 64 * 0.25, SqNormBatchGrad: 1.5 * 1024 * 16, NormsScale: 0.5, GradScale: 4})
	if err != nil {
		t.Fatal(err)
	}
	if !near(d2.BatchEstimate.M2, want.M2, 1e-14) || !near(d2.BatchEstimate.G, want.G, 1e-14) {
		t.Errorf("two-scale from scaled sums %+v, want %+v", d2.BatchEstimate, want)
	}
	if _, err := c.Observe(Observation{Batch: 8, BSmall: 8}); !errors.Is(err, ErrParam) {
		t.Errorf("b_small = b_big: %v", err)
	}
}

// TestControllerResume checks that State/SetState resumes bit for bit and
// that a bad state changes nothing.
func TestControllerResume(t *testing.T) {
	set := ControllerSettings{Policy: &BatchSizePolicy{MaxBatch: 256, Hysteresis: 0.05}, EstimatorBeta: 0.9, Step: MeanStep, LR: LRLinear, Seed: 9}
	a, _ := NewController(set)
	obs := func(rng *rand.Rand, b int) Observation {
		s1, s2 := ctrlSums(rng, b)
		return Observation{Batch: b, SumSqNorms: s1, SqNormBatchGrad: s2}
	}
	rng := rand.New(rand.NewPCG(7, 7))
	var mid ControllerState
	var want []Decision
	var seen []Observation
	for k := 1; k <= 40; k++ {
		o := obs(rng, a.Batch())
		seen = append(seen, o)
		d, _ := a.Observe(o)
		if k == 20 {
			mid = a.State()
		}
		if k > 20 {
			want = append(want, d)
		}
	}
	b, _ := NewController(set)
	if err := b.SetState(mid); err != nil {
		t.Fatal(err)
	}
	for i, w := range want {
		d, _ := b.Observe(seen[20+i])
		if d.NextBatch != w.NextBatch || d.Smoothed != w.Smoothed || d.LRFactor != w.LRFactor {
			t.Fatalf("resumed step %d: %+v, want %+v", 21+i, d, w)
		}
	}
	bad := []ControllerState{
		func() ControllerState { s := mid; s.Steps = -1; return s }(),
		func() ControllerState { s := mid; s.Decisions = s.Steps + 1; return s }(),
		func() ControllerState { s := mid; s.FirstBatch = 0; return s }(),
		func() ControllerState { s := mid; s.Batch = 1; return s }(),
		func() ControllerState { s := mid; s.Estimator.EMAM2 = math.NaN(); return s }(),
		func() ControllerState { s := mid; s.Estimator.Beta = 0.5; return s }(),
	}
	for _, s := range bad {
		before := b.State()
		var fe *FieldError
		if err := b.SetState(s); !errors.As(err, &fe) || fe.Field == "" {
			t.Errorf("SetState(%+v) = %v, want a *FieldError", s, err)
		}
		if b.State() != before {
			t.Errorf("a failed SetState changed the state")
		}
	}
}

func TestControllerSettingsErrors(t *testing.T) {
	for _, c := range []struct {
		s     ControllerSettings
		field string
	}{
		{ControllerSettings{Step: 7}, "step"},
		{ControllerSettings{LR: LRLinear}, "lr_rule"},
		{ControllerSettings{Sampling: Shuffle}, "sampling"},
		{ControllerSettings{DatasetSize: -1}, "dataset_size"},
		{ControllerSettings{EstimatorBeta: 1}, "estimator_beta"},
		{ControllerSettings{Batch: -2}, "batch_size"},
		{ControllerSettings{LangevinStd: -1}, "langevin_std"},
		{ControllerSettings{Policy: &BatchSizePolicy{MinBatch: 9, MaxBatch: 3}}, "min_batch"},
		{ControllerSettings{Policy: &BatchSizePolicy{Delta: math.NaN()}}, "delta"},
		{ControllerSettings{Policy: &BatchSizePolicy{MultipleOf: 4}, Batch: 6}, "batch_size"},
		{ControllerSettings{Policy: &BatchSizePolicy{MaxBatch: 50}, Sampling: Shuffle, DatasetSize: 10}, "max_batch"},
	} {
		_, err := NewController(c.s)
		var fe *FieldError
		if !errors.As(err, &fe) || fe.Field != c.field || !errors.Is(err, ErrParam) {
			t.Errorf("%+v: error %v, want a FieldError for %q", c.s, err, c.field)
		}
	}
}

func TestStepSeed(t *testing.T) {
	seen := map[uint64]bool{}
	for k := 1; k <= 1000; k++ {
		s := StepSeed(42, k)
		if seen[s] {
			t.Fatalf("StepSeed(42, %d) repeats", k)
		}
		seen[s] = true
		if s != StepSeed(42, k) {
			t.Fatal("StepSeed is not deterministic")
		}
	}
	if StepSeed(1, 1) == StepSeed(2, 1) {
		t.Error("StepSeed ignores the base seed")
	}
}

// The cadence: a fixed interval measures steps 1, k+1, …; the adaptive one
// measures every step through the warm-up and while the bound moves, and
// doubles its interval (up to MaxEvery) once the bound is steady; a skipped
// measurement measures again at once; the state round-trips.
func TestControllerCadence(t *testing.T) {
	steady := Observation{Batch: 8, SumSqNorms: 80, SqNormBatchGrad: 400}
	run := func(cad Cadence, n int, obs func(k int) Observation) []bool {
		c, err := NewController(ControllerSettings{Cadence: cad, EstimatorBeta: 0.5})
		if err != nil {
			t.Fatal(err)
		}
		var measured []bool
		next := true
		for k := 1; k <= n; k++ {
			o := obs(k)
			o.Unmeasured = !next
			measured = append(measured, next)
			d, err := c.Observe(o)
			if err != nil {
				t.Fatal(err)
			}
			if o.Unmeasured != (d.Skipped == SkipUnmeasured) || d.Step != k || c.State().Examples != 8*k {
				t.Fatalf("step %d: skipped %v, step %d", k, d.Skipped, d.Step)
			}
			next = d.MeasureNext
		}
		return measured
	}
	fixed := run(Cadence{Every: 3}, 9, func(int) Observation { return steady })
	if want := []bool{true, false, false, true, false, false, true, false, false}; !slices.Equal(fixed, want) {
		t.Errorf("Every 3: measured %v, want %v", fixed, want)
	}
	auto := run(Cadence{Auto: true, MaxEvery: 4}, 40, func(int) Observation { return steady })
	var at []int
	for k, m := range auto {
		if m {
			at = append(at, k+1)
		}
	}
	// every step until 8 batches are folded, then intervals 2, 4, 4, … on a steady bound
	want := []int{1, 2, 3, 4, 5, 6, 7, 8, 10, 14, 18, 22, 26, 30, 34, 38}
	if !slices.Equal(at, want) {
		t.Errorf("auto on a steady bound measured steps %v, want %v", at, want)
	}
	// A bound that keeps moving keeps the interval at 1.
	moving := run(Cadence{Auto: true}, 30, func(k int) Observation {
		o := steady
		o.SqNormBatchGrad = 400 * float64(1+k%2*2) // alternating signal: the bound jumps
		return o
	})
	for k, m := range moving {
		if !m {
			t.Fatalf("a moving bound left step %d unmeasured", k+1)
		}
	}
	// A non-finite measurement is retried on the next step.
	c, _ := NewController(ControllerSettings{Cadence: Cadence{Every: 5}})
	bad := steady
	bad.SumSqNorms = math.NaN()
	if d, _ := c.Observe(bad); d.Skipped != SkipNonFinite || !d.MeasureNext {
		t.Errorf("after a non-finite step: %v, measure next %v", d.Skipped, d.MeasureNext)
	}
	if d, _ := c.Observe(steady); d.MeasureNext {
		t.Error("after a measured step of Every 5 the next step is measured")
	}
	st := c.State()
	if st.Interval != 5 || st.Wait != 4 {
		t.Errorf("state interval %d wait %d, want 5, 4", st.Interval, st.Wait)
	}
	for _, bad := range []ControllerState{{Interval: 0}, {Interval: 6}, {Interval: 5, Wait: 5}, {Interval: 5, Wait: -1}} {
		s := st
		s.Interval, s.Wait = bad.Interval, bad.Wait
		var fe *FieldError
		if err := c.SetState(s); !errors.As(err, &fe) || (fe.Field != "interval" && fe.Field != "wait") {
			t.Errorf("SetState(interval %d, wait %d) = %v, want a field error", s.Interval, s.Wait, err)
		}
	}
	if err := c.SetState(st); err != nil {
		t.Fatal(err)
	}
	for _, cad := range []Cadence{{Every: -1}, {MaxEvery: -2}, {Auto: true, Every: 3}} {
		if _, err := NewController(ControllerSettings{Cadence: cad}); !errors.Is(err, ErrParam) {
			t.Errorf("cadence %+v: %v, want ErrParam", cad, err)
		}
	}
}

// TestControllerMaxLRFactor: the cap bounds every rule's factor; 0 is no
// cap; below 1 or infinite is refused naming the field.
func TestControllerMaxLRFactor(t *testing.T) {
	for _, rule := range []LRRule{LRLinear, LRSqrt} {
		c, err := NewController(ControllerSettings{Step: MeanStep, LR: rule, MaxLRFactor: 3})
		if err != nil {
			t.Fatal(err)
		}
		if _, err := c.Observe(Observation{Batch: 8, SumSqNorms: 4, SqNormBatchGrad: 9}); err != nil {
			t.Fatal(err)
		}
		if f := c.LRFactor(8 * 16); f != 3 {
			t.Errorf("%v at 16× the batch: factor %v, want the cap 3", rule, f)
		}
		if f, want := c.LRFactor(16), ScaleLR(rule, 1, 8, 16); f != want {
			t.Errorf("%v below the cap: factor %v, want %v", rule, f, want)
		}
	}
	for _, bad := range []float64{0.5, -1, math.Inf(1), math.NaN()} {
		_, err := NewController(ControllerSettings{Step: MeanStep, LR: LRLinear, MaxLRFactor: bad})
		var fe *FieldError
		if !errors.As(err, &fe) || fe.Field != "max_lr_factor" {
			t.Errorf("max LR factor %v: %v, want a max_lr_factor field error", bad, err)
		}
	}
}

// TestControllerWorldSize: the adjusted policy rounds to lcm(MultipleOf, P)
// and the initial batch is its smallest legal one.
func TestControllerWorldSize(t *testing.T) {
	c, err := NewController(ControllerSettings{Policy: &BatchSizePolicy{MinBatch: 4, MaxBatch: 64, MultipleOf: 3}, WorldSize: 2})
	if err != nil {
		t.Fatal(err)
	}
	if m := c.Policy().MultipleOf; m != 6 {
		t.Errorf("multiple of %d, want lcm(3, 2) = 6", m)
	}
	if b := c.Batch(); b != 6 {
		t.Errorf("initial batch %d, want 6", b)
	}
	c4, _ := NewController(ControllerSettings{Policy: &BatchSizePolicy{MaxBatch: 64, MultipleOf: 4}, WorldSize: 2})
	if m := c4.Policy().MultipleOf; m != 4 {
		t.Errorf("multiple of %d, want 4 (already a multiple of P)", m)
	}
	var fe *FieldError
	if _, err := NewController(ControllerSettings{WorldSize: -1}); !errors.As(err, &fe) || fe.Field != "world_size" {
		t.Errorf("world size -1: %v", err)
	}
}
