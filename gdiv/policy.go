package gdiv

import (
	"fmt"
	"math"
	"strings"
)

// BatchSizePolicy chooses the next mini-batch size from a (smoothed)
// estimate of the batch-size bound B̂_S. Its target is
//
//	B_next = δ·B̂_S + 1,
//
// the largest batch for which Lemma 1 (eq. 5) and Theorem 3 keep mini-batch
// SGD (1 + δ/2)-optimal per gradient computed: with B ≤ δ·B_S(w) + 1 the
// expected progress per iteration is B times that of serial SGD up to the
// factor (1 + δ) on the γ²M² term. The target is then limited and rounded
// (see Next) so that a distributed job can act on it.
//
// A zero field takes its default wherever zero is not itself a meaningful
// value; where zero is meaningful (Hysteresis, Warmup) it means exactly
// that, so a value passed through from another layer is never silently
// replaced:
//
//	Delta       0 → 1          (Theorem 3 with δ = 1: within a factor 3/2 of serial SGD)
//	MinBatch    0 → 1
//	MaxBatch    0 → no upper bound (SGD caps it at the number of examples)
//	MultipleOf  0 → 1
//	MaxGrowth   0 → 2          (at most doubling or halving per decision)
//	Hysteresis  0 = none       (0.1 suits distributed jobs, where a resize costs)
//	Warmup      0 = none
//	LR          LRNone
//
// The zero value is a valid policy. A policy is a value: Next is a pure
// function of the policy and its arguments, so a resumed run that replays
// the same estimates makes the same decisions.
type BatchSizePolicy struct {
	// Delta is δ > 0 in B_next = δ·B̂_S + 1. Larger δ allows larger batches
	// at a (1 + δ/2) cost in the suboptimality guarantee (Theorem 3).
	Delta float64

	// MinBatch and MaxBatch bound the batch size: 1 ≤ MinBatch ≤ MaxBatch.
	MinBatch, MaxBatch int

	// MultipleOf is the granularity of the batch size, typically the number
	// of data-parallel workers so every worker gets the same share. Next
	// rounds DOWN to a multiple (B ≤ δ·B_S + 1 is an upper limit), except
	// where that falls below the lower limit (MinBatch or the shrink limit
	// of MaxGrowth), where it rounds up. There must be a multiple of
	// MultipleOf in [MinBatch, MaxBatch].
	MultipleOf int

	// Hysteresis h ≥ 0 suppresses small changes: the batch stays when the
	// relative change |B_next − B|/B is below h.
	Hysteresis float64

	// MaxGrowth g ≥ 1 limits one decision to B_next ∈ [B/g, B·g], widened
	// to [B − m, B + m] (m = MultipleOf) where that is wider, so that a
	// decision can always move by one multiple: otherwise a small g (say
	// 1.5 at B = m) would pin the batch to B when rounding to multiples.
	// +Inf means no limit.
	MaxGrowth float64

	// Warmup is the number of initial decisions that keep the batch: Next
	// returns the current batch while step < Warmup.
	Warmup int

	// LR is the learning-rate rule to apply when the batch changes, for
	// training loops that use a mean-reduced loss (see ScaleLR). The policy
	// itself does not use it.
	LR LRRule
}

// Defaults of BatchSizePolicy for zero fields.
const (
	DefaultPolicyDelta     = 1.0
	DefaultPolicyMaxGrowth = 2.0
)

// unboundedBatch is the effective MaxBatch of a policy with MaxBatch = 0:
// 2^53 (the largest integer that float64 holds exactly), or the largest int
// on 32-bit platforms.
var unboundedBatch = int(min(uint64(math.MaxInt), 1<<53))

// resolved returns the policy with the defaults of zero fields filled in.
func (p BatchSizePolicy) resolved() BatchSizePolicy {
	if p.Delta == 0 {
		p.Delta = DefaultPolicyDelta
	}
	if p.MinBatch == 0 {
		p.MinBatch = 1
	}
	if p.MaxBatch == 0 {
		p.MaxBatch = unboundedBatch
	}
	if p.MultipleOf == 0 {
		p.MultipleOf = 1
	}
	if p.MaxGrowth == 0 {
		p.MaxGrowth = DefaultPolicyMaxGrowth
	}
	return p
}

// Resolved returns the policy with the defaults of zero fields filled in
// (Delta = DefaultPolicyDelta, MinBatch = 1, MaxBatch = 2^53 or the largest
// int, MultipleOf = 1, MaxGrowth = DefaultPolicyMaxGrowth): the values Next
// uses. A trainer reads its batch range from it.
func (p BatchSizePolicy) Resolved() BatchSizePolicy { return p.resolved() }

// Validate returns an error wrapping ErrParam that names the first field
// out of range: Delta negative, NaN or infinite; MinBatch or MaxBatch
// negative; MinBatch > MaxBatch (MaxBatch set); MultipleOf negative, or no
// multiple of it in [MinBatch, MaxBatch]; Hysteresis negative, NaN or
// infinite; MaxGrowth NaN or, when set, below 1; Warmup negative; LR not one
// of the LRRule constants. Zero fields are valid (they take the defaults).
func (p BatchSizePolicy) Validate() error {
	switch {
	case !(p.Delta >= 0) || math.IsInf(p.Delta, 1):
		return fieldErr("delta", "batch-size policy delta = %v, want δ > 0 (0 means %v)", p.Delta, DefaultPolicyDelta)
	case p.MinBatch < 0:
		return fieldErr("min_batch", "batch-size policy min batch = %d, want ≥ 1 (0 means 1)", p.MinBatch)
	case p.MaxBatch < 0:
		return fieldErr("max_batch", "batch-size policy max batch = %d, want ≥ 1 (0 means no bound)", p.MaxBatch)
	case p.MultipleOf < 0:
		return fieldErr("multiple_of", "batch-size policy multiple of = %d, want ≥ 1 (0 means 1)", p.MultipleOf)
	case !(p.Hysteresis >= 0) || math.IsInf(p.Hysteresis, 1):
		return fieldErr("hysteresis", "batch-size policy hysteresis = %v, want a finite h ≥ 0", p.Hysteresis)
	case math.IsNaN(p.MaxGrowth) || (p.MaxGrowth != 0 && p.MaxGrowth < 1):
		return fieldErr("max_growth", "batch-size policy max growth = %v, want ≥ 1 (0 means %v)", p.MaxGrowth, DefaultPolicyMaxGrowth)
	case p.Warmup < 0:
		return fieldErr("warmup", "batch-size policy warmup = %d, want ≥ 0", p.Warmup)
	case !p.LR.valid():
		return fieldErr("lr_rule", "batch-size policy LR rule %v, want none, linear or sqrt", p.LR)
	}
	r := p.resolved()
	if r.MinBatch > r.MaxBatch {
		return fieldErr("min_batch", "batch-size policy min batch = %d > max batch = %d", r.MinBatch, r.MaxBatch)
	}
	if roundUpMultiple(r.MinBatch, r.MultipleOf) > r.MaxBatch {
		return fieldErr("multiple_of", "batch-size policy: no multiple of %d in [min batch, max batch] = [%d, %d]",
			r.MultipleOf, r.MinBatch, r.MaxBatch)
	}
	return nil
}

// CheckNext returns the error for which Next would panic, or nil: Validate's
// error, or an error wrapping ErrParam naming the argument ("current",
// "step", "batch_bound") for current < 1, step < 0, or a batch bound that
// is NaN or negative without NoSignal. B̂_S = M̂²/Ĝ with M̂² ≥ 0 and Ĝ > 0
// is never negative; a negative one is a caller's bug, not a small batch
// size.
func (p BatchSizePolicy) CheckNext(current int, est Estimate, step int) error {
	if err := p.Validate(); err != nil {
		return err
	}
	switch {
	case current < 1:
		return fieldErr("current", "BatchSizePolicy.Next: current batch = %d, want ≥ 1", current)
	case step < 0:
		return fieldErr("step", "BatchSizePolicy.Next: step = %d, want ≥ 0 (the 0-based index of the decision)", step)
	case !est.NoSignal && !(est.BatchBound >= 0):
		return fieldErr("batch_bound", "BatchSizePolicy.Next: estimate batch_bound = %v, want ≥ 0 (+Inf or NoSignal: no signal)", est.BatchBound)
	}
	return nil
}

// Next returns the batch size to use after a step whose smoothed estimate
// is est, when the current batch size is current. step is the 0-based index
// of the decision (the number of earlier decisions; SGD passes k − 1 after
// its k-th step), used only for the warm-up.
//
// The decision, in order:
//
//  1. target t = δ·est.BatchBound + 1; with est.NoSignal (Ĝ ≤ 0, no
//     evidence of a common gradient direction, B̂_S = +Inf) t = +Inf: any
//     batch is as good as any other, so the policy goes to MaxBatch,
//     subject to the growth limit;
//  2. growth limit: t is clamped to [current/g, current·g], g = MaxGrowth,
//     widened to [current − m, current + m], m = MultipleOf;
//  3. bounds: t is clamped to [MinBatch, MaxBatch] (the bounds win over the
//     growth limit when current is outside them);
//  4. rounding: ⌊t⌋ is rounded down to a multiple of MultipleOf, or up to
//     the next multiple when rounding down falls below the lower limit of
//     steps 2–3;
//  5. hysteresis: when |B_next − current|/current < Hysteresis, current is
//     kept.
//
// During the warm-up (step < Warmup) and in step 5 current is returned
// only when it is itself a legal batch size (within the bounds, a multiple
// of MultipleOf); otherwise it is first made legal as in steps 3–4. So the
// result is always a legal batch size.
//
// It panics if CheckNext returns an error: the policy is invalid (see
// Validate), current < 1, step < 0, or est.BatchBound is NaN or negative
// without NoSignal.
func (p BatchSizePolicy) Next(current int, est Estimate, step int) int {
	if err := p.CheckNext(current, est, step); err != nil {
		panic(err.Error())
	}
	r := p.resolved()
	minB, maxB, m := r.MinBatch, r.MaxBatch, r.MultipleOf
	legalCur := current >= minB && current <= maxB && current%m == 0
	if step < r.Warmup {
		if legalCur {
			return current
		}
		return r.legalize(float64(current), float64(minB), float64(maxB))
	}

	// 1. Target.
	t := math.Inf(1)
	if !est.NoSignal {
		t = r.Delta*est.BatchBound + 1
	}
	// 2–3. Growth limit (widened to one multiple), then bounds. The growth
	// interval is kept only when it holds a legal multiple (always so when
	// current is legal: it holds current itself).
	cur := float64(current)
	lo := max(math.Ceil(min(cur/r.MaxGrowth, cur-float64(m))), float64(minB))
	hi := min(math.Floor(max(cur*r.MaxGrowth, cur+float64(m))), float64(maxB))
	if lo > hi || float64(roundUpMultiple(int(lo), m)) > hi {
		lo, hi = float64(minB), float64(maxB)
	}
	next := r.legalize(t, lo, hi)

	// 5. Hysteresis.
	if legalCur && math.Abs(float64(next-current)) < r.Hysteresis*cur {
		return current
	}
	return next
}

// legalize clamps t to [lo, hi] (integers, 1 ≤ lo ≤ hi, with a multiple of
// MultipleOf in between), takes the floor and rounds it down to a multiple
// of MultipleOf, or up when rounding down falls below lo.
func (r BatchSizePolicy) legalize(t, lo, hi float64) int {
	t = math.Floor(min(max(t, lo), hi))
	b := int(t)
	m := r.MultipleOf
	if down := b - b%m; down >= int(lo) {
		return down
	}
	return roundUpMultiple(int(lo), m)
}

// roundUpMultiple returns the smallest multiple of m that is ≥ b (b ≥ 1,
// m ≥ 1), saturating at the largest int.
func roundUpMultiple(b, m int) int {
	if r := b % m; r != 0 {
		if b > math.MaxInt-(m-r) {
			return math.MaxInt
		}
		return b + m - r
	}
	return b
}

// RoundUpMultiple returns the smallest multiple of m that is ≥ b (b ≥ 1,
// m ≥ 1), saturating at the largest int. RoundUpMultiple(MinBatch,
// MultipleOf) of a resolved policy is the smallest batch Next can return.
func RoundUpMultiple(b, m int) int { return roundUpMultiple(b, m) }

// LRRule says how a training loop with a MEAN-reduced loss rescales its
// learning rate when the batch size changes (DESIGN decision 1). The
// paper's step is the sum-step w ← w − γ Σ g_i (eq. 2); a mean-reduced loss
// takes w ← w − η·(1/B) Σ g_i, which is the paper's step with γ = η/B.
type LRRule int

const (
	// LRNone keeps the learning rate.
	LRNone LRRule = iota
	// LRLinear scales it by B_new/B_old, which keeps the per-example step
	// γ = η/B of the paper's sum-step fixed (the rule Lemma 1 and
	// Theorem 3 are stated for: the same γ at every batch size).
	LRLinear
	// LRSqrt scales it by sqrt(B_new/B_old), keeping the noise variance of
	// the step fixed (a common heuristic for adaptive optimizers).
	LRSqrt
	// LRAdaScale scales it by AdaScale's gain ratio (Johnson et al., 2020)
	// from the current estimate (AdaScaleGain): between 1 (no noise: a
	// larger batch gives the same gradient, so the same step) and the
	// linear rule's S = B/B₀ (pure noise). It never exceeds the linear
	// rule, and stays near 1 where the gradient's signal dominates, which
	// is where the linear rule overshoots the stable step. It depends on
	// the estimate, so only a Controller applies it (ScaleLR cannot).
	LRAdaScale
)

var lrRuleNames = [...]string{LRNone: "none", LRLinear: "linear", LRSqrt: "sqrt", LRAdaScale: "adascale"}

func (r LRRule) valid() bool { return r >= 0 && int(r) < len(lrRuleNames) }

// String returns "none", "linear" or "sqrt", or "LRRule(k)" for an invalid
// value.
func (r LRRule) String() string {
	if !r.valid() {
		return fmt.Sprintf("LRRule(%d)", int(r))
	}
	return lrRuleNames[r]
}

// ParseLRRule returns the rule named "none", "linear" or "sqrt" (case and
// surrounding spaces ignored). Any other name is an ErrParam error.
func ParseLRRule(s string) (LRRule, error) {
	name := strings.ToLower(strings.TrimSpace(s))
	for r, n := range lrRuleNames {
		if n == name {
			return LRRule(r), nil
		}
	}
	return LRNone, paramErr("learning-rate rule %q, want none, linear, sqrt or adascale", s)
}

// MarshalText implements encoding.TextMarshaler (JSON, flags).
func (r LRRule) MarshalText() ([]byte, error) {
	if !r.valid() {
		return nil, paramErr("learning-rate rule %d, want none, linear, sqrt or adascale", int(r))
	}
	return []byte(r.String()), nil
}

// UnmarshalText implements encoding.TextUnmarshaler with ParseLRRule.
func (r *LRRule) UnmarshalText(b []byte) error {
	v, err := ParseLRRule(string(b))
	if err != nil {
		return err
	}
	*r = v
	return nil
}

// ScaleLR returns the learning rate for a batch change from oldBatch to
// newBatch under rule:
//
//	LRNone    lr
//	LRLinear  lr·newBatch/oldBatch   (keeps the paper's sum-step γ = lr/B)
//	LRSqrt    lr·sqrt(newBatch/oldBatch)
//
// The rules are path-independent: rescaling from the initial batch B₀ to
// each B_k directly gives the same result as chaining them, without the
// accumulated rounding. It panics if rule is invalid or a batch is < 1.
func ScaleLR(rule LRRule, lr float64, oldBatch, newBatch int) float64 {
	if oldBatch < 1 || newBatch < 1 {
		panic(fmt.Sprintf("gdiv: ScaleLR: batches %d → %d, want ≥ 1", oldBatch, newBatch))
	}
	switch rule {
	case LRNone:
		return lr
	case LRLinear:
		return lr * float64(newBatch) / float64(oldBatch)
	case LRSqrt:
		return lr * math.Sqrt(float64(newBatch)/float64(oldBatch))
	case LRAdaScale:
		panic("gdiv: ScaleLR: the adascale rule depends on the estimate (AdaScaleGain, Controller.LRFactor)")
	}
	panic(fmt.Sprintf("gdiv: ScaleLR: invalid rule %v", rule))
}

// AdaScaleGain returns AdaScale's gain ratio for a batch S = batch/b0 times
// the initial one, from an estimate with M² = σ² + G (σ² the per-example
// gradient variance, G = ‖∇F‖²):
//
//	r = (σ² + G)/(σ²/S + G),
//
// the factor by which one step at the larger batch makes the progress of r
// steps at b0 (Johnson, Agrawal, Gu & Guestrin, "AdaScale SGD", ICML 2020).
// r lies between 1 and S; with no signal (Ĝ ≤ 0) it is S (pure noise: the
// linear rule); with σ̂² < 0 (a noisy estimate) 1. It panics if a batch
// is < 1.
func AdaScaleGain(b0, batch int, est Estimate) float64 {
	if b0 < 1 || batch < 1 {
		panic(fmt.Sprintf("gdiv: AdaScaleGain: batches %d → %d, want ≥ 1", b0, batch))
	}
	s := float64(batch) / float64(b0)
	if est.NoSignal || !(est.G > 0) {
		return s
	}
	sigma2 := est.M2 - est.G
	if !(sigma2 > 0) {
		return 1
	}
	r := (sigma2 + est.G) / (sigma2/s + est.G)
	return min(max(r, min(1, s)), max(1, s))
}
