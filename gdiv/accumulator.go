package gdiv

import (
	"fmt"
	"math"
)

// Accumulator accumulates the sufficient statistics of gradient diversity —
// the count n, Σ‖g_i‖² and the vector Σ g_i — over chunks of rows. Two
// accumulators merge exactly (up to float64 rounding), so chunks may come
// from a memory-bounded loop, from several goroutines, or from several
// ranks of a data-parallel job (all-reduce n, Σ‖g_i‖² and Σ g_i, then
// AddSums). The zero value is not usable; call NewAccumulator.
//
// An Accumulator is not safe for concurrent use.
type Accumulator struct {
	dim     int
	n       int
	sumSq   float64
	sum     []float64
	scratch []float64 // the chunk being added, so a failed Add changes nothing
}

// NewAccumulator returns an empty accumulator for gradients of dimension dim.
// It panics if dim is negative.
func NewAccumulator(dim int) *Accumulator {
	if dim < 0 {
		panic(fmt.Sprintf("gdiv: negative dimension %d", dim))
	}
	return &Accumulator{dim: dim, sum: make([]float64, dim)}
}

// Dim returns the gradient dimension d.
func (a *Accumulator) Dim() int { return a.dim }

// N returns the number of rows accumulated so far.
func (a *Accumulator) N() int { return a.n }

// SumSqNorms returns Σ‖g_i‖² over the rows accumulated so far.
func (a *Accumulator) SumSqNorms() float64 { return a.sumSq }

// Sum returns Σ g_i over the rows accumulated so far. The returned slice is
// the accumulator's own storage: it is valid until the next call that
// changes the accumulator, and must not be modified.
func (a *Accumulator) Sum() []float64 { return a.sum }

// Add accumulates the n rows of the row-major n×d buffer grads, d = Dim().
// On error (a non-finite value, named by row and column) the accumulator is
// unchanged. It panics if len(grads) != n·Dim().
func (a *Accumulator) Add(grads []float64, n int) error { return addRows(a, grads, n) }

// Add32 is Add for float32 rows (accumulated in float64).
func (a *Accumulator) Add32(grads []float32, n int) error { return addRows(a, grads, n) }

func addRows[T float32 | float64](a *Accumulator, grads []T, n int) error {
	checkShape(len(grads), n, a.dim, "grads")
	if n == 0 {
		return nil
	}
	if a.scratch == nil {
		a.scratch = make([]float64, a.dim)
	} else {
		clear(a.scratch)
	}
	sq := accumulateRows(a.scratch, grads, n, a.dim)
	if err := finiteOr(sq, grads, a.dim, "grads"); err != nil {
		return err
	}
	return a.AddSums(n, sq, a.scratch)
}

// AddSums accumulates precomputed sums of n rows: sumSqNorms = Σ‖g_i‖² and
// sum = Σ g_i (len Dim()). This is how per-rank partial sums enter after an
// all-reduce, and how callers that compute norms elsewhere (e.g. on a GPU)
// hand over only small vectors. On error the accumulator is unchanged.
// It panics if n < 0 or len(sum) != Dim().
func (a *Accumulator) AddSums(n int, sumSqNorms float64, sum []float64) error {
	if n < 0 {
		panic(fmt.Sprintf("gdiv: negative row count %d", n))
	}
	if len(sum) != a.dim {
		panic(fmt.Sprintf("gdiv: len(sum) = %d, want Dim() = %d", len(sum), a.dim))
	}
	if math.IsNaN(sumSqNorms) || math.IsInf(sumSqNorms, 0) {
		return fmt.Errorf("%w: sum_sq_norms = %v", ErrNonFinite, sumSqNorms)
	}
	if sumSqNorms < 0 {
		return paramErr("sum_sq_norms = %v is negative", sumSqNorms)
	}
	if err := nonFiniteAt(sum, len(sum)+1, "sum"); err != nil {
		return err
	}
	a.n += n
	a.sumSq += sumSqNorms
	for j, v := range sum {
		a.sum[j] += v
	}
	return nil
}

// Merge adds the contents of b into a; b is unchanged.
// It panics if the dimensions differ.
func (a *Accumulator) Merge(b *Accumulator) {
	if a.dim != b.dim {
		panic(fmt.Sprintf("gdiv: merging accumulators of dimension %d and %d", a.dim, b.dim))
	}
	a.n += b.n
	a.sumSq += b.sumSq
	for j, v := range b.sum {
		a.sum[j] += v
	}
}

// Reset empties the accumulator, keeping its storage.
func (a *Accumulator) Reset() {
	a.n = 0
	a.sumSq = 0
	clear(a.sum)
}

// Stats returns the Stats of everything accumulated so far, with the
// errors of StatsFromSums (ErrEmpty when nothing was added).
func (a *Accumulator) Stats() (Stats, error) {
	return StatsFromSums(a.n, a.dim, a.sumSq, sqNorm(a.sum))
}
