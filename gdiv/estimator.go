package gdiv

import (
	"fmt"
	"math"
)

// Estimate holds estimates of the population quantities M², G and
// B_S = M²/G of a data set, from one batch or smoothed over many.
type Estimate struct {
	// Batch is the number of per-example gradients behind the estimate (the
	// large batch for a two-scale estimate; 0 for a smoothed estimate).
	Batch int
	// M2 estimates M² = (1/n) Σ‖∇f_i‖² (unbiased for a single batch).
	M2 float64
	// G estimates G = ‖∇F‖² (unbiased for a single batch). It can be ≤ 0
	// when the batch shows no evidence of a common gradient direction.
	G float64
	// BatchBound is M2/G, the estimate of B_S. It is +Inf when G ≤ 0.
	BatchBound float64
	// NoiseScale is BatchBound − 1, the estimate of trΣ/‖G‖².
	NoiseScale float64
	// NoSignal reports G ≤ 0: noise dominates, there is no evidence of a
	// signal, and a batch-size policy should go to its maximum. It is
	// reported separately so callers can log it, rather than infer it from
	// an infinite BatchBound.
	NoSignal bool
}

// newEstimate completes an Estimate from M̂² and Ĝ; the one place the ratio
// and the "no signal" convention are formed.
func newEstimate(batch int, m2, g float64) Estimate {
	e := Estimate{Batch: batch, M2: m2, G: g}
	if g <= 0 {
		e.NoSignal = true
		e.BatchBound = math.Inf(1)
		e.NoiseScale = math.Inf(1)
		return e
	}
	e.BatchBound = m2 / g
	e.NoiseScale = e.BatchBound - 1
	return e
}

// EstimateBatch returns the unbiased estimates from one batch of b
// per-example gradients drawn uniformly WITH replacement (the paper's
// sampling), given sumSqNorms = Σ‖g_i‖² and sqNormOfSum = ‖Σ g_i‖² over the
// batch:
//
//	M̂² = Σ‖g_i‖²/b,   ‖ḡ‖² = ‖Σ g_i‖²/b²,   Ĝ = (b‖ḡ‖² − M̂²)/(b − 1),
//
// unbiased because E‖ḡ‖² = G + (M² − G)/b. B̂_S = M̂²/Ĝ is a ratio of
// unbiased estimates; it is not itself unbiased (smooth with Estimator, a
// ratio of averages, rather than averaging B̂_S). Note that b·Δ_batch =
// b·Σ‖g_i‖²/‖Σ g_i‖² is not an estimate of B_S: it never exceeds b.
//
// It returns ErrTooFew if b < 2, ErrNonFinite for non-finite sums, and
// ErrParam for negative sums.
func EstimateBatch(b int, sumSqNorms, sqNormOfSum float64) (Estimate, error) {
	if err := checkBatchSums(b, sumSqNorms, sqNormOfSum); err != nil {
		return Estimate{}, err
	}
	bf := float64(b)
	m2 := sumSqNorms / bf
	mean2 := sqNormOfSum / (bf * bf)
	return newEstimate(b, m2, (bf*mean2-m2)/(bf-1)), nil
}

// EstimateBatchFinite is EstimateBatch for b distinct examples drawn
// WITHOUT replacement from a data set of n examples (a shuffled epoch).
// With σ² = M² − G the finite-population variance,
//
//	E‖ḡ‖² = G + c·σ²,  c = (n − b)/(b(n − 1)),
//
// so Ĝ = (‖ḡ‖² − c·M̂²)/(1 − c), which is exact (Ĝ = ‖ḡ‖² = G) when b = n
// and tends to EstimateBatch's Ĝ as n → ∞. M̂² = Σ‖g_i‖²/b is unbiased
// under both samplings.
//
// It returns ErrTooFew if b < 2 and ErrParam if b > n.
func EstimateBatchFinite(b, n int, sumSqNorms, sqNormOfSum float64) (Estimate, error) {
	if err := checkBatchSums(b, sumSqNorms, sqNormOfSum); err != nil {
		return Estimate{}, err
	}
	if n < b {
		return Estimate{}, paramErr("batch of %d distinct examples from a population of %d: want b ≤ n", b, n)
	}
	bf, nf := float64(b), float64(n)
	m2 := sumSqNorms / bf
	mean2 := sqNormOfSum / (bf * bf)
	c := (nf - bf) / (bf * (nf - 1))
	return newEstimate(b, m2, (mean2-c*m2)/(1-c)), nil
}

func checkBatchSums(b int, sumSqNorms, sqNormOfSum float64) error {
	if b < 2 {
		return fmt.Errorf("%w (got b = %d): with one example, signal and noise cannot be separated", ErrTooFew, b)
	}
	if math.IsNaN(sumSqNorms) || math.IsInf(sumSqNorms, 0) || math.IsNaN(sqNormOfSum) || math.IsInf(sqNormOfSum, 0) {
		return fmt.Errorf("%w: sum_sq_norms = %v, sq_norm_of_sum = %v", ErrNonFinite, sumSqNorms, sqNormOfSum)
	}
	if sumSqNorms < 0 || sqNormOfSum < 0 {
		return paramErr("negative sum of squares: sum_sq_norms = %v, sq_norm_of_sum = %v", sumSqNorms, sqNormOfSum)
	}
	return nil
}

// EstimateTwoScale returns unbiased estimates from gradients averaged at two
// batch scales, for data-parallel training without per-example gradients
// (McCandlish et al., 2018, Appendix A.1). With P ranks of bSmall examples
// each, sqNormSmall is the mean over ranks of ‖ḡ_r‖² (each rank's local mean
// gradient) and sqNormBig = ‖ḡ‖² of the global mean over bBig = P·bSmall
// examples. Since E‖ḡ_B‖² = G + trΣ/B for i.i.d. draws,
//
//	Ĝ   = (B_big‖ḡ_big‖² − B_small‖ḡ_small‖²)/(B_big − B_small),
//	trΣ̂ = (‖ḡ_small‖² − ‖ḡ_big‖²)/(1/B_small − 1/B_big),
//	M̂²  = trΣ̂ + Ĝ,
//
// all unbiased. With bSmall = 1 and sqNormSmall = Σ‖g_i‖²/b this is exactly
// EstimateBatch. Ranks that shuffle without replacement make it approximate
// (the bias is O(b/n)).
//
// It returns ErrParam unless 1 ≤ bSmall < bBig, ErrNonFinite for
// non-finite inputs, and ErrParam when M̂² < 0: the global mean is the mean
// of the local means, so ‖ḡ_big‖² ≤ mean_r ‖ḡ_r‖² (Jensen) and M̂² ≥
// ‖ḡ_small‖² ≥ 0 for consistent inputs; a negative M̂² means sqNormBig is far
// too large (not the squared norm of the same ranks' global mean).
func EstimateTwoScale(bSmall int, sqNormSmall float64, bBig int, sqNormBig float64) (Estimate, error) {
	if bSmall < 1 || bBig <= bSmall {
		return Estimate{}, paramErr("two-scale batches b_small = %d, b_big = %d: want 1 ≤ b_small < b_big", bSmall, bBig)
	}
	if err := checkBatchSums(2, sqNormSmall, sqNormBig); err != nil {
		return Estimate{}, err
	}
	bs, bb := float64(bSmall), float64(bBig)
	g := (bb*sqNormBig - bs*sqNormSmall) / (bb - bs)
	trSigma := (sqNormSmall - sqNormBig) / (1/bs - 1/bb)
	if m2 := trSigma + g; m2 < 0 {
		return Estimate{}, paramErr("two-scale sq_norm_big = %v is inconsistent with sq_norm_small = %v (b_small = %d, b_big = %d): "+
			"M̂² = %v < 0; the global mean gradient's squared norm cannot exceed the mean of the local ones", sqNormBig, sqNormSmall, bSmall, bBig, m2)
	}
	return newEstimate(bBig, trSigma+g, g), nil
}

// EstimateTwoScaleFinite is EstimateTwoScale for batches of distinct
// examples drawn WITHOUT replacement from n (shuffled epochs split over the
// ranks): with σ² = M² − G the finite-population variance and
// c_b = (n − b)/(b(n − 1)) (EstimateBatchFinite), E‖ḡ_b‖² = G + c_b·σ² at
// both scales, so
//
//	σ̂² = (‖ḡ_small‖² − ‖ḡ_big‖²)/(c_small − c_big),
//	Ĝ  = ‖ḡ_big‖² − c_big·σ̂²,  M̂² = σ̂² + Ĝ,
//
// unbiased, exact at b_big = n, and EstimateTwoScale as n → ∞. The i.i.d.
// pair instead underestimates G by σ²/(n − 1) under this sampling, which
// doubles B̂_S once B_S nears n/2.
//
// It returns ErrParam unless 1 ≤ bSmall < bBig ≤ n, ErrNonFinite for
// non-finite inputs, and ErrParam when M̂² < 0 (inconsistent inputs, as for
// EstimateTwoScale: M̂² ≥ ‖ḡ_big‖² ≥ 0 when ‖ḡ_big‖² ≤ ‖ḡ_small‖²).
func EstimateTwoScaleFinite(bSmall int, sqNormSmall float64, bBig int, sqNormBig float64, n int) (Estimate, error) {
	if bSmall < 1 || bBig <= bSmall || n < bBig {
		return Estimate{}, paramErr("two-scale batches b_small = %d, b_big = %d of n = %d distinct examples: want 1 ≤ b_small < b_big ≤ n", bSmall, bBig, n)
	}
	if err := checkBatchSums(2, sqNormSmall, sqNormBig); err != nil {
		return Estimate{}, err
	}
	nf := float64(n)
	c := func(b int) float64 { bf := float64(b); return (nf - bf) / (bf * (nf - 1)) }
	cs, cb := c(bSmall), c(bBig)
	sigma2 := (sqNormSmall - sqNormBig) / (cs - cb)
	g := sqNormBig - cb*sigma2
	if m2 := sigma2 + g; m2 < 0 {
		return Estimate{}, paramErr("two-scale sq_norm_big = %v is inconsistent with sq_norm_small = %v (b_small = %d, b_big = %d, n = %d): "+
			"M̂² = %v < 0; the global mean gradient's squared norm cannot exceed the mean of the local ones", sqNormBig, sqNormSmall, bSmall, bBig, n, m2)
	}
	return newEstimate(bBig, sigma2+g, g), nil
}

// EstimateFromGrads returns EstimateBatch for a batch given as b per-example
// gradients in a row-major b×d buffer. Errors are those of ComputeStats and
// EstimateBatch; it panics if len(grads) != b·d.
func EstimateFromGrads(grads []float64, b, d int) (Estimate, error) {
	return estimateFromGrads(grads, b, d)
}

// EstimateFromGrads32 is EstimateFromGrads for float32 gradients.
func EstimateFromGrads32(grads []float32, b, d int) (Estimate, error) {
	return estimateFromGrads(grads, b, d)
}

func estimateFromGrads[T float32 | float64](grads []T, b, d int) (Estimate, error) {
	checkShape(len(grads), b, d, "grads")
	if b == 0 {
		return Estimate{}, ErrEmpty
	}
	if d == 0 {
		return Estimate{}, ErrZeroDim
	}
	sum := getSum(d)
	defer putSum(sum)
	sq := accumulateRows(sum, grads, b, d)
	if err := finiteOr(sq, grads, d, "grads"); err != nil {
		return Estimate{}, err
	}
	return EstimateBatch(b, sq, sqNorm(sum))
}

// Estimator smooths per-batch estimates over training steps as a RATIO OF
// EXPONENTIAL MOVING AVERAGES: the smoothed B̂_S is EMA(M̂²)/EMA(Ĝ), each EMA
// debiased like Adam's moments (divided by 1 − β^t). An EMA of the ratios
// M̂²/Ĝ would be dominated by the batches where Ĝ is near zero (the ratio is
// heavy-tailed and undefined at Ĝ = 0); the ratio of EMAs averages the two
// unbiased estimates first and divides once. The debias factors cancel in
// the ratio but matter for the reported M² and G.
//
// The zero value is an estimator with Beta = 0 (no smoothing: the smoothed
// estimate is the latest batch's). An Estimator is not safe for
// concurrent use.
type Estimator struct {
	// Beta is the EMA decay in [0, 1): each update keeps Beta of the old
	// average. 0.9–0.99 suit training; larger is smoother and slower.
	Beta float64

	state EstimatorState
}

// EstimatorState is the complete state of an Estimator, for checkpoints:
// restoring it with SetState makes a resumed run produce the same estimates.
type EstimatorState struct {
	Beta   float64 `json:"beta"`
	Steps  int     `json:"steps"`  // updates so far
	EMAM2  float64 `json:"ema_m2"` // biased EMA of M̂²
	EMAG   float64 `json:"ema_g"`  // biased EMA of Ĝ
	Weight float64 `json:"weight"` // 1 − Beta^Steps, the debias divisor
}

// Update folds one per-batch estimate (from EstimateBatch,
// EstimateBatchFinite or EstimateTwoScale) into the moving averages and
// returns the smoothed estimate. A non-finite estimate is rejected with
// ErrNonFinite, a negative M2 (never produced by the estimates above: M̂² is
// a mean of squared norms) with ErrParam; both leave the state unchanged. It panics if Beta is outside
// [0, 1) or NaN.
func (e *Estimator) Update(est Estimate) (Estimate, error) {
	if !(e.Beta >= 0 && e.Beta < 1) {
		panic(fmt.Sprintf("gdiv: Estimator.Beta = %v, want 0 ≤ beta < 1", e.Beta))
	}
	if math.IsNaN(est.M2) || math.IsInf(est.M2, 0) || math.IsNaN(est.G) || math.IsInf(est.G, 0) {
		return Estimate{}, fmt.Errorf("%w in estimate: m2 = %v, g = %v", ErrNonFinite, est.M2, est.G)
	}
	if est.M2 < 0 {
		return Estimate{}, fieldErr("m2", "estimate m2 = %v, want ≥ 0 (a mean of squared norms)", est.M2)
	}
	s := &e.state
	if s.Steps > 0 && s.Beta != e.Beta {
		panic(fmt.Sprintf("gdiv: Estimator.Beta changed from %v to %v after %d updates", s.Beta, e.Beta, s.Steps))
	}
	s.Beta = e.Beta
	s.Steps++
	s.EMAM2 = e.Beta*s.EMAM2 + (1-e.Beta)*est.M2
	s.EMAG = e.Beta*s.EMAG + (1-e.Beta)*est.G
	s.Weight = e.Beta*s.Weight + (1 - e.Beta) // = 1 − β^t without a power
	return e.Smoothed(), nil
}

// Smoothed returns the current debiased ratio-of-EMAs estimate (Batch = 0).
// Before the first update it returns the zero Estimate with NoSignal set
// and an infinite BatchBound.
func (e *Estimator) Smoothed() Estimate {
	s := e.state
	if s.Steps == 0 {
		return newEstimate(0, 0, 0)
	}
	return newEstimate(0, s.EMAM2/s.Weight, s.EMAG/s.Weight)
}

// Steps returns the number of updates so far.
func (e *Estimator) Steps() int { return e.state.Steps }

// State returns a copy of the complete state.
func (e *Estimator) State() EstimatorState {
	s := e.state
	s.Beta = e.Beta
	return s
}

// SetState restores a state returned by State, including Beta. It returns an
// error naming the field (a *FieldError: "beta", "steps", "weight",
// "ema_m2", "ema_g") for an inconsistent state: ErrParam for Beta outside
// [0, 1), negative steps, a weight outside (0, 1] after a step or a
// negative ema_m2 (an average of the non-negative M̂²); ErrNonFinite for
// non-finite averages. On error the estimator is unchanged.
func (e *Estimator) SetState(s EstimatorState) error {
	switch {
	case !(s.Beta >= 0 && s.Beta < 1):
		return fieldErr("beta", "estimator state beta = %v, want 0 ≤ beta < 1", s.Beta)
	case s.Steps < 0:
		return fieldErr("steps", "estimator state steps = %d is negative", s.Steps)
	case s.Steps > 0 && !(s.Weight > 0 && s.Weight <= 1):
		return fieldErr("weight", "estimator state weight = %v after %d steps, want 0 < weight ≤ 1", s.Weight, s.Steps)
	case !isFinite(s.EMAM2):
		return &FieldError{Field: "ema_m2", Err: fmt.Errorf("%w in estimator state: ema_m2 = %v", ErrNonFinite, s.EMAM2)}
	case !isFinite(s.EMAG):
		return &FieldError{Field: "ema_g", Err: fmt.Errorf("%w in estimator state: ema_g = %v", ErrNonFinite, s.EMAG)}
	case s.EMAM2 < 0:
		return fieldErr("ema_m2", "estimator state ema_m2 = %v, want ≥ 0 (an average of mean squared norms)", s.EMAM2)
	}
	e.Beta = s.Beta
	e.state = s
	return nil
}

// BatchSumsFromNorms returns the two sufficient sums of a batch,
// sumSqNorms = Σ‖g_i‖² and sqNormOfSum = ‖Σ g_i‖², from what a framework
// hook produces cheaply: the b per-example squared norms sqNorms (len b)
// and the batch gradient batchGrad, which is Σ g_i, or the mean ḡ = Σ g_i/b
// when mean is true (a mean-reduced loss; then ‖Σ g_i‖² = b²‖ḡ‖²). Feed the
// sums to EstimateBatch or EstimateBatchFinite. A zero batch gradient is
// valid (sqNormOfSum = 0: a batch with no signal).
//
// It returns ErrEmpty for b = 0, ErrZeroDim for an empty gradient,
// ErrNonFinite naming the first bad entry, and ErrParam for a negative
// squared norm.
func BatchSumsFromNorms(sqNorms, batchGrad []float64, mean bool) (sumSqNorms, sqNormOfSum float64, err error) {
	return batchSumsFromNorms(sqNorms, batchGrad, mean)
}

// BatchSumsFromNorms32 is BatchSumsFromNorms for float32 inputs (summed in
// float64).
func BatchSumsFromNorms32(sqNorms, batchGrad []float32, mean bool) (sumSqNorms, sqNormOfSum float64, err error) {
	return batchSumsFromNorms(sqNorms, batchGrad, mean)
}

func batchSumsFromNorms[T float32 | float64](sqNorms, batchGrad []T, mean bool) (float64, float64, error) {
	sumSq, err := sumOfSquaredNorms(sqNorms)
	if err != nil {
		return 0, 0, err
	}
	sq, err := batchGradSqNorm(batchGrad, len(sqNorms), mean)
	return sumSq, sq, err
}

// SumOfSquaredNorms returns Σ sqNorms[i], the Σ‖g_i‖² of a batch given its
// per-example squared norms, after checking that each is finite and ≥ 0.
// It returns ErrEmpty, ErrNonFinite or ErrParam naming the first bad entry.
func SumOfSquaredNorms(sqNorms []float64) (float64, error) { return sumOfSquaredNorms(sqNorms) }

// SumOfSquaredNorms32 is SumOfSquaredNorms for float32 norms.
func SumOfSquaredNorms32(sqNorms []float32) (float64, error) { return sumOfSquaredNorms(sqNorms) }

// BatchGradSqNorm returns ‖Σ g_i‖² of a batch of b examples from its batch
// gradient: ‖batchGrad‖² when batchGrad is the sum Σ g_i, b²‖batchGrad‖²
// when it is the mean (mean = true). It returns ErrZeroDim for an empty
// gradient and ErrNonFinite naming the first bad entry.
func BatchGradSqNorm(batchGrad []float64, b int, mean bool) (float64, error) {
	return batchGradSqNorm(batchGrad, b, mean)
}

// BatchGradSqNorm32 is BatchGradSqNorm for a float32 gradient.
func BatchGradSqNorm32(batchGrad []float32, b int, mean bool) (float64, error) {
	return batchGradSqNorm(batchGrad, b, mean)
}

func sumOfSquaredNorms[T float32 | float64](sqNorms []T) (float64, error) {
	if len(sqNorms) == 0 {
		return 0, fmt.Errorf("%w: sq_norms is empty", ErrEmpty)
	}
	var sumSq float64
	for i, v := range sqNorms {
		f := float64(v)
		switch {
		case f-f != 0:
			return 0, fmt.Errorf("%w in sq_norms[%d]: %v", ErrNonFinite, i, f)
		case f < 0:
			return 0, paramErr("sq_norms[%d] = %v is negative (squared norms are ≥ 0)", i, f)
		}
		sumSq += f
	}
	return sumSq, nil
}

func batchGradSqNorm[T float32 | float64](batchGrad []T, b int, mean bool) (float64, error) {
	if len(batchGrad) == 0 {
		return 0, fmt.Errorf("%w: batch_grad is empty", ErrZeroDim)
	}
	sq := sqNormOf(batchGrad)
	if err := finiteOr(sq, batchGrad, len(batchGrad), "batch_grad"); err != nil {
		return 0, err
	}
	if mean {
		sq *= float64(b) * float64(b)
	}
	return sq, nil
}

// BatchSumsFromScalars returns the two sufficient sums of a batch of b
// examples, sumSq = Σ‖g_i‖² and sqNormOfSum = ‖Σ g_i‖², from two scalars
// reduced where the gradients live (on a GPU, say, so that only two numbers
// cross to the host): sumSqNorms, the sum of the measured per-example
// squared norms, and sqNormBatchGrad, the squared norm of the measured
// batch gradient — of Σ g_i, or of the mean ḡ = Σ g_i/b when mean is true
// (a mean-reduced loss). With s = normsScale and t = gradScale,
//
//	sumSq       = sumSqNorms/s²
//	sqNormOfSum = sqNormBatchGrad/t²       (sum)
//	sqNormOfSum = b²·sqNormBatchGrad/t²    (mean),
//
// where s, t > 0 are the factors by which the measured per-example and batch
// gradients are too large: 1 without loss scaling; the loss scale under
// mixed precision, where the loss is multiplied by it before the backward
// pass. The two differ when a loss scaler has already divided the batch
// gradient by the scale (PyTorch's GradScaler.unscale_) but not the
// per-example norms captured during the backward pass (t = 1, s = the
// scale). Loss scalers use powers of two, for which the division is exact.
// Feed the sums to EstimateBatch or EstimateBatchFinite; BatchSumsFromNorms
// is the same conversion for the vectors themselves.
//
// It returns ErrEmpty for b < 1, ErrNonFinite for a NaN or infinite scalar
// (scaled gradients that overflowed: a loss scaler skips such a step),
// ErrParam for a negative scalar or a scale that is not finite and > 0, and
// ErrOverflow when a result overflows.
func BatchSumsFromScalars(b int, sumSqNorms, sqNormBatchGrad float64, mean bool, normsScale, gradScale float64) (sumSq, sqNormOfSum float64, err error) {
	switch {
	case b < 1:
		return 0, 0, fmt.Errorf("%w: batch of %d examples", ErrEmpty, b)
	case !isFinite(sumSqNorms) || !isFinite(sqNormBatchGrad):
		return 0, 0, fmt.Errorf("%w: sum_sq_norms = %v, squared norm of the batch gradient = %v (with a loss scale: the scaled gradients overflowed)",
			ErrNonFinite, sumSqNorms, sqNormBatchGrad)
	case sumSqNorms < 0 || sqNormBatchGrad < 0:
		return 0, 0, paramErr("negative sum of squares: sum_sq_norms = %v, squared norm of the batch gradient = %v", sumSqNorms, sqNormBatchGrad)
	case !(normsScale > 0) || math.IsInf(normsScale, 1) || !(gradScale > 0) || math.IsInf(gradScale, 1):
		return 0, 0, paramErr("loss scales = %v (norms), %v (batch gradient), want finite scales > 0 (1 without loss scaling)", normsScale, gradScale)
	}
	sumSq = sumSqNorms / (normsScale * normsScale)
	sqNormOfSum = sqNormBatchGrad / (gradScale * gradScale)
	if mean {
		bf := float64(b)
		sqNormOfSum *= bf * bf
	}
	if !isFinite(sumSq) || !isFinite(sqNormOfSum) {
		return 0, 0, fmt.Errorf("%w: batch sums %v, %v (b = %d, loss scales %v, %v)", ErrOverflow, sumSq, sqNormOfSum, b, normsScale, gradScale)
	}
	return sumSq, sqNormOfSum, nil
}
