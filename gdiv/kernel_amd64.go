//go:build amd64 && !purego

package gdiv

import "golang.org/x/sys/cpu"

//go:generate sh -c "python3 ../internal/asmgen/kernel_amd64.py > kernel_amd64.s"

// useAVX2 selects the assembly kernels of kernel_amd64.s. x/sys/cpu's
// HasAVX2 includes the check that the OS saves the ymm registers.
var useAVX2 = cpu.X86.HasAVX2 && cpu.X86.HasFMA

// The assembly kernels (kernel_amd64.s). Each processes n rows of w columns
// starting at x (row stride `stride` elements), adds them into s[0:w] and
// returns the sum of squares of the elements read. They do not check bounds.

//go:noescape
func rowsF32AVX2(s *float64, x *float32, n, stride, w int) float64

//go:noescape
func rowsF64AVX2(s *float64, x *float64, n, stride, w int) float64

//go:noescape
func diffF32AVX2(s *float64, a, b *float32, n, stride, w int) float64

//go:noescape
func diffF64AVX2(s *float64, a, b *float64, n, stride, w int) float64

func accumulateRowsF32AVX2(sum []float64, x []float32, n, d int) float64 {
	checkKernelShape(len(sum), len(x), n, d)
	if n == 0 || d == 0 {
		return 0
	}
	var sq float64
	for j0 := 0; j0 < d; j0 += asmColBlock {
		sq += rowsF32AVX2(&sum[j0], &x[j0], n, d, min(asmColBlock, d-j0))
	}
	return sq
}

func accumulateRowsF64AVX2(sum []float64, x []float64, n, d int) float64 {
	checkKernelShape(len(sum), len(x), n, d)
	if n == 0 || d == 0 {
		return 0
	}
	var sq float64
	for j0 := 0; j0 < d; j0 += asmColBlock {
		sq += rowsF64AVX2(&sum[j0], &x[j0], n, d, min(asmColBlock, d-j0))
	}
	return sq
}

func accumulateDiffRowsF32AVX2(sum []float64, a, b []float32, n, d int) float64 {
	checkKernelShape(len(sum), len(a), n, d)
	checkKernelShape(len(sum), len(b), n, d)
	if n == 0 || d == 0 {
		return 0
	}
	var sq float64
	for j0 := 0; j0 < d; j0 += asmColBlock {
		sq += diffF32AVX2(&sum[j0], &a[j0], &b[j0], n, d, min(asmColBlock, d-j0))
	}
	return sq
}

func accumulateDiffRowsF64AVX2(sum []float64, a, b []float64, n, d int) float64 {
	checkKernelShape(len(sum), len(a), n, d)
	checkKernelShape(len(sum), len(b), n, d)
	if n == 0 || d == 0 {
		return 0
	}
	var sq float64
	for j0 := 0; j0 < d; j0 += asmColBlock {
		sq += diffF64AVX2(&sum[j0], &a[j0], &b[j0], n, d, min(asmColBlock, d-j0))
	}
	return sq
}
