package gdiv

import (
	"errors"
	"math"
	"testing"

	"gonum.org/v1/gonum/floats/scalar"
)

// Observations that steer the policy of warmupPolicy: no signal (Ĝ < 0:
// the policy moves toward MaxBatch, doubling) and full signal (all g_i
// equal: M̂² = Ĝ = 1, B̂_S = 1, the policy halves).
func noSignal(b int) Observation { return Observation{Batch: b, SumSqNorms: float64(b)} }
func fullSignal(b int) Observation {
	return Observation{Batch: b, SumSqNorms: float64(b), SqNormBatchGrad: float64(b * b)}
}

var warmupPolicy = BatchSizePolicy{MinBatch: 8, MaxBatch: 64}

const warmupTol = 1e-15

// runFactors feeds the observations (built from the batch the controller
// decided) and checks each step's factor and batch, and that LRFactor
// before the step agrees with Decision.LRFactor (the Go trainer reads the
// first, the adapters the second).
func runFactors(t *testing.T, c *Controller, steps []func(int) Observation, batches []int, factors []float64) {
	t.Helper()
	for k, obs := range steps {
		b := c.Batch()
		pre := c.LRFactor(b)
		d, err := c.Observe(obs(b))
		if err != nil {
			t.Fatal(err)
		}
		if d.Batch != batches[k] {
			t.Fatalf("step %d: batch %d, want %d", k+1, d.Batch, batches[k])
		}
		if pre != d.LRFactor {
			t.Errorf("step %d: LRFactor before the step %v, Decision.LRFactor %v", k+1, pre, d.LRFactor)
		}
		if !scalar.EqualWithinAbsOrRel(d.LRFactor, factors[k], warmupTol, warmupTol) {
			t.Errorf("step %d (batch %d): factor %v, want %v", k+1, d.Batch, d.LRFactor, factors[k])
		}
	}
}

// TestControllerLRWarmup: the linear rule from B₀ = 8, warm-up W = 4, the
// factors computed by hand. Every increase starts a ramp from the factor
// of the step before it; the W-th step reaches the rule's factor; a
// decrease applies at once.
func TestControllerLRWarmup(t *testing.T) {
	pol := warmupPolicy
	c, err := NewController(ControllerSettings{Policy: &pol, Step: MeanStep, LR: LRLinear, LRWarmupSteps: 4})
	if err != nil {
		t.Fatal(err)
	}
	ns, fs := noSignal, fullSignal
	runFactors(t, c,
		[]func(int) Observation{ns, ns, ns, ns, ns, ns, ns, fs, ns},
		[]int{8, 16, 32, 64, 64, 64, 64, 64, 32},
		[]float64{
			1,                         // B₀: no ramp; 8 → 16 (factor 2): ramp from 1
			1 + 1.0/4*(2-1),           // 1.25; 16 → 32 (factor 4): ramp from 1.25
			1.25 + 1.0/4*(4-1.25),     // 1.9375; 32 → 64 (factor 8): ramp from 1.9375
			1.9375 + 1.0/4*(8-1.9375), // 3.453125; 64 stays: the ramp goes on
			1.9375 + 2.0/4*(8-1.9375), // 4.96875
			1.9375 + 3.0/4*(8-1.9375), // 6.484375
			8,                         // the W-th step: the rule's factor; then 64 → 32
			8,                         // no ramp
			4,                         // the decrease at once
		})
	// The last step (32, no signal) decided 64 (factor 8): a new ramp from 4.
	if st := c.State(); st.RampLeft != 4 || st.RampFrom != 4 {
		t.Errorf("after 32 → 64: ramp_left %d, ramp_from %v, want 4, 4", st.RampLeft, st.RampFrom)
	}
}

// TestControllerLRWarmupDecreaseMidRamp: a decrease during a ramp to a
// factor still above the current one starts a new ramp from it; one below
// applies at once and ends the ramp.
func TestControllerLRWarmupDecreaseMidRamp(t *testing.T) {
	pol := warmupPolicy
	c, _ := NewController(ControllerSettings{Policy: &pol, Step: MeanStep, LR: LRLinear, LRWarmupSteps: 4})
	ns, fs := noSignal, fullSignal
	f4 := 1.9375 + 1.0/4*(8-1.9375) // 3.453125
	runFactors(t, c,
		[]func(int) Observation{ns, ns, ns, fs, fs, ns},
		[]int{8, 16, 32, 64, 32, 16},
		[]float64{1, 1.25, 1.9375,
			f4,                // 64 → 32 (factor 4 > 3.453125): a new ramp from f4
			f4 + 1.0/4*(4-f4), // 32 → 16 (factor 2 < this one): at once
			2,
		})
}

// TestControllerLRWarmupCap: the ramp's target is the capped factor, and
// the factor never exceeds MaxLRFactor.
func TestControllerLRWarmupCap(t *testing.T) {
	pol := warmupPolicy
	c, _ := NewController(ControllerSettings{Policy: &pol, Step: MeanStep, LR: LRLinear, LRWarmupSteps: 4, MaxLRFactor: 3})
	ns := noSignal
	f3 := 1.25 + 1.0/4*(3-1.25) // 1.6875, the target min(4, 3)
	runFactors(t, c,
		[]func(int) Observation{ns, ns, ns, ns, ns, ns, ns, ns},
		[]int{8, 16, 32, 64, 64, 64, 64, 64},
		[]float64{1, 1.25, f3, f3 + 1.0/4*(3-f3), f3 + 2.0/4*(3-f3), f3 + 3.0/4*(3-f3), 3, 3})
}

// TestControllerLRWarmupAdaScale: with the adascale rule the ramp goes
// toward the gain of each step (from the estimate before it), and the
// factor lies between the factor ramped from and the gain.
func TestControllerLRWarmupAdaScale(t *testing.T) {
	pol := BatchSizePolicy{MinBatch: 8, MaxBatch: 64, Delta: 4}
	const w = 5
	c, _ := NewController(ControllerSettings{Policy: &pol, Step: MeanStep, LR: LRAdaScale, LRWarmupSteps: w, EstimatorBeta: 0.5})
	// Moderate signal: Σ‖g_i‖² = 4b, ‖Σg_i‖² = b²·0.3 (M̂² = 4, ‖ḡ‖² = 0.3).
	mid := func(b int) Observation {
		return Observation{Batch: b, SumSqNorms: 4 * float64(b), SqNormBatchGrad: 0.3 * float64(b*b)}
	}
	// The ramp tracked here from the decisions: it starts when the next
	// batch's gain exceeds the factor of the step just taken.
	var from float64
	k, active, ramped := 0, false, 0
	for step := 1; step <= 12; step++ {
		b := c.Batch()
		gain := 1.0
		if c.EstimatorSteps() > 0 {
			gain = AdaScaleGain(8, b, c.Smoothed())
		}
		want := gain
		if active {
			k++
			if gain > from {
				want = from + float64(k)/w*(gain-from)
				ramped++
			}
			active = k < w
		}
		o := mid(b)
		if step <= 2 {
			o = noSignal(b)
		}
		d, err := c.Observe(o)
		if err != nil {
			t.Fatal(err)
		}
		if !scalar.EqualWithinAbsOrRel(d.LRFactor, want, warmupTol, warmupTol) {
			t.Errorf("step %d (batch %d): factor %v, want %v (gain %v)", step, b, d.LRFactor, want, gain)
		}
		if d.LRFactor > gain*(1+warmupTol) {
			t.Errorf("step %d: factor %v above the gain %v", step, d.LRFactor, gain)
		}
		if d.NextBatch != d.Batch {
			if next := AdaScaleGain(8, d.NextBatch, c.Smoothed()); next > d.LRFactor {
				from, k, active = d.LRFactor, 0, true
			} else {
				active = false
			}
		}
	}
	if ramped < 3 {
		t.Errorf("only %d ramped steps: the case does not exercise the warm-up", ramped)
	}
}

// TestControllerLRWarmupOff: W = 0 or 1, a sum step, and no policy never
// ramp.
func TestControllerLRWarmupOff(t *testing.T) {
	pol := warmupPolicy
	for _, s := range []ControllerSettings{
		{Policy: &pol, Step: MeanStep, LR: LRLinear},
		{Policy: &pol, Step: MeanStep, LR: LRLinear, LRWarmupSteps: 1},
		{Policy: &pol, Step: SumStep, LRWarmupSteps: 4},
	} {
		c, err := NewController(s)
		if err != nil {
			t.Fatal(err)
		}
		for range 5 {
			b := c.Batch()
			d, _ := c.Observe(noSignal(b))
			want := 1.0
			if s.Step == MeanStep {
				want = float64(b) / 8
			}
			if d.LRFactor != want {
				t.Errorf("%+v, batch %d: factor %v, want %v", s, b, d.LRFactor, want)
			}
		}
		if st := c.State(); st.RampLeft != 0 || st.RampFrom != 0 {
			t.Errorf("%+v: a ramp in the state: %+v", s, st)
		}
	}
	// Without a policy the observed batch may change: no ramp either.
	c, _ := NewController(ControllerSettings{Step: MeanStep, LR: LRLinear, LRWarmupSteps: 4})
	for _, b := range []int{8, 32, 64} {
		if d, _ := c.Observe(noSignal(b)); d.LRFactor != float64(b)/8 {
			t.Errorf("no policy, batch %d: factor %v, want %v", b, d.LRFactor, float64(b)/8)
		}
	}
	var fe *FieldError
	if _, err := NewController(ControllerSettings{Step: MeanStep, LR: LRLinear, LRWarmupSteps: -1}); !errors.As(err, &fe) || fe.Field != "lr_warmup_steps" {
		t.Errorf("lr_warmup_steps -1: %v", err)
	}
}

// TestControllerLRWarmupState: a checkpoint taken mid-ramp resumes bit for
// bit, and SetState refuses inconsistent ramp fields, changing nothing.
func TestControllerLRWarmupState(t *testing.T) {
	pol := warmupPolicy
	set := ControllerSettings{Policy: &pol, Step: MeanStep, LR: LRLinear, LRWarmupSteps: 4, MaxLRFactor: 6}
	a, _ := NewController(set)
	for range 4 {
		a.Observe(noSignal(a.Batch()))
	}
	mid := a.State()
	if mid.RampLeft != 3 || mid.RampFrom != 1.9375 {
		t.Fatalf("mid-ramp state: ramp_left %d, ramp_from %v, want 3, 1.9375", mid.RampLeft, mid.RampFrom)
	}
	b, _ := NewController(set)
	if err := b.SetState(mid); err != nil {
		t.Fatal(err)
	}
	for k := range 5 {
		da, _ := a.Observe(noSignal(a.Batch()))
		db, _ := b.Observe(noSignal(b.Batch()))
		if da.LRFactor != db.LRFactor || da.NextBatch != db.NextBatch {
			t.Fatalf("resumed step %d: factor %v, batch %d; want %v, %d", k+5, db.LRFactor, db.NextBatch, da.LRFactor, da.NextBatch)
		}
	}
	for _, c := range []struct {
		field string
		edit  func(*ControllerState)
	}{
		{"ramp_left", func(s *ControllerState) { s.RampLeft = 5 }},
		{"ramp_left", func(s *ControllerState) { s.RampLeft = -1 }},
		{"ramp_from", func(s *ControllerState) { s.RampLeft = 0 }},
		{"ramp_from", func(s *ControllerState) { s.RampFrom = 0 }},
		{"ramp_from", func(s *ControllerState) { s.RampFrom = math.NaN() }},
		{"ramp_from", func(s *ControllerState) { s.RampFrom = math.Inf(1) }},
		{"ramp_from", func(s *ControllerState) { s.RampFrom = 7 }}, // above the cap 6
	} {
		s := mid
		c.edit(&s)
		before := b.State()
		var fe *FieldError
		if err := b.SetState(s); !errors.As(err, &fe) || fe.Field != c.field || !errors.Is(err, ErrParam) {
			t.Errorf("SetState(%+v) = %v, want a %s field error", s, err, c.field)
		}
		if b.State() != before {
			t.Error("a failed SetState changed the state")
		}
	}
	// A controller without a warm-up refuses a ramp in progress.
	off, _ := NewController(ControllerSettings{Policy: &pol, Step: MeanStep, LR: LRLinear, MaxLRFactor: 6})
	var fe *FieldError
	if err := off.SetState(mid); !errors.As(err, &fe) || fe.Field != "ramp_left" {
		t.Errorf("a ramp in progress for a controller without a warm-up: %v", err)
	}
}
