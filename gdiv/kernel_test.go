package gdiv

import (
	"encoding/binary"
	"fmt"
	"math"
	"math/rand/v2"
	"testing"
)

// Tests of the statistics kernels (kernel.go, kernel_amd64.s) against a
// straightforward reference loop.
//
// Tolerances: every kernel adds the rows into the sum vector in row order,
// exactly as the reference loop does, so the sum vectors must agree bit for
// bit. Σ‖g_i‖² is grouped into several partial sums, so it may differ by
// float64 rounding: it must agree with a compensated reference to a
// relative 1e-12 (the worst-case bound for N positive terms is ≈ N·2⁻⁵³,
// below 1e-12 for every shape tested here except the fuzzer's, which widens
// the tolerance to that bound).

type kernelImpl struct {
	name   string
	rows32 func(sum []float64, x []float32, n, d int) float64
	rows64 func(sum []float64, x []float64, n, d int) float64
	diff32 func(sum []float64, a, b []float32, n, d int) float64
	diff64 func(sum []float64, a, b []float64, n, d int) float64
}

// kernelImpls lists the kernels to test: the dispatching entry points, the
// pure-Go kernel and, where the CPU has them, the AVX2 kernels.
func kernelImpls() []kernelImpl {
	impls := []kernelImpl{
		{"dispatch", accumulateRows[float32], accumulateRows[float64],
			accumulateDiffRows[float32], accumulateDiffRows[float64]},
		{"purego", accumulateRowsGo[float32], accumulateRowsGo[float64],
			accumulateDiffRowsGo[float32], accumulateDiffRowsGo[float64]},
	}
	if useAVX2 {
		impls = append(impls, kernelImpl{"avx2", accumulateRowsF32AVX2, accumulateRowsF64AVX2,
			accumulateDiffRowsF32AVX2, accumulateDiffRowsF64AVX2})
	}
	return impls
}

// refKernel is the reference: sum[j] += a[i,j] − b[i,j] (b nil: just a) row
// by row, and Σ of the squares with Neumaier compensated summation. When the
// plain sum is not finite (an Inf or NaN input, or overflow) it is returned
// instead: the compensation term would turn +Inf into NaN (Inf − Inf).
func refKernel[T float32 | float64](sum []float64, a, b []T, n, d int) float64 {
	var s, c, plain float64
	for i := range n {
		for j := range d {
			x := float64(a[i*d+j])
			if b != nil {
				x -= float64(b[i*d+j])
			}
			sum[j] += x
			y := x * x
			plain += y
			t := s + y
			if math.Abs(s) >= y {
				c += (s - t) + y
			} else {
				c += (y - t) + s
			}
			s = t
		}
	}
	if math.IsNaN(plain) || math.IsInf(plain, 0) {
		return plain
	}
	return s + c
}

func kRandVec(rng *rand.Rand, n int) []float64 {
	v := make([]float64, n)
	for i := range v {
		v[i] = rng.NormFloat64()
	}
	return v
}

// kOffset returns a copy of x that starts off elements into a fresh buffer,
// so that off > 0 gives an unaligned start address.
func kOffset[T any](x []T, off int) []T {
	buf := make([]T, off+len(x)+3)
	y := buf[off : off+len(x) : off+len(x)]
	copy(y, x)
	return y
}

func kSameFloat(a, b float64) bool {
	return a == b && math.Signbit(a) == math.Signbit(b) || math.IsNaN(a) && math.IsNaN(b)
}

// checkKernel runs one kernel on (a, b) into a sum pre-filled with init
// and compares it with the reference.
func checkKernel[T float32 | float64](t *testing.T, what string, tol float64,
	kern func(sum []float64) float64, a, b []T, n, d int, init []float64, off int) {
	t.Helper()
	want := append([]float64(nil), init...)
	wantSq := refKernel(want, a, b, n, d)
	got := kOffset(init, off)
	gotSq := kern(got)
	for j := range want {
		if !kSameFloat(got[j], want[j]) {
			t.Fatalf("%s: sum[%d] = %v, want %v (bit-exact)", what, j, got[j], want[j])
		}
	}
	if err := kSqErr(gotSq, wantSq); err > tol {
		t.Fatalf("%s: Σ‖g‖² = %v, want %v (relative error %.3g > %.3g)", what, gotSq, wantSq, err, tol)
	}
}

// kSqErr is the relative error of a sum of squares (0 when both agree on
// a non-finite value).
func kSqErr(got, want float64) float64 {
	if kSameFloat(got, want) {
		return 0
	}
	if math.IsNaN(got) || math.IsNaN(want) || math.IsInf(got, 0) || math.IsInf(want, 0) {
		return math.Inf(1)
	}
	return math.Abs(got-want) / math.Max(math.Abs(want), math.SmallestNonzeroFloat64)
}

var kernelTestNs = []int{1, 2, 3, 4, 5, 7, 8, 13}

func kernelTestDs() []int {
	ds := []int{0, 1, 2, 3, 4, 5, 7, 8, 15, 16, 17, 31, 33, 2047, 2048, 2049,
		colBlock - 1, colBlock, colBlock + 1, 70000}
	if useAVX2 {
		ds = append(ds, asmColBlock-1, asmColBlock, asmColBlock+1, 2*asmColBlock+5)
	}
	return ds
}

// runKernelCase checks every kernel on one n×d shape, at start offset off
// (elements) for the inputs and the sum.
func runKernelCase(t *testing.T, rng *rand.Rand, n, d, off int) {
	t.Helper()
	a64 := kRandVec(rng, n*d)
	b64 := kRandVec(rng, n*d)
	// Give a few rows very different scales.
	for i := 0; i < n; i += 3 {
		scale := math.Ldexp(1, rng.IntN(40)-20)
		for j := range d {
			a64[i*d+j] *= scale
		}
	}
	a32 := make([]float32, len(a64))
	b32 := make([]float32, len(b64))
	for i := range a64 {
		a32[i] = float32(a64[i])
		b32[i] = float32(b64[i])
	}
	init := kRandVec(rng, d)
	a64o, b64o := kOffset(a64, off), kOffset(b64, off)
	a32o, b32o := kOffset(a32, off), kOffset(b32, off)
	const tol = 1e-12
	for _, k := range kernelImpls() {
		name := fmt.Sprintf("%s n=%d d=%d off=%d", k.name, n, d, off)
		checkKernel(t, name+" rows float32", tol,
			func(s []float64) float64 { return k.rows32(s, a32o, n, d) }, a32, nil, n, d, init, off)
		checkKernel(t, name+" rows float64", tol,
			func(s []float64) float64 { return k.rows64(s, a64o, n, d) }, a64, nil, n, d, init, off)
		checkKernel(t, name+" diff float32", tol,
			func(s []float64) float64 { return k.diff32(s, a32o, b32o, n, d) }, a32, b32, n, d, init, off)
		checkKernel(t, name+" diff float64", tol,
			func(s []float64) float64 { return k.diff64(s, a64o, b64o, n, d) }, a64, b64, n, d, init, off)
	}
}

func TestKernelShapes(t *testing.T) {
	if !useAVX2 {
		t.Log("AVX2/FMA kernels not in use on this machine/build: testing the pure-Go kernel only")
	}
	rng := rand.New(rand.NewPCG(7, 11))
	for _, n := range kernelTestNs {
		for _, d := range kernelTestDs() {
			if testing.Short() && n*d > 1e5 {
				continue
			}
			runKernelCase(t, rng, n, d, 0)
		}
	}
}

// TestKernelUnaligned runs the kernels on inputs and sums that start at odd
// element offsets (4- or 8-byte but not 16- or 32-byte aligned addresses).
func TestKernelUnaligned(t *testing.T) {
	rng := rand.New(rand.NewPCG(3, 5))
	for _, off := range []int{1, 2, 3, 5, 7} {
		for _, n := range []int{1, 4, 5, 7} {
			for _, d := range []int{1, 3, 8, 17, 33, 2049} {
				runKernelCase(t, rng, n, d, off)
			}
		}
	}
}

// TestKernelSubslices runs the kernels on a sub-slice taken at an odd offset
// of a larger buffer, as a caller holding a view of a bigger matrix does.
func TestKernelSubslices(t *testing.T) {
	rng := rand.New(rand.NewPCG(9, 9))
	const n, d = 6, 37
	big := make([]float32, 5+n*d+11)
	for i := range big {
		big[i] = float32(rng.NormFloat64())
	}
	x := big[5 : 5+n*d]
	for _, k := range kernelImpls() {
		want := make([]float64, d)
		wantSq := refKernel(want, x, nil, n, d)
		sumBuf := make([]float64, d+3)
		got := sumBuf[1 : 1+d]
		gotSq := k.rows32(got, x, n, d)
		for j := range want {
			if got[j] != want[j] {
				t.Fatalf("%s: sum[%d] = %v, want %v", k.name, j, got[j], want[j])
			}
		}
		if sumBuf[0] != 0 || sumBuf[d+1] != 0 || sumBuf[d+2] != 0 {
			t.Fatalf("%s: wrote outside the sum slice: %v", k.name, sumBuf)
		}
		if e := kSqErr(gotSq, wantSq); e > 1e-12 {
			t.Fatalf("%s: Σ‖g‖² = %v, want %v", k.name, gotSq, wantSq)
		}
	}
}

// TestKernelNonFinite checks that NaN and ±Inf inputs make Σ‖g‖² NaN or
// +Inf, which the callers rely on to detect bad input, whichever lane or
// row group the value lands in.
func TestKernelNonFinite(t *testing.T) {
	const n, d = 7, 21
	for _, bad := range []float64{math.NaN(), math.Inf(1), math.Inf(-1)} {
		for pos := range n * d {
			x := make([]float32, n*d)
			x64 := make([]float64, n*d)
			for i := range x {
				x[i] = float32(i%5) - 2
				x64[i] = float64(x[i])
			}
			x[pos] = float32(bad)
			x64[pos] = bad
			wantNaN := math.IsNaN(bad)
			for _, k := range kernelImpls() {
				for _, sq := range []float64{
					k.rows32(make([]float64, d), x, n, d),
					k.rows64(make([]float64, d), x64, n, d),
					k.diff32(make([]float64, d), x, make([]float32, n*d), n, d),
					k.diff64(make([]float64, d), make([]float64, n*d), x64, n, d),
				} {
					if wantNaN && !math.IsNaN(sq) || !wantNaN && !math.IsInf(sq, 1) {
						t.Fatalf("%s: bad=%v at %d: Σ‖g‖² = %v", k.name, bad, pos, sq)
					}
				}
			}
		}
	}
}

func TestKernelShapePanics(t *testing.T) {
	for _, k := range kernelImpls() {
		for _, f := range []func(){
			func() { k.rows32(make([]float64, 3), make([]float32, 5), 2, 3) },
			func() { k.rows64(make([]float64, 2), make([]float64, 6), 2, 3) },
			func() { k.diff32(make([]float64, 3), make([]float32, 6), make([]float32, 5), 2, 3) },
		} {
			func() {
				defer func() {
					if recover() == nil {
						t.Errorf("%s: no panic on a short buffer", k.name)
					}
				}()
				f()
			}()
		}
	}
}

// FuzzKernel compares every kernel with the reference on fuzzed shapes and
// values: data is read as little-endian float32 (so NaN, ±Inf, subnormals
// and extreme exponents all occur), rows picks n, off a start offset.
func FuzzKernel(f *testing.F) {
	f32bytes := func(v ...float32) []byte {
		b := make([]byte, 4*len(v))
		for i, x := range v {
			binary.LittleEndian.PutUint32(b[4*i:], math.Float32bits(x))
		}
		return b
	}
	f.Add(f32bytes(1, 2, 3), uint8(0), uint8(0))
	f.Add(f32bytes(1, -2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17), uint8(3), uint8(1))
	f.Add(f32bytes(3e38, -3e38, 1e-45, 1, 2, 0, -0.0, 5, 6, 7, 8, 9, 1e-20), uint8(1), uint8(2))
	f.Add(f32bytes(float32(math.NaN()), 1, 2, 3, 4, 5, 6, 7, 8), uint8(1), uint8(0))
	f.Add(f32bytes(float32(math.Inf(1)), 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11), uint8(4), uint8(3))
	rng := rand.New(rand.NewPCG(1, 1))
	long := make([]float32, 300)
	for i := range long {
		long[i] = float32(rng.NormFloat64() * math.Ldexp(1, rng.IntN(60)-30))
	}
	f.Add(f32bytes(long...), uint8(4), uint8(5))
	f.Add(f32bytes(long...), uint8(12), uint8(0))
	f.Fuzz(func(t *testing.T, data []byte, rows, off uint8) {
		vals := make([]float32, len(data)/4)
		for i := range vals {
			vals[i] = math.Float32frombits(binary.LittleEndian.Uint32(data[4*i:]))
		}
		n := 1 + int(rows%16)
		o := int(off % 8)
		if len(vals) < o+n {
			return
		}
		d := (len(vals) - o) / n
		a32 := vals[o : o+n*d]
		// b: the same values rotated by one, so a − b mixes neighbours.
		b32 := append(append([]float32(nil), a32[1:]...), a32[0])
		a64 := make([]float64, len(a32))
		b64 := make([]float64, len(b32))
		for i := range a32 {
			a64[i] = float64(a32[i])
			b64[i] = float64(b32[i])
		}
		init := make([]float64, d)
		for j := range init {
			init[j] = float64(j%7) - 3
		}
		tol := 1e-12 + 4*float64(n*d)*0x1p-53
		for _, k := range kernelImpls() {
			name := fmt.Sprintf("%s n=%d d=%d", k.name, n, d)
			checkKernel(t, name+" rows float32", tol,
				func(s []float64) float64 { return k.rows32(s, a32, n, d) }, a32, nil, n, d, init, 0)
			checkKernel(t, name+" rows float64", tol,
				func(s []float64) float64 { return k.rows64(s, a64, n, d) }, a64, nil, n, d, init, 1)
			checkKernel(t, name+" diff float32", tol,
				func(s []float64) float64 { return k.diff32(s, a32, b32, n, d) }, a32, b32, n, d, init, 0)
			checkKernel(t, name+" diff float64", tol,
				func(s []float64) float64 { return k.diff64(s, a64, b64, n, d) }, a64, b64, n, d, init, 3)
		}
	})
}
