package gdiv

import (
	"errors"
	"fmt"
	"math"

	"gonum.org/v1/gonum/mat"
)

// Data-dependent lower bounds on the batch-size bound B_S (Section 4.1,
// Appendix A) and the stability step-size conditions of Section 5.3.
//
// Both lower bounds hold uniformly in the model w, and also for the
// differential batch-size bound B̄_S(w, w') of Definition 6 (Appendix E.5),
// which governs the stability conditions (9) and (11).

// GLMBound is the Theorem 1 lower bound on B_S for generalized linear
// losses f_i(w) = ℓ_i(x_iᵀw) with feature matrix X (rows x_i).
type GLMBound struct {
	N   int // number of examples n
	Dim int // dimension d

	MinSqNorm  float64 // min_i ‖x_i‖²
	SigmaMaxSq float64 // σ²_max(X), the largest eigenvalue of XᵀX

	// BatchBoundLower is n·min_i‖x_i‖²/σ²_max(X), in [0, n].
	BatchBoundLower float64
}

// BoundGLM returns the lower bound of Theorem 1 for the n×d row-major
// feature matrix x:
//
//	B_S(w) ≥ n · min_i ‖x_i‖² / σ²_max(X)   for all w,
//
// because ∇f_i(w) = a_i x_i with a_i = ℓ_i'(x_iᵀw), so B_S(w) =
// n Σa_i²‖x_i‖² / ‖Xᵀa‖² (Appendix A.1). The same bound holds for the
// differential bound B̄_S(w, w') (Appendix E.5, where the displayed bound
// drops the factor n that the proof of A.1 gives).
//
// σ²_max is the largest eigenvalue of the smaller Gram matrix (XXᵀ when
// n ≤ d, else XᵀX), from gonum's mat.EigenSym without vectors: cost
// O(n·d·min(n,d) + min(n,d)³). Entries far from 1 in magnitude are first
// scaled by a power of two (exactly), so the bound neither overflows nor
// underflows; MinSqNorm and SigmaMaxSq are reported in the original scale
// and may then be ±Inf or 0 while BatchBoundLower is still right.
//
// A zero row gives BatchBoundLower = 0, a valid (trivial) bound: Theorem 1
// says nothing when some example carries no feature. It returns ErrEmpty,
// ErrZeroDim, ErrNonFinite and, for an all-zero X, ErrAllZero. It panics if
// n or d is negative or len(x) != n·d.
func BoundGLM(x []float64, n, d int) (GLMBound, error) {
	checkShape(len(x), n, d, "x")
	if n == 0 {
		return GLMBound{}, ErrEmpty
	}
	if d == 0 {
		return GLMBound{}, ErrZeroDim
	}
	if err := nonFiniteAt(x, d, "x"); err != nil {
		return GLMBound{}, err
	}
	var mx float64
	for _, v := range x {
		mx = max(mx, math.Abs(v))
	}
	if mx == 0 {
		return GLMBound{}, ErrAllZero
	}
	// Scale by 2^-e so that the largest entry lies in [1/2, 1) when the
	// squares could leave float64's range; powers of two scale exactly.
	xs := x
	_, e := math.Frexp(mx)
	if e > 200 || e < -200 {
		xs = make([]float64, len(x))
		for k, v := range x {
			xs[k] = math.Ldexp(v, -e)
		}
	} else {
		e = 0
	}
	minSq := math.Inf(1)
	for i := range n {
		minSq = min(minSq, sqNorm(xs[i*d:(i+1)*d]))
	}
	X := mat.NewDense(n, d, xs)
	var g mat.SymDense
	if n <= d {
		g.SymOuterK(1, X) // X Xᵀ, n×n
	} else {
		g.SymOuterK(1, X.T()) // Xᵀ X, d×d
	}
	var eig mat.EigenSym
	if !eig.Factorize(&g, false) {
		return GLMBound{}, errors.New("gdiv: BoundGLM: symmetric eigenvalue decomposition did not converge")
	}
	var sig2 float64
	for _, v := range eig.Values(nil) {
		sig2 = max(sig2, v)
	}
	// σ²_max ≥ max‖x_i‖² ≥ min‖x_i‖² in exact arithmetic; keep the bound
	// in [0, n] under rounding.
	bound := float64(n) * min(1, minSq/sig2)
	return GLMBound{
		N:               n,
		Dim:             d,
		MinSqNorm:       math.Ldexp(minSq, 2*e),
		SigmaMaxSq:      math.Ldexp(sig2, 2*e),
		BatchBoundLower: bound,
	}, nil
}

// SparseBound is the Theorem 2 lower bound on B_S for gradients with
// sparse conflicts.
type SparseBound struct {
	N   int // number of examples n
	Dim int // dimension d

	// MaxDegree is ρ, the maximum degree of the conflict graph: i ≠ j are
	// adjacent when the supports (nonzero coordinates) of rows i and j
	// overlap.
	MaxDegree int
	// BatchBoundLower is n/(ρ+1).
	BatchBoundLower float64
}

// BoundSparse returns the lower bound of Theorem 2 for the supports of the
// n×d row-major gradients grads:
//
//	B_S(w) ≥ n/(ρ+1),
//
// ρ the maximum degree of the conflict graph on the n examples, an edge
// between i ≠ j when supp(g_i) ∩ supp(g_j) ≠ ∅, supp the set of nonzero
// coordinates (no self-edges). Only the support pattern matters, so pass
// any values on the supports that ∇f_i can have (e.g. 1s) for a bound
// uniform in w; it holds for B̄_S(w, w') too (Appendix E.5). A zero row is
// an isolated vertex.
//
// The rows are indexed by coordinate (a column-compressed copy of the
// support, int32 row numbers), and the neighbours of each row are counted
// once with a marker array, stopping as soon as a degree reaches n − 1:
// time O(n·d + Σ_l c_l²) in the worst case, c_l the number of rows whose
// support contains l, and O(n·d) for dense gradients.
//
// It returns ErrEmpty, ErrZeroDim, ErrNonFinite and, when every entry is
// zero, ErrAllZero (B_S is undefined). It panics if n or d is negative,
// len(grads) != n·d, or n ≥ 2^31.
func BoundSparse(grads []float64, n, d int) (SparseBound, error) {
	checkShape(len(grads), n, d, "grads")
	if n == 0 {
		return SparseBound{}, ErrEmpty
	}
	if d == 0 {
		return SparseBound{}, ErrZeroDim
	}
	if n > math.MaxInt32 {
		panic(fmt.Sprintf("gdiv: BoundSparse: n = %d rows, want n < 2^31", n))
	}
	if err := nonFiniteAt(grads, d, "grads"); err != nil {
		return SparseBound{}, err
	}
	// Column-compressed support: rows[start[l]:start[l+1]] are the rows
	// whose support contains coordinate l, in increasing order.
	start := make([]int, d+1)
	nnz := 0
	for k, v := range grads {
		if v != 0 {
			start[k%d+1]++
			nnz++
		}
	}
	if nnz == 0 {
		return SparseBound{}, ErrAllZero
	}
	for l := range d {
		start[l+1] += start[l]
	}
	rows := make([]int32, nnz)
	pos := make([]int, d)
	copy(pos, start[:d])
	for k, v := range grads {
		if v != 0 {
			l := k % d
			rows[pos[l]] = int32(k / d)
			pos[l]++
		}
	}
	// mark[j] == i+1 when j is already counted as a neighbour of i (or is i).
	mark := make([]int32, n)
	rho := 0
	for i := 0; i < n && rho < n-1; i++ {
		stamp := int32(i + 1)
		mark[i] = stamp
		deg := 0
		for l, v := range grads[i*d : (i+1)*d] {
			if v == 0 {
				continue
			}
			for _, j := range rows[start[l]:start[l+1]] {
				if mark[j] != stamp {
					mark[j] = stamp
					deg++
				}
			}
			if deg == n-1 {
				break
			}
		}
		rho = max(rho, deg)
	}
	return SparseBound{
		N:               n,
		Dim:             d,
		MaxDegree:       rho,
		BatchBoundLower: float64(n) / float64(rho+1),
	}, nil
}

// StabilityStepConvex returns the largest step size γ allowed by eq. (9)
// of Theorem 12 (convex, L-Lipschitz, β-smooth losses):
//
//	γ ≤ 2 / (β (1 + 1{B>1}/(n−1) + (B−1)/B̄)),
//
// B = batch and B̄ = diffBatchBound, a lower bound on the differential
// batch-size bound B̄_S(w, w') over all w ≠ w' (Definition 6; e.g. from
// BoundGLM or BoundSparse, or +Inf). With such γ, |ε_stab| ≤ 2γL²T/n.
// B = 1 gives serial SGD's 2/β. γ decreases in B and increases in B̄.
//
// It returns an ErrParam error unless β > 0 is finite, batch ≥ 1, n ≥ 1
// (n ≥ 2 when batch > 1), and diffBatchBound > 0 (+Inf allowed).
func StabilityStepConvex(beta float64, n, batch int, diffBatchBound float64) (float64, error) {
	if err := checkStability(beta, n, batch, diffBatchBound); err != nil {
		return 0, err
	}
	return 2 / (beta * stabilityFactor(n, batch, diffBatchBound)), nil
}

// StabilityStepStronglyConvex returns the largest step size γ allowed by
// Theorem 13 (λ-strongly convex, L-Lipschitz, β-smooth losses, projected
// mini-batch SGD). The theorem needs both eq. (11),
//
//	γ ≤ 2 / ((β+λ) (1 + 1{B>1}/(n−1) + (B−1)/B̄)),
//
// and its standing condition B ≤ 1/(2γλ), i.e. γ ≤ 1/(2Bλ); the result is
// the smaller of the two, the largest γ satisfying both. With it,
// |ε_stab| ≤ 4L²/(λn). B = 1 gives min(2/(β+λ), 1/(2λ)). γ decreases in B
// and does not decrease in B̄.
//
// It returns an ErrParam error for the conditions of StabilityStepConvex
// and unless λ > 0 is finite.
func StabilityStepStronglyConvex(beta, lambda float64, n, batch int, diffBatchBound float64) (float64, error) {
	if err := checkStability(beta, n, batch, diffBatchBound); err != nil {
		return 0, err
	}
	if !(lambda > 0 && lambda <= math.MaxFloat64) {
		return 0, paramErr("strong convexity lambda = %v, want finite lambda > 0", lambda)
	}
	g11 := 2 / ((beta + lambda) * stabilityFactor(n, batch, diffBatchBound))
	gCap := 1 / (2 * float64(batch) * lambda)
	return min(g11, gCap), nil
}

// stabilityFactor returns 1 + 1{B>1}/(n−1) + (B−1)/B̄.
func stabilityFactor(n, batch int, bbar float64) float64 {
	if batch == 1 {
		return 1
	}
	return 1 + 1/float64(n-1) + float64(batch-1)/bbar
}

func checkStability(beta float64, n, batch int, bbar float64) error {
	if !(beta > 0 && beta <= math.MaxFloat64) {
		return paramErr("smoothness beta = %v, want finite beta > 0", beta)
	}
	if batch < 1 {
		return paramErr("batch = %d, want batch ≥ 1", batch)
	}
	if n < 1 || (batch > 1 && n < 2) {
		return paramErr("n = %d with batch = %d, want n ≥ 2 when batch > 1 (n ≥ 1 always)", n, batch)
	}
	if !(bbar > 0) {
		return paramErr("differential batch bound = %v, want > 0 (+Inf allowed)", bbar)
	}
	return nil
}
