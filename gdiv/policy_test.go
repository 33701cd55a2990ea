package gdiv

import (
	"encoding/json"
	"errors"
	"math"
	"strings"
	"testing"
)

// bound returns a smoothed estimate whose batch bound is bs.
func polEstimate(bs float64) Estimate {
	if math.IsInf(bs, 1) {
		return newEstimate(0, 1, 0)
	}
	return newEstimate(0, bs, 1)
}

func TestPolicyNext(t *testing.T) {
	inf := math.Inf(1)
	cases := []struct {
		name    string
		p       BatchSizePolicy
		current int
		bs      float64 // B̂_S (+Inf: no signal)
		step    int
		want    int
	}{
		// Target δ·B̂_S + 1, floor.
		{"zero policy: δ·B_S+1 with δ = 1", BatchSizePolicy{}, 10, 7, 0, 8},
		{"zero policy: floor of δ·B_S+1", BatchSizePolicy{}, 10, 12.7, 0, 13},
		{"delta 0.5", BatchSizePolicy{Delta: 0.5}, 10, 30, 0, 16},
		{"delta 2", BatchSizePolicy{Delta: 2}, 10, 7, 0, 15},
		{"target equals current", BatchSizePolicy{}, 10, 9, 0, 10},

		// Clamping to [MinBatch, MaxBatch].
		{"clamp to max", BatchSizePolicy{MaxBatch: 12}, 10, 100, 0, 12},
		{"clamp to min", BatchSizePolicy{MinBatch: 8}, 10, 0.5, 0, 8},
		{"B_S below 1 gives batch 1", BatchSizePolicy{}, 2, 0.2, 0, 1},
		{"bounds win over growth limit (current above max)", BatchSizePolicy{MaxBatch: 16}, 100, 1000, 0, 16},
		{"bounds win over growth limit (current below min)", BatchSizePolicy{MinBatch: 64, MaxBatch: 128}, 4, 1000, 0, 128},

		// Growth and shrink limits.
		{"growth limited to 2x by default", BatchSizePolicy{}, 10, 1000, 0, 20},
		{"shrink limited to 1/2 by default", BatchSizePolicy{}, 10, 0, 0, 5},
		{"shrink limit rounds up (ceil of 9/2)", BatchSizePolicy{}, 9, 0, 0, 5},
		{"growth 1.5", BatchSizePolicy{MaxGrowth: 1.5}, 10, 1000, 0, 15},
		{"growth 1 moves one multiple at a time", BatchSizePolicy{MaxGrowth: 1}, 10, 1000, 0, 11},
		{"infinite growth jumps to target", BatchSizePolicy{MaxGrowth: inf}, 10, 1000, 0, 1001},
		{"infinite growth shrinks to target", BatchSizePolicy{MaxGrowth: inf}, 1000, 3, 0, 4},

		// Rounding to multiples of MultipleOf.
		{"round down to multiple", BatchSizePolicy{MultipleOf: 8}, 16, 30, 0, 24},
		{"round down to multiple (25 → 24)", BatchSizePolicy{MultipleOf: 8, MaxGrowth: inf}, 16, 24, 0, 24},
		{"round down below current (21 → 16)", BatchSizePolicy{MultipleOf: 8, MaxGrowth: inf}, 32, 20, 0, 16},
		{"rounding down never undercuts min: round up", BatchSizePolicy{MultipleOf: 8, MinBatch: 3, MaxGrowth: inf}, 16, 0.5, 0, 8},
		{"min not a multiple: smallest multiple above min", BatchSizePolicy{MultipleOf: 4, MinBatch: 5, MaxGrowth: inf}, 12, 1, 0, 8},
		{"max not a multiple: largest multiple below max", BatchSizePolicy{MultipleOf: 4, MaxBatch: 30, MaxGrowth: inf}, 12, 1000, 0, 28},
		{"growth 1.5 with multiple 8 grows by one multiple from 8", BatchSizePolicy{MultipleOf: 8, MaxGrowth: 1.5}, 8, 1000, 0, 16},
		{"growth 1.5 with multiple 8 shrinks by one multiple from 16", BatchSizePolicy{MultipleOf: 8, MaxGrowth: 1.5}, 16, 4, 0, 8},
		{"growth 1.5 with multiple 8: target below the next multiple keeps 8", BatchSizePolicy{MultipleOf: 8, MaxGrowth: 1.5}, 8, 14, 0, 8},
		{"growth 1.5 with multiple 4 grows by one multiple from 4", BatchSizePolicy{MultipleOf: 4, MaxGrowth: 1.5}, 4, 100, 0, 8},
		{"shrink limit respected by rounding up", BatchSizePolicy{MultipleOf: 4, MaxGrowth: 2}, 12, 0, 0, 8},

		// Hysteresis.
		{"hysteresis keeps small increase", BatchSizePolicy{Hysteresis: 0.1}, 100, 104, 0, 100},
		{"hysteresis keeps small decrease", BatchSizePolicy{Hysteresis: 0.1}, 100, 94, 0, 100},
		{"hysteresis lets 10% change through", BatchSizePolicy{Hysteresis: 0.1}, 100, 109, 0, 110},
		{"hysteresis lets large change through", BatchSizePolicy{Hysteresis: 0.1}, 100, 70, 0, 71},
		{"no hysteresis: change by one", BatchSizePolicy{}, 100, 100, 0, 101},
		{"hysteresis does not keep an illegal current", BatchSizePolicy{Hysteresis: 0.5, MultipleOf: 8}, 100, 100, 0, 96},

		// Warm-up.
		{"warm-up keeps the batch", BatchSizePolicy{Warmup: 3}, 10, 1000, 2, 10},
		{"after warm-up", BatchSizePolicy{Warmup: 3}, 10, 1000, 3, 20},
		{"warm-up legalizes an illegal current", BatchSizePolicy{Warmup: 3, MultipleOf: 8, MaxBatch: 64}, 100, 1000, 0, 64},
		{"warm-up rounds down to a multiple", BatchSizePolicy{Warmup: 3, MultipleOf: 8}, 13, 1000, 0, 8},

		// No signal (Ĝ ≤ 0): to MaxBatch, subject to the growth limit.
		{"no signal goes to max", BatchSizePolicy{MaxBatch: 64, MaxGrowth: inf}, 10, inf, 0, 64},
		{"no signal grows by at most MaxGrowth", BatchSizePolicy{MaxBatch: 64}, 10, inf, 0, 20},
		{"no signal without max doubles", BatchSizePolicy{}, 10, inf, 0, 20},
		{"no signal at max stays", BatchSizePolicy{MaxBatch: 64}, 64, inf, 0, 64},
		{"no signal, multiple and max", BatchSizePolicy{MaxBatch: 100, MultipleOf: 16, MaxGrowth: inf}, 16, inf, 0, 96},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			if err := c.p.Validate(); err != nil {
				t.Fatalf("Validate: %v", err)
			}
			got := c.p.Next(c.current, polEstimate(c.bs), c.step)
			if got != c.want {
				t.Errorf("Next(%d, B_S=%v, step %d) = %d, want %d", c.current, c.bs, c.step, got, c.want)
			}
		})
	}
}

// TestPolicyNextInvariants checks, over a grid of policies, currents and
// estimates, that the result is always legal, respects the growth limit
// whenever the current batch is legal, and is a pure function.
func TestPolicyNextInvariants(t *testing.T) {
	policies := []BatchSizePolicy{
		{},
		{MinBatch: 2, MaxBatch: 1000, MultipleOf: 4},
		{MinBatch: 5, MaxBatch: 203, MultipleOf: 8, MaxGrowth: 1.5, Hysteresis: 0.2},
		{Delta: 0.3, MinBatch: 7, MaxBatch: 7},
		{Delta: 3, MultipleOf: 3, MaxGrowth: 4, Warmup: 2},
	}
	estimates := []float64{0, 0.3, 1, 2.5, 7, 33, 500, 1e6, 1e300, math.Inf(1)}
	for pi, p := range policies {
		r := p.resolved()
		for cur := 1; cur <= 300; cur++ {
			for _, bs := range estimates {
				for step := range 4 {
					got := p.Next(cur, polEstimate(bs), step)
					if got < r.MinBatch || got > r.MaxBatch || got%r.MultipleOf != 0 {
						t.Fatalf("policy %d: Next(%d, %v, %d) = %d is not legal", pi, cur, bs, step, got)
					}
					legal := cur >= r.MinBatch && cur <= r.MaxBatch && cur%r.MultipleOf == 0
					if legal {
						g, m := r.MaxGrowth, float64(r.MultipleOf)
						c := float64(cur)
						if float64(got) > max(c*g, c+m) || float64(got) < min(c/g, c-m) {
							t.Fatalf("policy %d: Next(%d, %v, %d) = %d exceeds growth %v", pi, cur, bs, step, got, g)
						}
						// The target is an upper limit: never above it unless
						// forced by the bounds or the shrink limit.
						if target := r.Delta*bs + 1; float64(got) > target && got > cur && got > roundUpMultiple(r.MinBatch, r.MultipleOf) {
							t.Fatalf("policy %d: Next(%d, %v, %d) = %d grows past the target %v", pi, cur, bs, step, got, target)
						}
					}
					if again := p.Next(cur, polEstimate(bs), step); again != got {
						t.Fatalf("policy %d: Next is not deterministic: %d then %d", pi, got, again)
					}
				}
			}
		}
	}
}

func TestPolicyValidate(t *testing.T) {
	nan := math.NaN()
	cases := []struct {
		name string
		p    BatchSizePolicy
		want string // substring of the error; "" for valid
	}{
		{"zero value", BatchSizePolicy{}, ""},
		{"full", BatchSizePolicy{Delta: 0.5, MinBatch: 8, MaxBatch: 512, MultipleOf: 8, Hysteresis: 0.1, MaxGrowth: 2, Warmup: 10, LR: LRSqrt}, ""},
		{"min equals max", BatchSizePolicy{MinBatch: 16, MaxBatch: 16}, ""},
		{"infinite growth", BatchSizePolicy{MaxGrowth: math.Inf(1)}, ""},
		{"negative delta", BatchSizePolicy{Delta: -1}, "delta"},
		{"NaN delta", BatchSizePolicy{Delta: nan}, "delta"},
		{"infinite delta", BatchSizePolicy{Delta: math.Inf(1)}, "delta"},
		{"negative min", BatchSizePolicy{MinBatch: -1}, "min batch"},
		{"negative max", BatchSizePolicy{MaxBatch: -3}, "max batch"},
		{"min above max", BatchSizePolicy{MinBatch: 10, MaxBatch: 5}, "min batch = 10 > max batch = 5"},
		{"negative multiple", BatchSizePolicy{MultipleOf: -8}, "multiple of"},
		{"no multiple in range", BatchSizePolicy{MinBatch: 9, MaxBatch: 15, MultipleOf: 8}, "no multiple of 8"},
		{"negative hysteresis", BatchSizePolicy{Hysteresis: -0.1}, "hysteresis"},
		{"NaN hysteresis", BatchSizePolicy{Hysteresis: nan}, "hysteresis"},
		{"growth below 1", BatchSizePolicy{MaxGrowth: 0.5}, "max growth"},
		{"negative growth", BatchSizePolicy{MaxGrowth: -2}, "max growth"},
		{"NaN growth", BatchSizePolicy{MaxGrowth: nan}, "max growth"},
		{"negative warmup", BatchSizePolicy{Warmup: -1}, "warmup"},
		{"bad LR rule", BatchSizePolicy{LR: LRRule(7)}, "LRRule(7)"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			err := c.p.Validate()
			if c.want == "" {
				if err != nil {
					t.Fatalf("Validate() = %v, want nil", err)
				}
				return
			}
			if !errors.Is(err, ErrParam) {
				t.Fatalf("Validate() = %v, want ErrParam", err)
			}
			if !strings.Contains(err.Error(), c.want) {
				t.Errorf("Validate() = %q, want it to mention %q", err, c.want)
			}
			sgdMustPanic(t, "gdiv: ", func() { c.p.Next(10, polEstimate(5), 0) })
		})
	}
}

func TestPolicyNextPanics(t *testing.T) {
	p := BatchSizePolicy{}
	sgdMustPanic(t, "current batch = 0", func() { p.Next(0, polEstimate(5), 0) })
	sgdMustPanic(t, "step = -1", func() { p.Next(4, polEstimate(5), -1) })
	sgdMustPanic(t, "NaN", func() { p.Next(4, Estimate{BatchBound: math.NaN()}, 0) })
	sgdMustPanic(t, "-5", func() { p.Next(8, Estimate{BatchBound: -5}, 0) })
}

// A negative (or NaN, or −Inf) batch bound is refused with the argument's
// name, not turned into the minimum batch; +Inf and NoSignal are valid.
func TestPolicyCheckNext(t *testing.T) {
	p := BatchSizePolicy{}
	for _, c := range []struct {
		name    string
		current int
		est     Estimate
		step    int
		field   string
	}{
		{"negative bound", 8, Estimate{BatchBound: -5}, 0, "batch_bound"},
		{"NaN bound", 8, Estimate{BatchBound: math.NaN()}, 0, "batch_bound"},
		{"-Inf bound", 8, Estimate{BatchBound: math.Inf(-1)}, 0, "batch_bound"},
		{"current 0", 0, polEstimate(5), 0, "current"},
		{"step -1", 8, polEstimate(5), -1, "step"},
		{"bad policy", 8, polEstimate(5), 0, "min_batch"},
	} {
		q := p
		if c.name == "bad policy" {
			q.MinBatch = -1
		}
		err := q.CheckNext(c.current, c.est, c.step)
		var fe *FieldError
		if !errors.Is(err, ErrParam) || !errors.As(err, &fe) || fe.Field != c.field {
			t.Errorf("%s: CheckNext = %v, want ErrParam naming %q", c.name, err, c.field)
		}
	}
	for _, est := range []Estimate{polEstimate(0), polEstimate(5), polEstimate(math.Inf(1)), {BatchBound: math.NaN(), NoSignal: true}} {
		if err := p.CheckNext(8, est, 0); err != nil {
			t.Errorf("CheckNext(%+v) = %v, want nil", est, err)
		}
	}
}

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

func TestScaleLR(t *testing.T) {
	const tol = 1e-15
	cases := []struct {
		name     string
		rule     LRRule
		old, new int
		want     float64
	}{
		{"none", LRNone, 32, 128, 0.1},
		{"linear up", LRLinear, 32, 128, 0.4},
		{"linear down", LRLinear, 128, 32, 0.025},
		{"linear same", LRLinear, 50, 50, 0.1},
		{"sqrt up", LRSqrt, 32, 128, 0.2},
		{"sqrt down", LRSqrt, 128, 32, 0.05},
		{"sqrt 2", LRSqrt, 1, 2, 0.1 * math.Sqrt2},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			got := ScaleLR(c.rule, 0.1, c.old, c.new)
			if math.Abs(got-c.want) > tol*c.want {
				t.Errorf("ScaleLR(%v, 0.1, %d, %d) = %v, want %v", c.rule, c.old, c.new, got, c.want)
			}
		})
	}
	// Path independence of the linear rule: chaining = direct (up to rounding).
	chained := ScaleLR(LRLinear, ScaleLR(LRLinear, 0.1, 8, 24), 24, 40)
	if direct := ScaleLR(LRLinear, 0.1, 8, 40); math.Abs(chained-direct) > tol {
		t.Errorf("linear chained %v, direct %v", chained, direct)
	}
	sgdMustPanic(t, "ScaleLR", func() { ScaleLR(LRLinear, 0.1, 0, 4) })
	sgdMustPanic(t, "invalid rule", func() { ScaleLR(LRRule(-1), 0.1, 2, 4) })
}

func TestLRRuleText(t *testing.T) {
	for _, r := range []LRRule{LRNone, LRLinear, LRSqrt} {
		got, err := ParseLRRule(" " + strings.ToUpper(r.String()) + " ")
		if err != nil || got != r {
			t.Errorf("ParseLRRule(%q) = %v, %v", r.String(), got, err)
		}
		b, err := json.Marshal(BatchSizePolicy{LR: r})
		if err != nil {
			t.Fatal(err)
		}
		var back BatchSizePolicy
		if err := json.Unmarshal(b, &back); err != nil || back.LR != r {
			t.Errorf("JSON round trip of %v: %s → %v, %v", r, b, back.LR, err)
		}
	}
	if _, err := ParseLRRule("cubic"); !errors.Is(err, ErrParam) || !strings.Contains(err.Error(), `"cubic"`) {
		t.Errorf("ParseLRRule(cubic) error = %v", err)
	}
	if s := LRRule(9).String(); s != "LRRule(9)" {
		t.Errorf("String of invalid rule = %q", s)
	}
	if _, err := json.Marshal(BatchSizePolicy{LR: LRRule(9)}); err == nil {
		t.Error("marshalling an invalid rule succeeded")
	}
}

// TestAdaScaleGain checks the gain against hand-computed cases and its
// limits: σ² = 3, G = 1 at S = 4: r = (3 + 1)/(3/4 + 1) = 16/7.
func TestAdaScaleGain(t *testing.T) {
	est := Estimate{M2: 4, G: 1}
	if got := AdaScaleGain(8, 32, est); math.Abs(got-16.0/7) > 1e-15 {
		t.Errorf("gain %v, want 16/7", got)
	}
	if got := AdaScaleGain(8, 8, est); got != 1 {
		t.Errorf("S = 1: gain %v, want 1", got)
	}
	if got := AdaScaleGain(8, 32, Estimate{M2: 4, NoSignal: true}); got != 4 {
		t.Errorf("no signal: gain %v, want S = 4", got)
	}
	if got := AdaScaleGain(8, 32, Estimate{M2: 1, G: 1}); got != 1 {
		t.Errorf("no noise: gain %v, want 1", got)
	}
	if got := AdaScaleGain(8, 32, Estimate{M2: 0.5, G: 1}); got != 1 {
		t.Errorf("σ̂² < 0: gain %v, want 1", got)
	}
	// shrinking batch: S = 1/2, r = 4/(6 + 1) = 4/7, in [S, 1]
	if got := AdaScaleGain(16, 8, est); math.Abs(got-4.0/7) > 1e-15 {
		t.Errorf("S = 1/2: gain %v, want 4/7", got)
	}
	for _, s := range []int{1, 2, 3, 8, 100} {
		for _, e := range []Estimate{{M2: 5, G: 0.1}, {M2: 5, G: 4.9}, {M2: 1e6, G: 1e-6}} {
			r := AdaScaleGain(4, 4*s, e)
			if r < 1 || r > float64(s) {
				t.Errorf("S = %d, %+v: gain %v outside [1, S]", s, e, r)
			}
		}
	}
}

// TestControllerAdaScale: the controller's LR factor is the gain of the
// smoothed estimate before the step (1 before any estimate).
func TestControllerAdaScale(t *testing.T) {
	c, err := NewController(ControllerSettings{Policy: &BatchSizePolicy{MinBatch: 8, MaxBatch: 64}, Step: MeanStep, LR: LRAdaScale})
	if err != nil {
		t.Fatal(err)
	}
	if f := c.LRFactor(32); f != 1 {
		t.Errorf("before any estimate: factor %v, want 1", f)
	}
	d, err := c.Observe(Observation{Batch: 8, SumSqNorms: 40, SqNormBatchGrad: 100, Mean: false})
	if err != nil || d.LRFactor != 1 {
		t.Fatalf("first step: %v, factor %v", err, d.LRFactor)
	}
	want := AdaScaleGain(8, 16, c.Smoothed())
	d2, err := c.Observe(Observation{Batch: 16, SumSqNorms: 80, SqNormBatchGrad: 300})
	if err != nil {
		t.Fatal(err)
	}
	if d2.LRFactor != want || want <= 1 || want >= 2 {
		t.Errorf("factor %v, want the gain %v of the estimate before the step, in (1, 2)", d2.LRFactor, want)
	}
	if err := (BatchSizePolicy{LR: LRAdaScale}).Validate(); err != nil {
		t.Errorf("adascale policy invalid: %v", err)
	}
	if r, err := ParseLRRule("AdaScale"); err != nil || r != LRAdaScale {
		t.Errorf("ParseLRRule: %v %v", r, err)
	}
}
