package gdiv

import (
	"fmt"
	"strings"
)

// StepRule is the normalization of the mini-batch step (DESIGN decision 1).
type StepRule int

const (
	// SumStep is the paper's step (eq. 2): w ← w − γ Σ_{i∈batch} ∇f_i(w).
	// The per-example step γ does not depend on the batch size, which is
	// the setting of Lemma 1 and Theorems 3–7.
	SumStep StepRule = iota
	// MeanStep is the step of a mean-reduced loss: w ← w − (γ/B) Σ ∇f_i(w),
	// i.e. the sum-step with per-example step γ/B.
	MeanStep
)

var stepRuleNames = [...]string{SumStep: "sum", MeanStep: "mean"}

func (r StepRule) valid() bool { return r >= 0 && int(r) < len(stepRuleNames) }

// String returns "sum" or "mean", or "StepRule(k)" for an invalid value.
func (r StepRule) String() string {
	if !r.valid() {
		return fmt.Sprintf("StepRule(%d)", int(r))
	}
	return stepRuleNames[r]
}

// ParseStepRule returns the rule named "sum" or "mean" (case and
// surrounding spaces ignored); any other name is an ErrParam error.
func ParseStepRule(s string) (StepRule, error) {
	name := strings.ToLower(strings.TrimSpace(s))
	for r, n := range stepRuleNames {
		if n == name {
			return StepRule(r), nil
		}
	}
	return SumStep, paramErr("step rule %q, want sum or mean", s)
}

// Sampling is how SGD draws the examples of its mini-batches (DESIGN
// decision 2).
type Sampling int

const (
	// WithReplacement draws every index independently and uniformly from
	// [0, n) — the paper's sampling, under which Lemma 1 is exact and
	// EstimateBatch is unbiased.
	WithReplacement Sampling = iota
	// Shuffle runs epochs without replacement: a fresh uniform permutation
	// of [0, n) per epoch, batches taken as consecutive slices of it. A
	// batch that crosses the end of an epoch continues into the next
	// epoch's permutation (no example is dropped or repeated within an
	// epoch, so every example appears exactly once per epoch; such a batch
	// may hold an example twice). The per-batch estimate is
	// EstimateBatchFinite with population n (exact for distinct examples;
	// approximate for a batch that crosses an epoch boundary).
	Shuffle
)

var samplingNames = [...]string{WithReplacement: "replacement", Shuffle: "shuffle"}

func (s Sampling) valid() bool { return s >= 0 && int(s) < len(samplingNames) }

// String returns "replacement" or "shuffle", or "Sampling(k)" for an
// invalid value.
func (s Sampling) String() string {
	if !s.valid() {
		return fmt.Sprintf("Sampling(%d)", int(s))
	}
	return samplingNames[s]
}

// ParseSampling returns the sampling named "replacement" or "shuffle"
// (case and surrounding spaces ignored); any other name is an ErrParam
// error.
func ParseSampling(s string) (Sampling, error) {
	name := strings.ToLower(strings.TrimSpace(s))
	for r, n := range samplingNames {
		if n == name {
			return Sampling(r), nil
		}
	}
	return WithReplacement, paramErr("sampling %q, want replacement or shuffle", s)
}

// Valid reports whether r is SumStep or MeanStep.
func (r StepRule) Valid() bool { return r.valid() }

// Valid reports whether s is WithReplacement or Shuffle.
func (s Sampling) Valid() bool { return s.valid() }
