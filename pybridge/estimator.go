package pybridge

import (
	"github.com/gdiv/gdiv/gdiv"
)

// The Estimate* exports are stateless: an estimator's complete state
// (gdiv.EstimatorState) lives in a float64 buffer owned by the caller,
//
//	state[0:5] = beta, steps, ema_m2, ema_g, weight,
//
// which each call restores with SetState (validating it), updates and writes
// back. So the Python Estimator needs no Go handle, checkpoints are plain
// numbers, and nothing can leak. state = 0 computes the per-batch estimate
// only.
//
// Results: out[0:6] = batch, m2, g, batch_bound, noise_scale, no_signal
// (0 or 1) of the per-batch estimate and, when state != 0, out[6:12] the
// smoothed estimate after the update.
const (
	stateLen    = 5
	estimateLen = 6
)

func writeEstimate(o []float64, e gdiv.Estimate) {
	o[0], o[1], o[2] = float64(e.Batch), e.M2, e.G
	o[3], o[4], o[5] = e.BatchBound, e.NoiseScale, b2f(e.NoSignal)
}

// readState returns the estimator state at addr.
func readState(addr uintptr) (gdiv.EstimatorState, error) {
	s := outBuf(addr, stateLen)
	steps := int(s[1])
	if float64(steps) != s[1] {
		return gdiv.EstimatorState{}, &gdiv.FieldError{Field: "steps", Err: paramErrorf("estimator state steps = %v is not an integer", s[1])}
	}
	return gdiv.EstimatorState{Beta: s[0], Steps: steps, EMAM2: s[2], EMAG: s[3], Weight: s[4]}, nil
}

// finish writes the per-batch estimate and, with a state, folds it in.
func finish(state, out uintptr, est gdiv.Estimate) error {
	if state == 0 {
		writeEstimate(outBuf(out, estimateLen), est)
		return nil
	}
	st, err := readState(state)
	if err != nil {
		return err
	}
	var e gdiv.Estimator
	if err := e.SetState(st); err != nil {
		return err
	}
	sm, err := e.Update(est)
	if err != nil {
		return err
	}
	o := outBuf(out, 2*estimateLen)
	writeEstimate(o[:estimateLen], est)
	writeEstimate(o[estimateLen:], sm)
	ns := e.State()
	s := outBuf(state, stateLen)
	s[0], s[1], s[2], s[3], s[4] = ns.Beta, float64(ns.Steps), ns.EMAM2, ns.EMAG, ns.Weight
	return nil
}

// batchEstimate is gdiv.EstimateBatch for datasetSize = 0 (sampling with
// replacement) and gdiv.EstimateBatchFinite otherwise (without replacement).
func batchEstimate(b, datasetSize int, sumSqNorms, sqNormOfSum float64) (gdiv.Estimate, error) {
	if datasetSize < 0 {
		return gdiv.Estimate{}, paramErrorf("dataset_size = %d is negative", datasetSize)
	}
	if datasetSize == 0 {
		return gdiv.EstimateBatch(b, sumSqNorms, sqNormOfSum)
	}
	return gdiv.EstimateBatchFinite(b, datasetSize, sumSqNorms, sqNormOfSum)
}

// EstimateSums estimates from the sums of one batch of b per-example
// gradients, sumSqNorms = Σ‖g_i‖² and sqNormOfSum = ‖Σ g_i‖² (datasetSize 0:
// with replacement, else without), and updates state if it is not 0. It
// returns 0.
func EstimateSums(state, out uintptr, b, datasetSize int, sumSqNorms, sqNormOfSum float64) (_ int, err error) {
	defer guard(&err)
	est, err := batchEstimate(b, datasetSize, sumSqNorms, sqNormOfSum)
	if err != nil {
		return 0, err
	}
	return 0, finish(state, out, est)
}

// EstimateGrads estimates from one batch of per-example gradients, the
// matrix operand (kind, addr, aux, b, d), and updates state if it is not 0.
// It returns 0.
func EstimateGrads(state, out uintptr, datasetSize int, kind int, addr, aux uintptr, b, d int) (_ int, err error) {
	defer guard(&err)
	g, err := view("grads", kind, addr, aux, b, d)
	if err != nil {
		return 0, err
	}
	defer g.close()
	var s gdiv.Stats
	if g.is32 {
		s, err = gdiv.ComputeStats32(g.f32, g.n, g.d)
	} else {
		s, err = gdiv.ComputeStats(g.f64, g.n, g.d)
	}
	if err != nil {
		return 0, err
	}
	est, err := batchEstimate(s.N, datasetSize, s.SumSqNorms, s.SqNormOfSum)
	if err != nil {
		return 0, err
	}
	return 0, finish(state, out, est)
}

// EstimateNorms estimates from the b per-example squared norms ‖g_i‖² at
// normsAddr (kind 0 or 1) and the batch gradient at gradAddr (kind 0 or 1,
// d values): Σ g_i, or the mean (1/b) Σ g_i when mean is set. It updates
// state if it is not 0 and returns 0.
//
// The two sums are formed here with the core's accumulation (a 1-column
// Accumulator for Σ‖g_i‖², ComputeStats of one row for ‖Σ g_i‖²), because
// package gdiv has no estimator that takes the vectors themselves.
func EstimateNorms(state, out uintptr, datasetSize int, normsKind int, normsAddr uintptr, b int, gradKind int, gradAddr uintptr, d int, mean bool) (_ int, err error) {
	defer guard(&err)
	norms, err := viewVector("sq_norms", normsKind, normsAddr, b)
	if err != nil {
		return 0, err
	}
	grad, err := viewVector("batch_grad", gradKind, gradAddr, d)
	if err != nil {
		return 0, err
	}
	// The two dtypes may differ (float64 norms, float32 gradient).
	var sumSqNorms, sq float64
	if norms.is32 {
		sumSqNorms, err = gdiv.SumOfSquaredNorms32(norms.f32)
	} else {
		sumSqNorms, err = gdiv.SumOfSquaredNorms(norms.f64)
	}
	if err != nil {
		return 0, err
	}
	if grad.is32 {
		sq, err = gdiv.BatchGradSqNorm32(grad.f32, b, mean)
	} else {
		sq, err = gdiv.BatchGradSqNorm(grad.f64, b, mean)
	}
	if err != nil {
		return 0, err
	}
	est, err := batchEstimate(b, datasetSize, sumSqNorms, sq)
	if err != nil {
		return 0, err
	}
	return 0, finish(state, out, est)
}

// EstimateTwoScale computes gdiv.EstimateTwoScale and updates state if it
// is not 0. It returns 0.
func EstimateTwoScale(state, out uintptr, bSmall int, sqNormSmall float64, bBig int, sqNormBig float64) (_ int, err error) {
	defer guard(&err)
	est, err := gdiv.EstimateTwoScale(bSmall, sqNormSmall, bBig, sqNormBig)
	if err != nil {
		return 0, err
	}
	return 0, finish(state, out, est)
}

// EstimatorSmoothed validates the state (as SetState does) and writes the
// smoothed estimate of that state to out[0:6]. It returns the number of
// steps.
func EstimatorSmoothed(state, out uintptr) (_ int, err error) {
	defer guard(&err)
	st, err := readState(state)
	if err != nil {
		return 0, err
	}
	var e gdiv.Estimator
	if err := e.SetState(st); err != nil {
		return 0, err
	}
	writeEstimate(outBuf(out, estimateLen), e.Smoothed())
	return e.Steps(), nil
}
