//go:build !amd64 || purego

package gdiv

// Without the amd64 assembly the kernel is the pure-Go one (kernel.go).
// useAVX2 is a constant false, so the dispatch in accumulateRows compiles
// away and the stubs below are never called.

const useAVX2 = false

func accumulateRowsF32AVX2(sum []float64, x []float32, n, d int) float64 { panic("unreachable") }
func accumulateRowsF64AVX2(sum []float64, x []float64, n, d int) float64 { panic("unreachable") }
func accumulateDiffRowsF32AVX2(sum []float64, a, b []float32, n, d int) float64 {
	panic("unreachable")
}
func accumulateDiffRowsF64AVX2(sum []float64, a, b []float64, n, d int) float64 {
	panic("unreachable")
}
