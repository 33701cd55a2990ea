package gdiv

import (
	"fmt"
	"math"
	"math/rand/v2"
)

// Controller is the per-step decision logic of an adaptive-batch training
// loop, in one place for every trainer: the Go reference trainer (SGD) and
// each framework adapter (the PyTorch monitor, through the Python bridge)
// feed it the sums of each measured batch and act on what it returns. It
// owns
//
//   - the estimator state (a ratio of EMAs, Estimator) and the per-batch
//     estimate (EstimateBatch, EstimateBatchFinite or EstimateTwoScale);
//   - the policy, adjusted once for training (MinBatch ≥ 2, MaxBatch 0 →
//     the data set size) and the decision counter behind its warm-up;
//   - the initial batch B₀ and the LR rule's factor ScaleLR(rule, 1, B₀, B)
//     for a mean-reduced loss, its cap (MaxLRFactor) and its warm-up after
//     a batch change (LRWarmupSteps);
//   - the conversion of measured scalars to the batch sums (loss scales,
//     the B² of a mean-reduced loss; BatchSumsFromScalars);
//   - the Langevin correction of a trainer that adds the summed noise once
//     to the batch gradient (Langevin.SumNoiseStd, ExpectedSumSqNorms);
//   - the seed stream of mechanisms drawn outside Go's trainer (StepSeed);
//   - the measurement cadence (Cadence): which steps are measured at all.
//
// A Controller is a value plus a ControllerState: State and SetState make
// a checkpoint, and a resumed run that observes the same batches makes the
// same decisions bit for bit. It is not safe for concurrent use.
type Controller struct {
	set   ControllerSettings
	pol   *BatchSizePolicy // adjusted; nil without a policy
	lang  Langevin
	est   Estimator
	state ControllerState
}

// ControllerSettings configures a Controller. The zero value measures only
// (no policy), with replacement, without smoothing.
type ControllerSettings struct {
	// Policy, when non-nil, decides the batch after each measured step. The
	// controller applies an adjusted copy (Controller.Policy): MinBatch
	// below 2 becomes 2 (the estimate needs two examples), and MaxBatch 0
	// becomes DatasetSize when that is known. With Shuffle, MaxBatch must
	// not exceed DatasetSize.
	Policy *BatchSizePolicy
	// Batch is the initial batch size. With a Policy, 0 means the smallest
	// batch the policy allows, and any other value must be one it allows;
	// without one, 0 means unknown until the first observation.
	Batch int
	// DatasetSize is n, the number of training examples (0: unknown).
	// Needed by Shuffle; with it, Decision.Diversity = B̂_S/n.
	DatasetSize int
	// Sampling is WithReplacement (EstimateBatch) or Shuffle (without
	// replacement: EstimateBatchFinite with population DatasetSize).
	Sampling Sampling
	// EstimatorBeta is the EMA decay in [0, 1) of the smoothed estimate.
	EstimatorBeta float64
	// Step is the loss normalization of the training loop: with MeanStep
	// the learning rate follows LR (Decision.LRFactor); with SumStep the
	// step already keeps the per-example step fixed, and the factor is 1.
	Step StepRule
	// LR is the learning-rate rule of a MeanStep loop (SGD passes
	// Policy.LR). It must be LRNone with SumStep.
	LR LRRule
	// MaxLRFactor caps the LR factor of a MeanStep loop: the learning rate
	// never exceeds MaxLRFactor × the initial one, whatever the rule and
	// the batch (the step the curvature allows does not grow with the
	// batch). 0 means no cap; otherwise ≥ 1.
	MaxLRFactor float64
	// LRWarmupSteps W ≥ 0 ramps the LR factor of a MeanStep loop after
	// each change of the batch the policy decides, instead of jumping to
	// the new batch's factor (Goyal et al., "Accurate, Large Minibatch
	// SGD: Training ImageNet in 1 Hour", 2017, §2.2: the linear rule's
	// large rate is unstable while the weights still change fast, and a
	// linear warm-up to it avoids the early divergence). When the policy
	// changes the batch after a step whose factor was f₀ and the next
	// batch's factor (the rule's, capped by MaxLRFactor) is f > f₀, the
	// k-th step after the change (k = 1, …, W) uses
	//
	//	f₀ + (k/W)·(f − f₀),
	//
	// f the rule's factor at that step (it moves with the estimate under
	// LRAdaScale), so the W-th step reaches it. A change during a ramp
	// starts a new one from the factor of the step before it. A change to
	// a factor f ≤ f₀ (a smaller batch) applies at once: a smaller step is
	// always safe. The factor never exceeds the rule's (nor the cap). 0 or
	// 1 means no warm-up; without a policy the batch never changes here.
	LRWarmupSteps int
	// WorldSize P ≥ 1 is the number of data-parallel workers sharing each
	// batch (0 means 1): the adjusted policy's MultipleOf becomes
	// lcm(MultipleOf, P), so that every worker gets an equal share.
	WorldSize int
	// LangevinStd σ ≥ 0: the trainer adds Langevin noise N(0, σ²I) per
	// example, summed over the batch and added once to the batch gradient
	// (Decision.NoiseStd); the controller corrects Σ‖g_i‖² by its
	// expectation. 0 means no such noise (a trainer that applies a
	// mechanism to the per-example gradients itself passes 0).
	LangevinStd float64
	// Seed is the base seed of StepSeed.
	Seed uint64
	// Cadence says which steps the trainer measures (the zero value: every
	// step).
	Cadence Cadence
}

// Cadence is how often a trainer measures: an unmeasured step costs the
// trainer no per-example work (its Observation has Unmeasured set) and
// changes neither the estimate nor the batch; the counters, the LR factor
// and the Langevin noise still follow it.
//
// Every = k measures steps 1, k+1, 2k+1, … (0 or 1: every step). Auto
// adapts the interval to how fast the smoothed bound moves: it measures
// every step until the estimator has folded AutoWarmup (8) batches — the
// EMA's first estimates are the noisiest —, then after each measured step
// whose smoothed bound moved by more than 10 % (or whose no-signal flag
// flipped) halves the interval, and after one that moved by less than 2 %
// doubles it, up to MaxEvery (0: 16). A skipped measurement (non-finite,
// batch of 1) measures the next step again.
type Cadence struct {
	Every    int
	Auto     bool
	MaxEvery int
}

// AutoWarmup is the number of estimated batches before an Auto cadence
// starts to space out its measurements.
const AutoWarmup = 8

func (c Cadence) validate() error {
	switch {
	case c.Every < 0:
		return fieldErr("measure_every", "measure every %d steps, want ≥ 1", c.Every)
	case c.MaxEvery < 0:
		return fieldErr("max_measure_every", "max measure interval %d, want ≥ 1 (0 means 16)", c.MaxEvery)
	case c.Auto && c.Every > 1:
		return fieldErr("measure_every", "a fixed interval (%d) and the adaptive cadence at once", c.Every)
	}
	return nil
}

func (c Cadence) maxEvery() int {
	if c.MaxEvery == 0 {
		return 16
	}
	return c.MaxEvery
}

// ControllerState is the complete mutable state of a Controller, for
// checkpoints.
type ControllerState struct {
	Estimator EstimatorState `json:"estimator"`
	// Batch is the batch size to use next: the policy's latest decision
	// (the initial batch before the first decision); without a policy, the
	// last observed batch (the initial one before). 0 means unknown.
	Batch int `json:"batch"`
	// Steps counts observations (skipped ones included), Examples their
	// batches, Decisions the policy's decisions.
	Steps     int `json:"steps"`
	Examples  int `json:"examples"`
	Decisions int `json:"decisions"`
	// FirstBatch is B₀ of the LR rule: the first observed batch (0 before).
	FirstBatch int `json:"first_batch"`
	// Interval is the cadence's current interval (1 with the default
	// cadence) and Wait the number of steps to leave unmeasured before the
	// next measured one (0: measure the next step).
	Interval int `json:"interval"`
	Wait     int `json:"wait"`
	// RampFrom is the LR factor f₀ the warm-up ramps from and RampLeft the
	// number of its steps still to take (ControllerSettings.LRWarmupSteps;
	// both 0 without a ramp in progress): the next step is step
	// W − RampLeft + 1 of the ramp.
	RampFrom float64 `json:"ramp_from"`
	RampLeft int     `json:"ramp_left"`
}

// Observation is what a trainer measured in one step.
//
// Per-example mode (BSmall = 0): SumSqNorms is the sum of the measured
// per-example squared norms and SqNormBatchGrad the squared norm of the
// measured batch gradient. With Mean set they are the gradients of the
// mean-reduced loss (1/B)Σℓ_i, so both are B² too small; NormsScale and
// GradScale (0 means 1) are the loss scales by which the measured
// per-example and batch gradients are too large (BatchSumsFromScalars).
//
// Two-scale mode (BSmall > 0, no per-example gradients; DESIGN, "two-scale
// estimator"): SqNormSmall is the mean over the local batches of ‖ḡ_r‖²
// (local gradients of BSmall examples) and SqNormBatchGrad ‖Ḡ‖² of the
// global gradient over Batch examples. With Mean set they are the squared
// norms of mean gradients; without it, of sums (divided by BSmall² and
// Batch² here). NormsScale and GradScale are the factors by which the
// measured local and global gradients are too large (a loss scale; under
// data-parallel averaging or accumulation, the trainer's).
//
// With Langevin noise (ControllerSettings.LangevinStd > 0) the trainer
// draws a unit Gaussian ξ (one value per coordinate, from StepSeed) before
// the call, measures NoiseDot = ⟨g, ξ⟩ and NoiseSqNorm = ‖ξ‖² (g the
// measured batch gradient, as SqNormBatchGrad) and, after the call, adds
// Decision.NoiseStd·ξ to its batch gradient. Dim is the number of trained
// parameters d (the correction adds B·d·σ² to Σ‖g_i‖²).
type Observation struct {
	Batch                       int
	SumSqNorms, SqNormBatchGrad float64
	Mean                        bool
	NormsScale, GradScale       float64

	BSmall      int
	SqNormSmall float64

	Dim                   int
	NoiseDot, NoiseSqNorm float64

	// Unmeasured marks a step the trainer did not measure (Cadence): only
	// Batch (and Dim with Langevin noise) is read; the step is counted,
	// skipped with SkipUnmeasured, and decides nothing.
	Unmeasured bool
}

// Skip says why an observation was not estimated.
type Skip int

const (
	// NotSkipped: the batch was estimated (and decided, with a policy).
	NotSkipped Skip = iota
	// SkipBatchOfOne: a batch of one example cannot separate signal from
	// noise (Ĝ divides by b − 1).
	SkipBatchOfOne
	// SkipNonFinite: a measured sum is NaN or infinite (a NaN loss, or
	// mixed-precision gradients that overflowed), or a batch sum
	// overflowed; a loss scaler skips such a step too.
	SkipNonFinite
	// SkipUnmeasured: the trainer did not measure the step (Cadence).
	SkipUnmeasured
)

var skipNames = [...]string{NotSkipped: "", SkipBatchOfOne: "batch of 1", SkipNonFinite: "non-finite", SkipUnmeasured: "unmeasured"}

// String returns "", "batch of 1", "non-finite" or "unmeasured".
func (s Skip) String() string {
	if s < 0 || int(s) >= len(skipNames) {
		return fmt.Sprintf("Skip(%d)", int(s))
	}
	return skipNames[s]
}

// Decision is a Controller's answer to one observation.
type Decision struct {
	Step  int // 1-based index of the observation
	Batch int // the observed batch
	// NextBatch is the batch size to use next (ControllerState.Batch).
	NextBatch int
	// LRFactor is ScaleLR(LR, 1, B₀, Batch) for MeanStep (1 for SumStep):
	// multiply each initial learning rate by it for this step.
	LRFactor float64
	// NoiseStd is the standard deviation of the summed Langevin noise to
	// add to the batch gradient (times the gradient's loss scale), 0
	// without noise.
	NoiseStd float64
	// SumSqNorms and SqNormOfSum are the batch's Σ‖g_i‖² and ‖Σ g_i‖²
	// (unscaled, with the noise; NaN when skipped or two-scale).
	SumSqNorms, SqNormOfSum float64
	// Batch is the per-batch estimate (the zero Estimate when skipped);
	// Smoothed the smoothed estimate after the observation.
	BatchEstimate, Smoothed Estimate
	// Diversity is Smoothed.BatchBound/DatasetSize (NaN when unknown).
	Diversity float64
	Skipped   Skip
	// Err is the error behind SkipNonFinite (wrapping ErrNonFinite or
	// ErrOverflow), for a trainer that raises instead of skipping.
	Err error
	// MeasureNext says whether the cadence measures the next step.
	MeasureNext bool
}

// The PCG stream of StepSeed.
const controllerSeedStream uint64 = 0x47444956_53454544 // "GDIVSEED"

// NewController returns a controller for the settings, or an error
// wrapping ErrParam (a *FieldError naming the setting) for invalid ones.
func NewController(s ControllerSettings) (*Controller, error) {
	c := &Controller{set: s}
	switch {
	case !s.Step.valid():
		return nil, fieldErr("step", "step rule %v, want sum or mean", s.Step)
	case !s.LR.valid():
		return nil, fieldErr("lr_rule", "learning-rate rule %v, want none, linear or sqrt", s.LR)
	case s.Step == SumStep && s.LR != LRNone:
		return nil, fieldErr("lr_rule", "learning-rate rule %v with a sum-reduced loss: the sum step w − lr·Σg_i already keeps the per-example step fixed at every batch size (the paper's step); use none", s.LR)
	case !s.Sampling.valid():
		return nil, fieldErr("sampling", "sampling %v, want replacement or shuffle", s.Sampling)
	case s.DatasetSize < 0:
		return nil, fieldErr("dataset_size", "dataset size = %d, want ≥ 1 (0 means unknown)", s.DatasetSize)
	case s.Sampling == Shuffle && s.DatasetSize == 0:
		return nil, fieldErr("sampling", "sampling without replacement (shuffle) needs the dataset size n (dataset_size)")
	case !(s.EstimatorBeta >= 0 && s.EstimatorBeta < 1):
		return nil, fieldErr("estimator_beta", "estimator beta = %v, want 0 ≤ beta < 1", s.EstimatorBeta)
	case s.Batch < 0:
		return nil, fieldErr("batch_size", "batch size = %d, want ≥ 1", s.Batch)
	case s.WorldSize < 0:
		return nil, fieldErr("world_size", "world size = %d, want ≥ 1 (0 means 1)", s.WorldSize)
	case s.MaxLRFactor != 0 && !(s.MaxLRFactor >= 1 && !math.IsInf(s.MaxLRFactor, 1)):
		return nil, fieldErr("max_lr_factor", "max LR factor = %v, want a finite factor ≥ 1 (0 or None: no cap)", s.MaxLRFactor)
	case s.LRWarmupSteps < 0:
		return nil, fieldErr("lr_warmup_steps", "LR warm-up of %d steps, want ≥ 0 (0: none)", s.LRWarmupSteps)
	}
	if err := s.Cadence.validate(); err != nil {
		return nil, err
	}
	c.state.Interval = 1
	c.lang = Langevin{Std: s.LangevinStd}
	if err := c.lang.Validate(); err != nil {
		return nil, &FieldError{Field: "langevin_std", Err: err}
	}
	c.est.Beta = s.EstimatorBeta
	c.state.Estimator = c.est.State()
	c.state.Batch = s.Batch
	if s.Policy == nil {
		return c, nil
	}
	if err := s.Policy.Validate(); err != nil {
		return nil, err
	}
	pol := s.Policy.resolved()
	pol.MinBatch = max(pol.MinBatch, 2)
	if p := s.WorldSize; p > 1 && pol.MultipleOf%p != 0 {
		pol.MultipleOf = pol.MultipleOf / gcd(pol.MultipleOf, p) * p // lcm
	}
	if s.Policy.MaxBatch == 0 && s.DatasetSize > 0 {
		pol.MaxBatch = max(s.DatasetSize, pol.MinBatch)
	}
	if s.Sampling == Shuffle && pol.MaxBatch > s.DatasetSize {
		return nil, fieldErr("max_batch", "policy max batch = %d exceeds the %d examples (dataset_size), which sampling without replacement cannot draw", pol.MaxBatch, s.DatasetSize)
	}
	if err := pol.Validate(); err != nil {
		return nil, fmt.Errorf("policy (min batch raised to 2, max batch defaulting to the dataset size %d): %w", s.DatasetSize, err)
	}
	c.pol = &pol
	switch {
	case s.Batch == 0:
		c.state.Batch = roundUpMultiple(pol.MinBatch, pol.MultipleOf)
	case !pol.allows(s.Batch):
		return nil, fieldErr("batch_size", "initial batch = %d is not allowed by the policy: want a multiple of %d in [%d, %d] (the nearest allowed is %d)",
			s.Batch, pol.MultipleOf, pol.MinBatch, pol.MaxBatch, pol.legalize(float64(s.Batch), float64(pol.MinBatch), float64(pol.MaxBatch)))
	}
	return c, nil
}

// allows reports whether b is a legal batch of the resolved policy.
func (p BatchSizePolicy) allows(b int) bool {
	return b >= p.MinBatch && b <= p.MaxBatch && b%p.MultipleOf == 0
}

// Settings returns the settings the controller was built with.
func (c *Controller) Settings() ControllerSettings { return c.set }

// Policy returns a copy of the adjusted policy, or nil without one.
func (c *Controller) Policy() *BatchSizePolicy {
	if c.pol == nil {
		return nil
	}
	p := *c.pol
	return &p
}

// Batch returns the batch size to use next (0: unknown).
func (c *Controller) Batch() int { return c.state.Batch }

// Smoothed returns the current smoothed estimate.
func (c *Controller) Smoothed() Estimate { return c.est.Smoothed() }

// EstimatorSteps returns the number of estimates folded into the smoothed
// one (observations that were not skipped).
func (c *Controller) EstimatorSteps() int { return c.est.Steps() }

// State returns a copy of the complete state.
func (c *Controller) State() ControllerState {
	s := c.state
	s.Estimator = c.est.State()
	return s
}

// SetState restores a state returned by State of a controller with the
// same settings. It validates the whole state first and changes nothing on
// error (an error wrapping ErrParam or ErrNonFinite naming the field).
func (c *Controller) SetState(s ControllerState) error {
	var e Estimator
	if err := e.SetState(s.Estimator); err != nil {
		return &FieldError{Field: "estimator", Err: err}
	}
	switch {
	case s.Estimator.Beta != c.set.EstimatorBeta:
		return fieldErr("estimator", "estimator beta = %v in the state, but the controller has %v", s.Estimator.Beta, c.set.EstimatorBeta)
	case s.Steps < 0:
		return fieldErr("steps", "steps = %d is negative", s.Steps)
	case s.Examples < 0:
		return fieldErr("examples", "examples = %d is negative", s.Examples)
	case s.Decisions < 0 || s.Decisions > s.Steps:
		return fieldErr("decisions", "decisions = %d, want 0 ≤ decisions ≤ steps = %d", s.Decisions, s.Steps)
	case s.Estimator.Steps > s.Steps:
		return fieldErr("estimator", "the estimator has %d updates but the controller only %d steps", s.Estimator.Steps, s.Steps)
	case s.FirstBatch < 0 || (s.Steps > 0) != (s.FirstBatch > 0):
		return fieldErr("first_batch", "first batch = %d after %d steps, want ≥ 1 once a step was observed (0 before)", s.FirstBatch, s.Steps)
	case s.Batch < 0:
		return fieldErr("batch", "batch = %d is negative", s.Batch)
	case s.Interval < 1 || s.Interval > c.cadenceMax():
		return fieldErr("interval", "measurement interval = %d, want 1 ≤ interval ≤ %d", s.Interval, c.cadenceMax())
	case s.Wait < 0 || s.Wait >= s.Interval:
		return fieldErr("wait", "steps to the next measurement = %d, want 0 ≤ wait < interval = %d", s.Wait, s.Interval)
	case c.pol != nil && !c.pol.allows(s.Batch):
		return fieldErr("batch", "batch = %d is not allowed by the policy (a multiple of %d in [%d, %d])", s.Batch, c.pol.MultipleOf, c.pol.MinBatch, c.pol.MaxBatch)
	case s.RampLeft < 0 || s.RampLeft > c.rampSteps():
		return fieldErr("ramp_left", "LR warm-up steps left = %d, want 0 ≤ steps ≤ %d (lr_warmup_steps, 0 without a warm-up)", s.RampLeft, c.rampSteps())
	case s.RampLeft == 0 && s.RampFrom != 0:
		return fieldErr("ramp_from", "LR warm-up from factor %v without a ramp in progress, want 0", s.RampFrom)
	case s.RampLeft > 0 && !(s.RampFrom > 0 && !math.IsInf(s.RampFrom, 1)):
		return fieldErr("ramp_from", "LR warm-up from factor %v, want a finite factor > 0", s.RampFrom)
	case s.RampLeft > 0 && c.set.MaxLRFactor > 0 && s.RampFrom > c.set.MaxLRFactor:
		return fieldErr("ramp_from", "LR warm-up from factor %v above the cap max_lr_factor = %v", s.RampFrom, c.set.MaxLRFactor)
	}
	c.est = e
	c.state = s
	c.state.Estimator = e.State()
	return nil
}

// LRFactor returns ScaleLR(LR, 1, B₀, batch) for a MeanStep loop (1 for
// SumStep), B₀ the first observed batch (batch itself before the first
// observation): the factor of the next step. It panics if batch < 1.
//
// It is at most MaxLRFactor (when set). With LRAdaScale it is
// AdaScaleGain(B₀, batch, smoothed estimate): the
// estimate before this step's observation (1 before the first estimate),
// so that the rate of a step is known before its gradient, as for the
// other rules. During an LR warm-up (LRWarmupSteps) it is the ramp's
// factor, between the factor ramped from and the rule's.
func (c *Controller) LRFactor(batch int) float64 {
	if c.set.Step != MeanStep {
		return 1
	}
	f := c.ruleFactor(batch)
	if left := c.state.RampLeft; left > 0 && f > c.state.RampFrom {
		w := c.set.LRWarmupSteps
		f0 := c.state.RampFrom
		f = f0 + float64(w-left+1)/float64(w)*(f-f0)
	}
	return f
}

// rampSteps is the length of the LR warm-up (0: none).
func (c *Controller) rampSteps() int {
	if c.set.Step != MeanStep || c.set.LRWarmupSteps < 2 {
		return 0
	}
	return c.set.LRWarmupSteps
}

// ruleFactor is the LR rule's factor for the next step at the batch,
// capped by MaxLRFactor, without the warm-up.
func (c *Controller) ruleFactor(batch int) float64 {
	b0 := c.state.FirstBatch
	if b0 == 0 {
		b0 = batch
	}
	var f float64
	switch {
	case c.set.LR != LRAdaScale:
		f = ScaleLR(c.set.LR, 1, b0, batch)
	case c.est.Steps() == 0:
		f = 1
	default:
		f = AdaScaleGain(b0, batch, c.est.Smoothed())
	}
	if c.set.MaxLRFactor > 0 {
		f = min(f, c.set.MaxLRFactor)
	}
	return f
}

// ScaleLR returns lr0·LRFactor(batch): the learning rate of a step with the
// given batch, lr0 the rate at B₀. Every adapter multiplies its initial
// rates by Decision.LRFactor, so the trainer does the same (bit for bit).
// It panics if batch < 1.
func (c *Controller) ScaleLR(lr0 float64, batch int) float64 { return lr0 * c.LRFactor(batch) }

// StepSeed returns the seed of the mechanism draws of step k (1-based): a
// fixed function of (Seed, k) — the first output of
// rand.NewPCG(Seed, k ⊕ stream) — so that a resumed run draws the same
// noise. It panics if k < 1.
func (c *Controller) StepSeed(k int) uint64 { return StepSeed(c.set.Seed, k) }

// StepSeed is Controller.StepSeed for a base seed.
func StepSeed(seed uint64, k int) uint64 {
	if k < 1 {
		panic(fmt.Sprintf("gdiv: StepSeed: step %d, want ≥ 1", k))
	}
	return rand.NewPCG(seed, uint64(k)^controllerSeedStream).Uint64()
}

// NoiseStd returns the standard deviation of the summed Langevin noise of
// a batch (Langevin.SumNoiseStd for the loop's reduction), 0 without noise.
// It panics if batch < 1.
func (c *Controller) NoiseStd(batch int) float64 {
	if c.lang.Std == 0 {
		return 0
	}
	return c.lang.SumNoiseStd(batch, c.set.Step == MeanStep)
}

// Observe folds one step into the state and returns the decision. A
// batch of one or a non-finite measurement is skipped (Decision.Skipped;
// the estimator and the policy are unchanged, the step and example counters
// advance), and so is an unmeasured step (Observation.Unmeasured). It
// returns an error wrapping ErrParam for an invalid observation (a batch <
// 1, negative sums or scales, a two-scale pair with BSmall ≥ Batch, a
// negative Dim), and leaves the state unchanged then.
func (c *Controller) Observe(o Observation) (Decision, error) {
	if err := c.checkObservation(o); err != nil {
		return Decision{}, err
	}
	st := &c.state
	b := o.Batch
	if st.FirstBatch == 0 {
		st.FirstBatch = b
	}
	d := Decision{
		Step: st.Steps + 1, Batch: b,
		LRFactor: c.LRFactor(b), NoiseStd: c.NoiseStd(b),
		SumSqNorms: math.NaN(), SqNormOfSum: math.NaN(),
	}
	if d.NoiseStd != 0 && o.GradScale > 0 {
		d.NoiseStd *= o.GradScale
	}
	st.Steps++
	st.Examples += b
	if st.RampLeft > 0 {
		st.RampLeft--
	}
	before := c.est.Smoothed()

	switch {
	case o.Unmeasured:
		d.Skipped = SkipUnmeasured
	case o.BSmall == 0 && b < 2:
		d.Skipped = SkipBatchOfOne
	default:
		est, sumSq, sqSum, err := c.batchEstimate(o, d.NoiseStd)
		if err == nil {
			_, err = c.est.Update(est)
		}
		if err != nil {
			d.Skipped, d.Err = SkipNonFinite, err
			break
		}
		d.BatchEstimate = est
		d.SumSqNorms, d.SqNormOfSum = sumSq, sqSum
	}
	if d.Skipped == NotSkipped && c.pol != nil {
		st.Batch = c.pol.Next(b, c.est.Smoothed(), st.Decisions)
		st.Decisions++
	}
	if c.pol == nil {
		st.Batch = b
	}
	c.advanceRamp(b, d.LRFactor)
	if st.RampLeft == 0 {
		st.RampFrom = 0
	}
	d.NextBatch = st.Batch
	d.Smoothed = c.est.Smoothed()
	d.Diversity = math.NaN()
	if c.set.DatasetSize > 0 {
		d.Diversity = d.Smoothed.BatchBound / float64(c.set.DatasetSize)
	}
	c.advanceCadence(d.Skipped, before, d.Smoothed)
	d.MeasureNext = st.Wait == 0
	return d, nil
}

// advanceRamp starts an LR warm-up when the batch changes from b (the
// step just observed, whose factor was f0) to a batch whose factor exceeds
// f0, and ends one when it changes to a factor at or below f0 (see
// ControllerSettings.LRWarmupSteps).
func (c *Controller) advanceRamp(b int, f0 float64) {
	st := &c.state
	w := c.rampSteps()
	if w == 0 || st.Batch == b || st.Batch == 0 {
		return
	}
	if c.ruleFactor(st.Batch) > f0 {
		st.RampFrom, st.RampLeft = f0, w
	} else {
		st.RampLeft = 0
	}
}

// advanceCadence moves the cadence past one step (see Cadence).
func (c *Controller) advanceCadence(skipped Skip, before, after Estimate) {
	st, cad := &c.state, c.set.Cadence
	switch skipped {
	case SkipUnmeasured:
		st.Wait = max(st.Wait-1, 0)
		return
	case SkipBatchOfOne, SkipNonFinite:
		st.Wait = 0 // measure again at once
		return
	}
	switch {
	case cad.Auto:
		switch {
		case c.est.Steps() < AutoWarmup:
			st.Interval = 1
		case boundMoved(before, after, 0.10):
			st.Interval = max(st.Interval/2, 1)
		case !boundMoved(before, after, 0.02):
			st.Interval = min(st.Interval*2, cad.maxEvery())
		}
	case cad.Every > 1:
		st.Interval = cad.Every
	}
	st.Wait = st.Interval - 1
}

// boundMoved reports whether the smoothed batch bound moved by more than
// the relative tolerance tol between two estimates (a flip of no-signal
// counts as a move).
func boundMoved(a, b Estimate, tol float64) bool {
	if a.NoSignal != b.NoSignal {
		return true
	}
	if a.NoSignal {
		return false
	}
	return math.Abs(b.BatchBound-a.BatchBound) > tol*math.Abs(a.BatchBound)
}

// cadenceMax is the largest interval the cadence uses.
func (c *Controller) cadenceMax() int {
	switch cad := c.set.Cadence; {
	case cad.Auto:
		return cad.maxEvery()
	case cad.Every > 1:
		return cad.Every
	}
	return 1
}

func (c *Controller) checkObservation(o Observation) error {
	switch {
	case o.Batch < 1:
		return fieldErr("batch", "batch of %d examples, want ≥ 1", o.Batch)
	case o.SumSqNorms < 0 || o.SqNormBatchGrad < 0 || o.SqNormSmall < 0 || o.NoiseSqNorm < 0:
		return fieldErr("sums", "negative sum of squares: sum_sq_norms = %v, batch gradient %v, small-batch %v, noise %v",
			o.SumSqNorms, o.SqNormBatchGrad, o.SqNormSmall, o.NoiseSqNorm)
	case o.NormsScale < 0 || o.GradScale < 0 || math.IsInf(o.NormsScale, 1) || math.IsInf(o.GradScale, 1) || math.IsNaN(o.NormsScale) || math.IsNaN(o.GradScale):
		return fieldErr("loss_scale", "loss scales %v (norms), %v (batch gradient), want finite scales > 0 (0 means 1)", o.NormsScale, o.GradScale)
	case o.BSmall < 0 || (o.BSmall > 0 && o.BSmall >= o.Batch):
		return fieldErr("b_small", "two-scale batches b_small = %d, b_big = %d: want 1 ≤ b_small < b_big", o.BSmall, o.Batch)
	case o.Dim < 0:
		return fieldErr("dim", "dimension %d is negative", o.Dim)
	case c.set.Sampling == Shuffle && o.Batch > c.set.DatasetSize:
		return fieldErr("batch", "batch of %d distinct examples from a data set of %d: want b ≤ n", o.Batch, c.set.DatasetSize)
	case c.lang.Std > 0 && o.Dim < 1:
		return fieldErr("dim", "dimension %d: the Langevin correction needs the number of trained parameters (≥ 1)", o.Dim)
	}
	return nil
}

// batchEstimate converts the observation to the batch sums (with the
// Langevin noise of standard deviation noiseStd) and the per-batch
// estimate.
func (c *Controller) batchEstimate(o Observation, noiseStd float64) (Estimate, float64, float64, error) {
	b := o.Batch
	ns, gs := o.NormsScale, o.GradScale
	if ns == 0 {
		ns = 1
	}
	if gs == 0 {
		gs = 1
	}
	if o.BSmall > 0 {
		small, big := o.SqNormSmall/(ns*ns), o.SqNormBatchGrad/(gs*gs)
		if !o.Mean {
			bs, bb := float64(o.BSmall), float64(b)
			small, big = small/(bs*bs), big/(bb*bb)
		}
		if !isFinite(small) || !isFinite(big) {
			return Estimate{}, 0, 0, fmt.Errorf("%w: two-scale squared norms %v (local), %v (global)", ErrNonFinite, o.SqNormSmall, o.SqNormBatchGrad)
		}
		var e Estimate
		var err error
		if c.set.Sampling == Shuffle {
			e, err = EstimateTwoScaleFinite(o.BSmall, small, b, big, c.set.DatasetSize)
		} else {
			e, err = EstimateTwoScale(o.BSmall, small, b, big)
		}
		return e, math.NaN(), math.NaN(), err
	}
	sqGrad := o.SqNormBatchGrad
	if noiseStd != 0 {
		// ‖g + sξ‖² from ⟨g, ξ⟩ and ‖ξ‖², in the measured (scaled) units.
		sqGrad += noiseStd * (2*o.NoiseDot + noiseStd*o.NoiseSqNorm)
		sqGrad = max(sqGrad, 0) // rounding of a cancelling sum
	}
	sumSq, sqSum, err := BatchSumsFromScalars(b, o.SumSqNorms, sqGrad, o.Mean, ns, gs)
	if err != nil {
		return Estimate{}, 0, 0, err
	}
	if o.Mean {
		bf := float64(b)
		sumSq *= bf * bf // the per-example norms of a mean loss are those of ℓ_i/B
		if !isFinite(sumSq) {
			return Estimate{}, 0, 0, fmt.Errorf("%w: Σ‖g_i‖² = %v·%d² overflows", ErrOverflow, o.SumSqNorms, b)
		}
	}
	if c.lang.Std > 0 {
		sumSq = c.lang.ExpectedSumSqNorms(sumSq, b, o.Dim)
	}
	var e Estimate
	if b < 2 {
		return e, sumSq, sqSum, nil
	}
	if c.set.Sampling == Shuffle {
		e, err = EstimateBatchFinite(b, c.set.DatasetSize, sumSq, sqSum)
	} else {
		e, err = EstimateBatch(b, sumSq, sqSum)
	}
	return e, sumSq, sqSum, err
}

func gcd(a, b int) int {
	for b != 0 {
		a, b = b, a%b
	}
	return a
}
