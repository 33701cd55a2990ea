package gdiv

import (
	"fmt"
	"math/rand/v2"
	"testing"
)

// Benchmarks of each mechanism's Apply32 on float32 n×d buffers of 1e3,
// 1e5 and 1e7 elements (n = 10 rows for the smallest size, 100 otherwise),
// reporting coordinates per second. The buffer is modified in place from
// one iteration to the next: the cost of Dropout (branch-free masks) and
// Langevin does not depend on the values, so they run on it as it is;
// Quantize's does (repeated quantization collapses rows onto few nonzero
// coordinates, which draw no random numbers), so for it each iteration
// first restores the buffer with copy, and that copy is included in the
// time.

func mechBenchShape(size int) (n, d int) {
	n = 100
	if size < 1e4 {
		n = 10
	}
	return n, size / n
}

func benchmarkApply(b *testing.B, m Mechanism, size int) {
	n, d := mechBenchShape(size)
	rng := rand.New(rand.NewPCG(1, 2))
	src := make([]float32, n*d)
	for i := range src {
		src[i] = float32(rng.NormFloat64())
	}
	x := append([]float32(nil), src...)
	_, restore := m.(Quantize)
	b.SetBytes(int64(4 * n * d))
	b.ResetTimer()
	for range b.N {
		if restore {
			copy(x, src)
		}
		if err := m.Apply32(x, n, d, rng); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(n*d)*float64(b.N)/b.Elapsed().Seconds(), "coords/s")
}

// BenchmarkApply prints, per size, one column per mechanism (coords/s),
// so `make bench` shows them side by side.
func BenchmarkApply(b *testing.B) {
	mechs := []struct {
		name string
		m    Mechanism
	}{
		{"dropout-0.5", Dropout{P: 0.5}},
		{"dropout-0.1-rescaled", Dropout{P: 0.1, Rescale: true}},
		{"langevin", Langevin{Std: 0.1}},
		{"quantize-1", Quantize{}},
		{"quantize-16", Quantize{Levels: 16}},
	}
	for _, size := range []int{1e3, 1e5, 1e7} {
		for _, mc := range mechs {
			b.Run(fmt.Sprintf("size=%.0e/%s", float64(size), mc.name), func(b *testing.B) {
				benchmarkApply(b, mc.m, size)
			})
		}
	}
}
