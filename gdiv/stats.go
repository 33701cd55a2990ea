package gdiv

import (
	"fmt"
	"math"
	"sync"
)

// Stats summarises a set of n per-example gradients g_1..g_n of dimension d.
// Field names follow the project vocabulary (JSON keys in the CLI and the
// Python API use the snake_case forms).
type Stats struct {
	N   int // number of examples n
	Dim int // dimension d

	SumSqNorms  float64 // Σ‖g_i‖²
	SqNormOfSum float64 // ‖Σ g_i‖²
	M2          float64 // M² = Σ‖g_i‖² / n (paper, Appendix B.1)
	G           float64 // G = ‖(1/n) Σ g_i‖² = ‖Σ g_i‖² / n²

	// Diversity is Δ = Σ‖g_i‖² / ‖Σ g_i‖² (Definition 4). It lies in
	// [1/n, +Inf]; +Inf when the gradients sum to zero (but are not all zero).
	Diversity float64
	// BatchBound is B_S = n·Δ = M²/G (Definition 5), in [1, +Inf].
	BatchBound float64
	// NoiseScale is trΣ/‖G‖² = (M² − G)/G = B_S − 1, McCandlish et al.'s
	// "simple noise scale" with Σ the (1/n-normalised) covariance of the g_i.
	NoiseScale float64
}

// StatsFromSums completes a Stats from the two sufficient sums: n,
// Σ‖g_i‖² and ‖Σ g_i‖². It is the single place where the ratios are formed.
//
// When ‖Σ g_i‖² = 0 while Σ‖g_i‖² > 0 the gradients cancel exactly: the
// mean gradient carries no signal, and Diversity, BatchBound and NoiseScale
// are +Inf ("any batch size is as good as any other"), G is 0.
//
// It returns ErrEmpty if n = 0, ErrAllZero if Σ‖g_i‖² = 0, ErrNonFinite or
// ErrOverflow if a sum is not finite, and ErrParam if a sum is negative or
// ‖Σ g_i‖² > n·Σ‖g_i‖² (impossible by Cauchy–Schwarz beyond rounding).
// It panics if n or dim is negative.
func StatsFromSums(n, dim int, sumSqNorms, sqNormOfSum float64) (Stats, error) {
	if n < 0 || dim < 0 {
		panic(fmt.Sprintf("gdiv: negative size n=%d dim=%d", n, dim))
	}
	if n == 0 {
		return Stats{}, ErrEmpty
	}
	if dim == 0 {
		return Stats{}, ErrZeroDim
	}
	if math.IsNaN(sumSqNorms) || math.IsNaN(sqNormOfSum) {
		return Stats{}, fmt.Errorf("%w: sum_sq_norms=%v, sq_norm_of_sum=%v", ErrNonFinite, sumSqNorms, sqNormOfSum)
	}
	if math.IsInf(sumSqNorms, 0) || math.IsInf(sqNormOfSum, 0) {
		return Stats{}, fmt.Errorf("%w: sum_sq_norms=%v, sq_norm_of_sum=%v", ErrOverflow, sumSqNorms, sqNormOfSum)
	}
	if sumSqNorms < 0 || sqNormOfSum < 0 {
		return Stats{}, paramErr("negative sum of squares: sum_sq_norms=%v, sq_norm_of_sum=%v", sumSqNorms, sqNormOfSum)
	}
	if sumSqNorms == 0 {
		return Stats{}, ErrAllZero
	}
	// Cauchy–Schwarz: ‖Σ g_i‖² ≤ n Σ‖g_i‖². Allow rounding slack.
	if sqNormOfSum > float64(n)*sumSqNorms*(1+1e-9) {
		return Stats{}, paramErr("sq_norm_of_sum=%v exceeds n·sum_sq_norms=%v (Cauchy–Schwarz): the sums do not come from the same %d gradients",
			sqNormOfSum, float64(n)*sumSqNorms, n)
	}
	nf := float64(n)
	s := Stats{
		N:           n,
		Dim:         dim,
		SumSqNorms:  sumSqNorms,
		SqNormOfSum: sqNormOfSum,
		M2:          sumSqNorms / nf,
		G:           sqNormOfSum / (nf * nf),
	}
	if sqNormOfSum == 0 {
		s.Diversity = math.Inf(1)
		s.BatchBound = math.Inf(1)
		s.NoiseScale = math.Inf(1)
		return s, nil
	}
	s.Diversity = sumSqNorms / sqNormOfSum
	s.BatchBound = nf * s.Diversity
	s.NoiseScale = s.BatchBound - 1
	return s, nil
}

// ComputeStats returns the Stats of the n×d row-major buffer grads, one
// per-example gradient per row, accumulating in float64.
//
// It returns ErrEmpty, ErrZeroDim, ErrNonFinite (naming the first bad row
// and column), ErrOverflow or ErrAllZero for degenerate data.
// It panics if n or d is negative or len(grads) != n·d.
func ComputeStats(grads []float64, n, d int) (Stats, error) {
	return computeStats(grads, n, d)
}

// ComputeStats32 is ComputeStats for float32 gradients (accumulated in float64).
func ComputeStats32(grads []float32, n, d int) (Stats, error) {
	return computeStats(grads, n, d)
}

func computeStats[T float32 | float64](grads []T, n, d int) (Stats, error) {
	checkShape(len(grads), n, d, "grads")
	if n == 0 {
		return Stats{}, ErrEmpty
	}
	if d == 0 {
		return Stats{}, ErrZeroDim
	}
	sum := getSum(d)
	defer putSum(sum)
	sumSq := accumulateRows(sum, grads, n, d)
	if err := finiteOr(sumSq, grads, d, "grads"); err != nil {
		return Stats{}, err
	}
	return StatsFromSums(n, d, sumSq, sqNorm(sum))
}

// DifferentialStats returns the Stats of the row-wise differences
// g_i(w) − g_i(w') of two n×d buffers: the differential gradient diversity
// Δ̄_S(w, w') and batch bound B̄_S(w, w') of Definition 6. The difference is
// formed on the fly in float64; neither input is modified.
//
// Errors and panics are those of ComputeStats; ErrAllZero here means the
// two buffers are identical (w = w' gives no differential diversity).
func DifferentialStats(gw, gw2 []float64, n, d int) (Stats, error) {
	return differentialStats(gw, gw2, n, d)
}

// DifferentialStats32 is DifferentialStats for float32 gradients.
func DifferentialStats32(gw, gw2 []float32, n, d int) (Stats, error) {
	return differentialStats(gw, gw2, n, d)
}

func differentialStats[T float32 | float64](gw, gw2 []T, n, d int) (Stats, error) {
	checkShape(len(gw), n, d, "gw")
	checkShape(len(gw2), n, d, "gw2")
	if n == 0 {
		return Stats{}, ErrEmpty
	}
	if d == 0 {
		return Stats{}, ErrZeroDim
	}
	sum := getSum(d)
	defer putSum(sum)
	sumSq := accumulateDiffRows(sum, gw, gw2, n, d)
	if math.IsNaN(sumSq) || math.IsInf(sumSq, 0) {
		if err := nonFiniteAt(gw, d, "gw"); err != nil {
			return Stats{}, err
		}
		if err := nonFiniteAt(gw2, d, "gw2"); err != nil {
			return Stats{}, err
		}
		return Stats{}, ErrOverflow
	}
	return StatsFromSums(n, d, sumSq, sqNorm(sum))
}

// sumPool recycles the float64 column-sum vectors of the one-shot
// functions: allocating (and zeroing) d float64s per call cost more than the
// kernel itself for small buffers and several milliseconds for d = 1e6.
var sumPool sync.Pool

// getSum returns a zeroed []float64 of length d from the pool.
func getSum(d int) []float64 {
	if p, ok := sumPool.Get().(*[]float64); ok && cap(*p) >= d {
		s := (*p)[:d]
		clear(s)
		return s
	}
	return make([]float64, d)
}

// putSum returns s to the pool; the caller must not use s afterwards.
func putSum(s []float64) {
	sumPool.Put(&s)
}

// finiteOr turns a non-finite sum of squares into the precise error: the
// first non-finite input entry, or overflow when every input is finite.
// The scan only runs on the error path.
func finiteOr[T float32 | float64](sumSq float64, grads []T, d int, what string) error {
	if !math.IsNaN(sumSq) && !math.IsInf(sumSq, 0) {
		return nil
	}
	if err := nonFiniteAt(grads, d, what); err != nil {
		return err
	}
	return ErrOverflow
}

func checkShape(length, n, d int, what string) {
	if n < 0 || d < 0 {
		panic(fmt.Sprintf("gdiv: negative shape %d×%d for %s", n, d, what))
	}
	if length != n*d {
		panic(fmt.Sprintf("gdiv: len(%s) = %d, want n·d = %d×%d = %d", what, length, n, d, n*d))
	}
}

// SqNorm returns ‖v‖², accumulated with four partial sums: the arithmetic
// the statistics use for ‖Σ g_i‖².
func SqNorm(v []float64) float64 { return sqNormOf(v) }

// sqNorm returns ‖v‖² with four partial sums.
func sqNorm(v []float64) float64 { return sqNormOf(v) }

// sqNormOf returns ‖v‖², accumulated in float64 with four partial sums.
func sqNormOf[T float32 | float64](v []T) float64 {
	var a0, a1, a2, a3 float64
	j := 0
	for ; j+4 <= len(v); j += 4 {
		x := v[j : j+4 : j+4]
		x0, x1, x2, x3 := float64(x[0]), float64(x[1]), float64(x[2]), float64(x[3])
		a0 += x0 * x0
		a1 += x1 * x1
		a2 += x2 * x2
		a3 += x3 * x3
	}
	for ; j < len(v); j++ {
		x := float64(v[j])
		a0 += x * x
	}
	return (a0 + a1) + (a2 + a3)
}
