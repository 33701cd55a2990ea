package gdiv

import (
	"fmt"
	"math/rand/v2"
	"testing"

	"gonum.org/v1/gonum/blas/gonum"
)

// Benchmarks of the statistics kernel against the memory-bandwidth
// reference (a plain one-pass sum of the same float32 buffer) and against a
// kernel composed from gonum. "gdiv" is the kernel as dispatched (the AVX2
// assembly where the CPU has AVX2 and FMA), "gdiv-purego" the pure-Go
// fallback, "stats" the whole ComputeStats32 (which also allocates the sum
// vector). All report GB/s of the float32 input buffer via b.SetBytes. `make bench` prints them side by side as a table.

// benchShape picks B×d for a total of size elements: B = 100 rows (fewer
// for the smallest size), the realistic "modest batch, large model" shape.
func benchShape(size int) (n, d int) {
	n = 100
	if size < 1e4 {
		n = 10
	}
	return n, size / n
}

func benchData32(size int) []float32 {
	rng := rand.New(rand.NewPCG(1, 2))
	x := make([]float32, size)
	for i := range x {
		x[i] = float32(rng.NormFloat64())
	}
	return x
}

var sinkF float64

// plainSum32 is the reference pass: the fastest plain float32 sum we could
// write in Go (8 independent float32 accumulators, no conversion).
func plainSum32(x []float32) float64 {
	var a0, a1, a2, a3, a4, a5, a6, a7 float32
	j := 0
	for ; j+8 <= len(x); j += 8 {
		v := x[j : j+8 : j+8]
		a0 += v[0]
		a1 += v[1]
		a2 += v[2]
		a3 += v[3]
		a4 += v[4]
		a5 += v[5]
		a6 += v[6]
		a7 += v[7]
	}
	for ; j < len(x); j++ {
		a0 += x[j]
	}
	return float64(((a0 + a1) + (a2 + a3)) + ((a4 + a5) + (a6 + a7)))
}

// gonumColBlock is the column block of gonumKernel32 (the pure-Go
// kernel's original block: the float64 sums stay in L1).
const gonumColBlock = 2048

// gonumKernel32 composes the kernel from gonum: Dsdot (SSE, float64
// accumulation) for each row's squared norm, then a loop for the sums.
func gonumKernel32(sum []float64, grads []float32, n, d int) float64 {
	var impl gonum.Implementation
	var sq float64
	for j0 := 0; j0 < d; j0 += gonumColBlock {
		w := min(gonumColBlock, d-j0)
		s := sum[j0 : j0+w]
		for off := j0; off < n*d; off += d {
			row := grads[off : off+w]
			sq += impl.Dsdot(w, row, 1, row, 1)
			for j, x := range row {
				s[j] += float64(x)
			}
		}
	}
	return sq
}

func benchmarkKernel(b *testing.B, size int, kind string) {
	n, d := benchShape(size)
	x := benchData32(n * d)
	sum := make([]float64, d)
	b.SetBytes(int64(4 * n * d))
	b.ResetTimer()
	for range b.N {
		switch kind {
		case "plain":
			sinkF += plainSum32(x)
		case "gdiv":
			clear(sum)
			sinkF += accumulateRows(sum, x, n, d)
		case "gdiv-purego":
			clear(sum)
			sinkF += accumulateRowsGo(sum, x, n, d)
		case "gonum":
			clear(sum)
			sinkF += gonumKernel32(sum, x, n, d)
		case "stats":
			st, err := ComputeStats32(x, n, d)
			if err != nil {
				b.Fatal(err)
			}
			sinkF += st.Diversity
		}
	}
}

func BenchmarkKernel(b *testing.B) {
	for _, size := range []int{1e3, 1e4, 1e5, 1e6, 1e7, 1e8} {
		for _, kind := range []string{"plain", "gdiv", "gdiv-purego", "gonum", "stats"} {
			b.Run(fmt.Sprintf("size=%.0e/%s", float64(size), kind), func(b *testing.B) {
				benchmarkKernel(b, size, kind)
			})
		}
	}
}
