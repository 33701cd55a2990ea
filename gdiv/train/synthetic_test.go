package train

import (
	"errors"
	"fmt"
	"math"
	"math/rand/v2"
	"slices"
	"strings"
	"testing"

	"github.com/gdiv/gdiv/gdiv"
	"github.com/gdiv/gdiv/gdiv/data"

	"gonum.org/v1/gonum/floats"
)

// Named tolerances of the generator tests.
const (
	synTolStd    = 0.05  // sample std of 12800 N(0, σ²) draws vs. σ (≈ 8 standard errors)
	synTolRatio  = 1e-12 // exact identities under replication (relative)
	synTolDegree = 0.15  // mean conflict degree vs. its expectation (relative)
)

func synSeed(a uint64) *rand.Rand { return rand.New(rand.NewPCG(a, 0x5eed)) }

func TestGeneratorsShapeAndDeterminism(t *testing.T) {
	gens := map[string]func(*rand.Rand) *data.Dataset{
		"gaussian":   func(r *rand.Rand) *data.Dataset { return GaussianDataset(30, 7, 2, r) },
		"rademacher": func(r *rand.Rand) *data.Dataset { return RademacherDataset(30, 70, r) },
		"sparse":     func(r *rand.Rand) *data.Dataset { return SparseConflictDataset(30, 50, 3, r) },
	}
	for name, gen := range gens {
		a, b, c := gen(synSeed(1)), gen(synSeed(1)), gen(synSeed(2))
		if err := a.Validate(); err != nil || a.N != 30 || a.Classes != 0 {
			t.Errorf("%s: %v, N = %d, Classes = %d", name, err, a.N, a.Classes)
		}
		if !slices.Equal(a.X, b.X) || !slices.Equal(a.Y, b.Y) {
			t.Errorf("%s: same seed, different data", name)
		}
		if slices.Equal(a.X, c.X) || slices.Equal(a.Y, c.Y) {
			t.Errorf("%s: different seeds, same data", name)
		}
	}
}

func TestGaussianDataset(t *testing.T) {
	const sigma = 2.5
	ds := GaussianDataset(200, 64, sigma, synSeed(3))
	if ds.D != 64 || len(ds.X) != 200*64 {
		t.Fatalf("shape %d×%d", ds.N, ds.D)
	}
	var sum, ss float64
	for _, v := range ds.X {
		sum += v
		ss += v * v
	}
	n := float64(len(ds.X))
	if std := math.Sqrt(ss/n - (sum/n)*(sum/n)); math.Abs(std/sigma-1) > synTolStd {
		t.Errorf("feature std %v, want %v", std, sigma)
	}
	// Targets: signal variance ≈ σ², noise std SyntheticNoise·σ.
	var yy float64
	for _, y := range ds.Y {
		yy += y * y
	}
	if v := yy / 200; v < 0.5*sigma*sigma || v > 2*sigma*sigma {
		t.Errorf("target second moment %v, want ≈ σ² = %v", v, sigma*sigma)
	}
}

func TestRademacherDataset(t *testing.T) {
	const n, d = 100, 37
	ds := RademacherDataset(n, d, synSeed(4))
	plus := 0
	for i := range n {
		row := ds.Row(i)
		for _, v := range row {
			if v != 1 && v != -1 {
				t.Fatalf("entry %v, want ±1", v)
			}
			if v == 1 {
				plus++
			}
		}
		if sq := floats.Dot(row, row); sq != d {
			t.Fatalf("‖x_%d‖² = %v, want %d", i, sq, d)
		}
	}
	// 3700 fair signs: the count of +1 is within 5 standard deviations (≈ 30).
	if math.Abs(float64(plus)-n*d/2) > 5*math.Sqrt(n*d/4) {
		t.Errorf("%d of %d entries are +1", plus, n*d)
	}
}

// synGLMRows returns the rows a_i x_i of GLM gradients for random a_i.
func synGLMRows(ds *data.Dataset, rng *rand.Rand) []float64 {
	g := slices.Clone(ds.X)
	for i := range ds.N {
		floats.Scale(rng.NormFloat64(), g[i*ds.D:(i+1)*ds.D])
	}
	return g
}

// Corollaries 1 and 2: GLM gradients a_i x_i have B_S ≥ Theorem 1's bound,
// and for Gaussian or Rademacher features with n ≥ d that bound grows
// linearly in d.
func TestCorollaryBounds(t *testing.T) {
	const n = 512
	rng := synSeed(5)
	gens := map[string]func(d int) *data.Dataset{
		"gaussian":   func(d int) *data.Dataset { return GaussianDataset(n, d, 0.7, rng) },
		"rademacher": func(d int) *data.Dataset { return RademacherDataset(n, d, rng) },
	}
	for name, gen := range gens {
		var bounds [2]float64
		for k, d := range []int{16, 64} {
			ds := gen(d)
			b, err := gdiv.BoundGLM(ds.X, n, d)
			if err != nil {
				t.Fatal(err)
			}
			bounds[k] = b.BatchBoundLower
			for trial := range 5 {
				s, err := gdiv.ComputeStats(synGLMRows(ds, rng), n, d)
				if err != nil {
					t.Fatal(err)
				}
				if s.BatchBound < b.BatchBoundLower*(1-probBoundTol) {
					t.Errorf("%s d=%d trial %d: B_S = %v below Theorem 1's bound %v", name, d, trial, s.BatchBound, b.BatchBoundLower)
				}
			}
			// The least-squares problem's own gradients (no intercept,
			// λ = 0) are GLM gradients too.
			ls, _ := NewLeastSquares(ds, 0, NoIntercept())
			grads, _ := PerExampleGrads(nil, ls, probRandW(rng, d, 1), nil)
			if s, _ := gdiv.ComputeStats(grads, n, d); s.BatchBound < b.BatchBoundLower*(1-probBoundTol) {
				t.Errorf("%s d=%d: least-squares B_S = %v below %v", name, d, s.BatchBound, b.BatchBoundLower)
			}
		}
		// Linear growth: ≈ d·n/(√n + √d)², ratio ≈ 3 from d = 16 to 64
		// (Rademacher, min‖x_i‖² = d), more for Gaussian rows.
		if r := bounds[1] / bounds[0]; r < 2 {
			t.Errorf("%s: bound %v at d = 16, %v at d = 64: ratio %v, want > 2", name, bounds[0], bounds[1], r)
		}
	}
}

// synSupports returns the support (nonzero coordinates) of each row.
func synSupports(ds *data.Dataset) [][]int {
	sup := make([][]int, ds.N)
	for i := range ds.N {
		for j, v := range ds.Row(i) {
			if v != 0 {
				sup[i] = append(sup[i], j)
			}
		}
	}
	return sup
}

func TestSparseConflictDataset(t *testing.T) {
	const n, d, s = 300, 200, 4
	ds := SparseConflictDataset(n, d, s, synSeed(6))
	sup := synSupports(ds)
	for i, si := range sup {
		if len(si) != s {
			t.Fatalf("row %d has %d nonzeros, want %d", i, len(si), s)
		}
		for _, j := range si {
			if v := ds.X[i*d+j]; v != 1 && v != -1 {
				t.Fatalf("row %d: value %v on the support, want ±1", i, v)
			}
		}
	}
	// The conflict graph by brute force, as the construction defines it.
	maxDeg, sumDeg := 0, 0
	for i := range n {
		deg := 0
		for k := range n {
			if k != i && slices.ContainsFunc(sup[i], func(j int) bool { return slices.Contains(sup[k], j) }) {
				deg++
			}
		}
		maxDeg = max(maxDeg, deg)
		sumDeg += deg
	}
	b, err := gdiv.BoundSparse(ds.X, n, d)
	if err != nil {
		t.Fatal(err)
	}
	if b.MaxDegree != maxDeg {
		t.Errorf("BoundSparse ρ = %d, brute force %d", b.MaxDegree, maxDeg)
	}
	// Mean degree vs. (n−1)q: over 300 vertices the mean is within 15%.
	want := ExpectedConflictDegree(n, d, s)
	if mean := float64(sumDeg) / n; math.Abs(mean/want-1) > synTolDegree {
		t.Errorf("mean degree %v, expected %v", mean, want)
	}
	// Theorem 2 for the least-squares gradients (no intercept, λ = 0).
	ls, _ := NewLeastSquares(ds, 0, NoIntercept())
	grads, _ := PerExampleGrads(nil, ls, probRandW(synSeed(7), d, 1), nil)
	st, err := gdiv.ComputeStats(grads, n, d)
	if err != nil {
		t.Fatal(err)
	}
	if st.BatchBound < b.BatchBoundLower*(1-probBoundTol) {
		t.Errorf("B_S = %v below Theorem 2's n/(ρ+1) = %v", st.BatchBound, b.BatchBoundLower)
	}
}

func TestExpectedConflictDegree(t *testing.T) {
	// Enumeration: the fraction of pairs of s-subsets of [d] that overlap.
	for _, c := range [][2]int{{4, 2}, {6, 2}, {7, 3}, {5, 3}, {5, 1}} {
		d, s := c[0], c[1]
		var subsets []uint
		for m := uint(0); m < 1<<d; m++ {
			if synPopcount(m) == s {
				subsets = append(subsets, m)
			}
		}
		overlap := 0
		for _, a := range subsets {
			for _, b := range subsets {
				if a&b != 0 {
					overlap++
				}
			}
		}
		q := float64(overlap) / float64(len(subsets)*len(subsets))
		if got := ExpectedConflictDegree(11, d, s); !probNear(got, 10*q, probTolExact) {
			t.Errorf("d=%d s=%d: %v, enumeration %v", d, s, got, 10*q)
		}
	}
}

func synPopcount(m uint) int {
	c := 0
	for ; m != 0; m &= m - 1 {
		c++
	}
	return c
}

// synKey identifies an example by its features and label.
func synKey(ds *data.Dataset, i int) string { return fmt.Sprint(ds.Row(i), ds.Y[i]) }

func synIndex(ds *data.Dataset) map[string]int {
	m := make(map[string]int, ds.N)
	for i := range ds.N {
		m[synKey(ds, i)] = i
	}
	return m
}

func TestReplicate(t *testing.T) {
	orig := GaussianDataset(103, 3, 1, synSeed(8))
	index := synIndex(orig)
	for _, r := range []int{2, 4, 10, 103} {
		rep, err := Replicate(orig, r, synSeed(uint64(r)))
		if err != nil {
			t.Fatal(err)
		}
		if rep.N != orig.N || rep.D != orig.D || rep.Name != fmt.Sprintf("%s/replicate%d", orig.Name, r) {
			t.Fatalf("r=%d: %d×%d %q", r, rep.N, rep.D, rep.Name)
		}
		distinct := map[string]int{}
		for i := range rep.N {
			k := synKey(rep, i)
			if _, ok := index[k]; !ok {
				t.Fatalf("r=%d: row %d is not a row of the original", r, i)
			}
			distinct[k]++
		}
		if len(distinct) != orig.N/r {
			t.Errorf("r=%d: %d distinct rows, want n/r = %d", r, len(distinct), orig.N/r)
		}
		again, _ := Replicate(orig, r, synSeed(uint64(r)))
		if !slices.Equal(again.X, rep.X) {
			t.Errorf("r=%d: not deterministic per seed", r)
		}
	}
	one, err := Replicate(orig, 1, synNoDraws())
	if err != nil || !slices.Equal(one.X, orig.X) || !slices.Equal(one.Y, orig.Y) {
		t.Errorf("r=1: not a copy (%v)", err)
	}
}

// synNoDraws returns a source that panics if used: r = 1 must draw nothing.
func synNoDraws() *rand.Rand { return rand.New(synPanicSource{}) }

type synPanicSource struct{}

func (synPanicSource) Uint64() uint64 { panic("gdiv test: r = 1 drew a random number") }

func TestTile(t *testing.T) {
	orig := GaussianDataset(50, 4, 1, synSeed(9))
	index := synIndex(orig)
	for _, r := range []int{2, 3, 7, 50} {
		tl, err := Tile(orig, r, synSeed(uint64(r)))
		if err != nil {
			t.Fatal(err)
		}
		m := orig.N / r
		if tl.N != m*r {
			t.Fatalf("r=%d: N = %d, want ⌊n/r⌋·r = %d", r, tl.N, m*r)
		}
		counts := map[string]int{}
		for i := range tl.N {
			k := synKey(tl, i)
			if _, ok := index[k]; !ok {
				t.Fatalf("r=%d: row %d is not a row of the original", r, i)
			}
			counts[k]++
		}
		if len(counts) != m {
			t.Errorf("r=%d: %d distinct rows, want %d", r, len(counts), m)
		}
		for k, c := range counts {
			if c != r {
				t.Fatalf("r=%d: %s appears %d times", r, k, c)
			}
		}
		// Δ of the tiled gradients is Δ of the kept subset divided by r;
		// B_S is unchanged. The first m rows are the subset.
		sub := tl.Subset(synSeq(m))
		w := probRandW(synSeed(10), orig.D+1, 1)
		st, ss := synStats(t, tl, w), synStats(t, sub, w)
		if !probNear(ss.Diversity/st.Diversity, float64(r), synTolRatio) || !probNear(st.BatchBound, ss.BatchBound, synTolRatio) {
			t.Errorf("r=%d: Δ %v (subset %v), B_S %v (subset %v)", r, st.Diversity, ss.Diversity, st.BatchBound, ss.BatchBound)
		}
	}
	one, err := Tile(orig, 1, synNoDraws())
	if err != nil || !slices.Equal(one.X, orig.X) || !slices.Equal(one.Y, orig.Y) {
		t.Errorf("r=1: not the identity (%v)", err)
	}
}

func synSeq(m int) []int {
	s := make([]int, m)
	for i := range s {
		s[i] = i
	}
	return s
}

func synStats(t *testing.T, ds *data.Dataset, w []float64) gdiv.Stats {
	t.Helper()
	p, err := NewLeastSquares(ds, 0)
	if err != nil {
		t.Fatal(err)
	}
	g, _ := PerExampleGrads(nil, p, w, nil)
	s, err := gdiv.ComputeStats(g, ds.N, p.NumParams())
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func TestReplicationErrors(t *testing.T) {
	ds := GaussianDataset(10, 2, 1, synSeed(11))
	for _, r := range []int{0, -1, 11} {
		if _, err := Replicate(ds, r, synSeed(1)); !errors.Is(err, gdiv.ErrParam) || !strings.Contains(err.Error(), fmt.Sprint(r)) {
			t.Errorf("Replicate r=%d: %v", r, err)
		}
		if _, err := Tile(ds, r, synSeed(1)); !errors.Is(err, gdiv.ErrParam) {
			t.Errorf("Tile r=%d: %v", r, err)
		}
	}
	if _, err := Tile(&data.Dataset{D: 1}, 1, synSeed(1)); !errors.Is(err, gdiv.ErrEmpty) {
		t.Errorf("Tile of an empty data set: %v", err)
	}
	for name, f := range map[string]func(){
		"gaussian n=0":   func() { GaussianDataset(0, 2, 1, synSeed(1)) },
		"gaussian σ=0":   func() { GaussianDataset(2, 2, 0, synSeed(1)) },
		"rademacher rng": func() { RademacherDataset(2, 2, nil) },
		"sparse s > d":   func() { SparseConflictDataset(2, 2, 3, synSeed(1)) },
		"sparse s = 0":   func() { SparseConflictDataset(2, 2, 0, synSeed(1)) },
		"replicate nil":  func() { Replicate(nil, 1, synSeed(1)) },
	} {
		if msg := probPanics(f); !strings.HasPrefix(msg, "gdiv: ") {
			t.Errorf("%s: panic %q", name, msg)
		}
	}
}

// Every coordinate is equally likely to be in a support: counts over many
// rows are within 5 binomial standard deviations of their mean.
func TestSparseConflictUniformSupport(t *testing.T) {
	const n, d, s = 2000, 20, 3
	ds := SparseConflictDataset(n, d, s, synSeed(12))
	counts := make([]int, d)
	for _, si := range synSupports(ds) {
		for _, j := range si {
			counts[j]++
		}
	}
	mean := float64(n * s / d)
	sd := math.Sqrt(float64(n) * s / d * (1 - float64(s)/d))
	for j, c := range counts {
		if math.Abs(float64(c)-mean) > 5*sd {
			t.Errorf("coordinate %d is in %d supports, want %v ± %v", j, c, mean, 5*sd)
		}
	}
}
