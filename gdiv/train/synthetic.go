package train

import (
	"fmt"
	"math"
	"math/rand/v2"
	"slices"

	"github.com/gdiv/gdiv/gdiv/data"
)

// Synthetic data sets for the examples of Section 4.1, and the data
// replication of Section 6.1 that lowers gradient diversity on purpose.
//
// The generators' targets follow one linear model, for least squares:
//
//	y_i = x_iᵀw* + ε_i,   w*_j ~ N(0, 1/s) i.i.d.,   ε_i ~ N(0, (SyntheticNoise·σ)²),
//
// s the number of nonzero features per row (d for dense rows) and σ the
// feature scale, so the signal x_iᵀw* has variance ≈ σ² and the
// signal-to-noise ratio of the standard deviations is 1/SyntheticNoise. The
// values are drawn in a fixed order — all of X row by row, then w*, then ε
// — so a data set is a deterministic function of the rng's state.

// SyntheticNoise is the standard deviation of the target noise of the
// synthetic generators relative to the feature scale σ.
const SyntheticNoise = 0.1

func checkGen(op string, n, d int, rng *rand.Rand) {
	if n < 1 || d < 1 {
		panic(fmt.Sprintf("gdiv: %s: need n ≥ 1 and d ≥ 1, got n = %d, d = %d", op, n, d))
	}
	if rng == nil {
		panic(fmt.Sprintf("gdiv: %s: nil rng", op))
	}
}

// linearTargets draws w* ~ N(0, I/s) and sets Y = X w* + N(0, (noise·σ)²).
func linearTargets(ds *data.Dataset, s int, sigma float64, rng *rand.Rand) {
	wstar := make([]float64, ds.D)
	sd := 1 / math.Sqrt(float64(s))
	for j := range wstar {
		wstar[j] = sd * rng.NormFloat64()
	}
	for i := range ds.N {
		var z float64
		for j, v := range ds.Row(i) {
			z += v * wstar[j]
		}
		ds.Y[i] = z + SyntheticNoise*sigma*rng.NormFloat64()
	}
}

func newRegression(name string, n, d int) *data.Dataset {
	return &data.Dataset{Name: name, X: make([]float64, n*d), Y: make([]float64, n), N: n, D: d}
}

// GaussianDataset returns n examples with d i.i.d. N(0, σ²) features — the
// σ-sub-Gaussian features of Corollary 1 — and least-squares targets y_i =
// x_iᵀw* + ε_i (see SyntheticNoise). For n ≥ d, with high probability
// Theorem 1's bound n·min‖x_i‖²/σ²_max(X) is of order d: min‖x_i‖² is of
// order σ²d and σ²_max(X) ≈ σ²(√n + √d)².
//
// It panics if n < 1, d < 1, sigma is not finite and positive, or rng is
// nil.
func GaussianDataset(n, d int, sigma float64, rng *rand.Rand) *data.Dataset {
	checkGen("GaussianDataset", n, d, rng)
	if !(sigma > 0) || math.IsInf(sigma, 1) {
		panic(fmt.Sprintf("gdiv: GaussianDataset: σ = %v, want finite σ > 0", sigma))
	}
	ds := newRegression(fmt.Sprintf("gaussian-%dx%d", n, d), n, d)
	for k := range ds.X {
		ds.X[k] = sigma * rng.NormFloat64()
	}
	linearTargets(ds, d, sigma, rng)
	return ds
}

// RademacherDataset returns n examples with d i.i.d. uniform ±1 features
// (Corollary 2), so ‖x_i‖² = d exactly, and least-squares targets as
// GaussianDataset's with σ = 1. The signs take one rng.Uint64 per 64
// entries.
//
// It panics if n < 1, d < 1 or rng is nil.
func RademacherDataset(n, d int, rng *rand.Rand) *data.Dataset {
	checkGen("RademacherDataset", n, d, rng)
	ds := newRegression(fmt.Sprintf("rademacher-%dx%d", n, d), n, d)
	fillSigns(ds.X, rng)
	linearTargets(ds, d, 1, rng)
	return ds
}

// fillSigns sets every entry of x to ±1 with equal probability, 64 signs
// per rng.Uint64.
func fillSigns(x []float64, rng *rand.Rand) {
	var bits uint64
	for k := range x {
		if k%64 == 0 {
			bits = rng.Uint64()
		}
		x[k] = float64(int(bits&1)*2 - 1)
		bits >>= 1
	}
}

// SparseConflictDataset returns n examples whose features are nonzero on
// exactly `support` coordinates out of d, a uniformly random subset drawn
// independently for each row, with values ±1 (so ‖x_i‖² = support), and
// least-squares targets as GaussianDataset's with w*_j ~ N(0, 1/support).
//
// For a GLM without intercept (see NoIntercept) and λ = 0, ∇f_i(w) = a_i x_i
// has the support of x_i, so Theorem 2 applies with the conflict graph of
// the rows: BoundSparse(ds.X, n, d).BatchBoundLower = n/(ρ+1) is a lower
// bound on B_S(w) for every w.
// Two rows conflict with probability q = 1 − C(d−s, s)/C(d, s) (s =
// support, q ≈ s²/d when s² ≪ d), so each degree is Binomial(n−1, q) with
// mean ExpectedConflictDegree(n, d, s); ρ, the largest of the n degrees,
// lies somewhat above that mean (by a few of its standard deviations).
//
// It panics if n < 1, d < 1, support is not in [1, d], or rng is nil.
func SparseConflictDataset(n, d, support int, rng *rand.Rand) *data.Dataset {
	checkGen("SparseConflictDataset", n, d, rng)
	if support < 1 || support > d {
		panic(fmt.Sprintf("gdiv: SparseConflictDataset: support %d, want 1 ≤ support ≤ d = %d", support, d))
	}
	ds := newRegression(fmt.Sprintf("sparse-%dx%d-s%d", n, d, support), n, d)
	perm := make([]int, d)
	for j := range perm {
		perm[j] = j
	}
	signs := make([]float64, support)
	for i := range n {
		// A partial Fisher–Yates shuffle of any permutation selects a
		// uniformly random subset, so perm need not be reset.
		for t := range support {
			u := t + rng.IntN(d-t)
			perm[t], perm[u] = perm[u], perm[t]
		}
		fillSigns(signs, rng)
		row := ds.Row(i)
		for t, j := range perm[:support] {
			row[j] = signs[t]
		}
	}
	linearTargets(ds, support, 1, rng)
	return ds
}

// ExpectedConflictDegree returns the expected degree of a vertex of the
// conflict graph of SparseConflictDataset(n, d, support, ·): (n−1)·q with q
// = 1 − C(d−s, s)/C(d, s) the probability that two random s-subsets of d
// coordinates overlap (q = 1 when 2s > d). It panics unless n ≥ 1 and
// 1 ≤ support ≤ d.
func ExpectedConflictDegree(n, d, support int) float64 {
	if n < 1 || support < 1 || support > d {
		panic(fmt.Sprintf("gdiv: ExpectedConflictDegree: n = %d, d = %d, support = %d", n, d, support))
	}
	disjoint := 1.0 // C(d−s, s)/C(d, s) = Π_t (d−s−t)/(d−t)
	for t := range support {
		disjoint *= max(float64(d-support-t), 0) / float64(d-t)
	}
	return float64(n-1) * (1 - disjoint)
}

// chooseSorted returns m distinct indices drawn uniformly from [0, n), in
// increasing order (a partial Fisher–Yates shuffle: m rng.IntN calls).
func chooseSorted(n, m int, rng *rand.Rand) []int {
	idx := make([]int, n)
	for j := range idx {
		idx[j] = j
	}
	for t := range m {
		u := t + rng.IntN(n-t)
		idx[t], idx[u] = idx[u], idx[t]
	}
	idx = idx[:m]
	slices.Sort(idx)
	return idx
}

func checkReplication(op string, ds *data.Dataset, r int, rng *rand.Rand) error {
	if ds == nil || rng == nil {
		panic(fmt.Sprintf("gdiv: %s: nil data set or rng", op))
	}
	if err := ds.Validate(); err != nil {
		return err
	}
	if r < 1 || r > ds.N {
		return paramErr("%s: replication factor r = %d, want 1 ≤ r ≤ n = %d", op, r, ds.N)
	}
	return nil
}

// Replicate returns the r-replication of Section 6.1 ("picking a random
// 1/r fraction of the data and replicating it r times", with the sample size
// unchanged) as the paper's authors built it: keep a uniformly random
// subset of m = ⌊n/r⌋ distinct examples (in their original order) and fill
// back to n examples by appending n − m draws made uniformly with
// replacement from the kept ones. The result has exactly n examples, of
// which exactly m are distinct, each appearing 1 + Binomial(n − m, 1/m) ≈ r
// times, so the gradient diversity drops by about r. Tile replicates
// exactly r times instead. r = 1 returns a copy of ds (no draws). The name
// gets the suffix "/replicate<r>".
//
// It returns ds.Validate's error, or an ErrParam error unless 1 ≤ r ≤ n.
// It panics if ds or rng is nil.
func Replicate(ds *data.Dataset, r int, rng *rand.Rand) (*data.Dataset, error) {
	if err := checkReplication("Replicate", ds, r, rng); err != nil {
		return nil, err
	}
	if r == 1 {
		out := ds.Clone()
		out.Name = ds.Name + "/replicate1"
		return out, nil
	}
	n := ds.N
	m := n / r
	idx := chooseSorted(n, m, rng)
	for range n - m {
		idx = append(idx, idx[rng.IntN(m)])
	}
	out := ds.Subset(idx)
	out.Name = fmt.Sprintf("%s/replicate%d", ds.Name, r)
	return out, nil
}

// Tile returns the exact r-fold tiling: a uniformly random subset of m =
// ⌊n/r⌋ distinct examples (in their original order) repeated r times in
// sequence, so the result has m·r examples (n rounded down to a multiple
// of r) and each kept example appears exactly r times. Its per-example
// gradients at any w are those of the subset, each r times, so
//
//	Δ_tiled = rΣ‖g_i‖² / ‖rΣg_i‖² = Δ_subset / r,   B_S,tiled = m r Δ_subset / r = B_S,subset:
//
// replication divides the diversity by r and leaves the batch-size bound
// of the kept examples unchanged while the sample grows back to ≈ n. r = 1
// returns a copy of ds (no draws). The name gets the suffix "/tile<r>".
//
// It returns ds.Validate's error, or an ErrParam error unless 1 ≤ r ≤ n.
// It panics if ds or rng is nil.
func Tile(ds *data.Dataset, r int, rng *rand.Rand) (*data.Dataset, error) {
	if err := checkReplication("Tile", ds, r, rng); err != nil {
		return nil, err
	}
	if r == 1 {
		out := ds.Clone()
		out.Name = ds.Name + "/tile1"
		return out, nil
	}
	m := ds.N / r
	sub := chooseSorted(ds.N, m, rng)
	idx := make([]int, 0, m*r)
	for range r {
		idx = append(idx, sub...)
	}
	out := ds.Subset(idx)
	out.Name = fmt.Sprintf("%s/tile%d", ds.Name, r)
	return out, nil
}
