package pybridge

import (
	"fmt"
	"math"

	"github.com/gdiv/gdiv/gdiv"
)

// Exports for the framework integrations (python/gdiv/torch) when
// per-example gradients are not materialized: the gradients stay where they
// live (a GPU, say), are reduced there to a few scalars, and only those
// scalars cross. The formulas are the core's (gdiv.BatchSumsFromScalars,
// gdiv.Langevin.SumNoiseStd and ExpectedSumSqNorms).

// BatchSumsFromScalars writes gdiv.BatchSumsFromScalars(b, sumSqNorms,
// sqNormBatchGrad, mean, normsScale, gradScale) to out[0:2] =
// sum_sq_norms, sq_norm_of_sum. It returns 0.
func BatchSumsFromScalars(out uintptr, b int, sumSqNorms, sqNormBatchGrad float64, mean bool, normsScale, gradScale float64) (_ int, err error) {
	defer guard(&err)
	s, t, err := gdiv.BatchSumsFromScalars(b, sumSqNorms, sqNormBatchGrad, mean, normsScale, gradScale)
	if err != nil {
		return 0, err
	}
	o := outBuf(out, 2)
	o[0], o[1] = s, t
	return 0, nil
}

// langevin returns the validated mechanism and checks the batch size, so
// that the core's panics cannot be reached.
func langevin(std float64, b int) (gdiv.Langevin, error) {
	m := gdiv.Langevin{Std: std}
	if err := m.Validate(); err != nil {
		return m, err
	}
	if b < 1 {
		return m, paramErrorf("batch of %d examples, want ≥ 1", b)
	}
	return m, nil
}

// LangevinSumNoiseStd returns gdiv.Langevin{Std: std}.SumNoiseStd(b, mean):
// the standard deviation of the one Gaussian added to the batch gradient
// (the sum, or the mean when mean is set). Errors: [param] for an invalid
// std or b < 1.
func LangevinSumNoiseStd(std float64, b int, mean bool) (_ float64, err error) {
	defer guard(&err)
	m, err := langevin(std, b)
	if err != nil {
		return 0, err
	}
	return m.SumNoiseStd(b, mean), nil
}

// LangevinExpectedSumSqNorms returns gdiv.Langevin{Std: std}.
// ExpectedSumSqNorms(sumSqNorms, b, d) = sumSqNorms + b·d·std². Errors:
// [param] for an invalid std, b < 1, d < 1 or a negative sumSqNorms,
// [non_finite] for a NaN or infinite sumSqNorms.
func LangevinExpectedSumSqNorms(std, sumSqNorms float64, b, d int) (_ float64, err error) {
	defer guard(&err)
	m, err := langevin(std, b)
	switch {
	case err != nil:
		return 0, err
	case d < 1:
		return 0, paramErrorf("dimension %d, want ≥ 1", d)
	case math.IsNaN(sumSqNorms) || math.IsInf(sumSqNorms, 0):
		return 0, fmt.Errorf("%w: sum_sq_norms = %v", gdiv.ErrNonFinite, sumSqNorms)
	case sumSqNorms < 0:
		return 0, paramErrorf("sum_sq_norms = %v is negative", sumSqNorms)
	}
	return m.ExpectedSumSqNorms(sumSqNorms, b, d), nil
}
