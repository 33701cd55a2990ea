package gdiv

// The statistics kernel: one pass over a row-major n×d buffer that adds every
// row into a float64 running sum and returns Σ‖g_i‖².
//
// Two implementations share the same loop structure:
//
//   - on amd64 with AVX2 and FMA (kernel_amd64.go, kernel_amd64.s), assembly
//     that widens four float32 at a time to float64 (VCVTPS2PD) and keeps
//     eight independent FMA accumulators for the squared norms;
//   - everywhere else, and with the purego build tag, the pure-Go loops
//     below (accumulateRowsGo, accumulateDiffRowsGo).
//
// Both process the columns in blocks so that the float64 partial sums of a
// block stay in cache while all n rows stream through it (without blocking,
// a large d makes the sum vector round-trip through memory once per row),
// and both take the rows four at a time: the four elements of a column are
// added to the partial sum in registers and the partial sum is loaded and
// stored once per four rows. The additions into the sum happen in row order
// in both, so the sum vector is bit-for-bit that of the plain scalar loop;
// only Σ‖g_i‖², whose terms are grouped into several independent
// accumulators, may differ from it by float64 rounding.
//
// The benchmark BenchmarkKernel compares the kernel with a plain float32 sum
// of the buffer (the memory-bandwidth reference) and with a kernel composed
// from gonum; see `make bench`.

// colBlock is the column block of the pure-Go kernel: 8192 float64 partial
// sums (64 KiB) stay in L2 while the rows stream through in 32 KiB (float32)
// segments. With the rows taken four at a time this measured ≈10 GB/s at
// every size (the earlier row-at-a-time loop with 2048-column blocks: ≈10
// in cache, ≈5.3 GB/s at 1e7–1e8 elements).
const colBlock = 8192

// asmColBlock is the column block of the assembly kernels
// (kernel_amd64.go): 32768 float64 partial sums (256 KiB) stay in L2 while
// each row segment (128 KiB of float32) is read as one long contiguous
// stream, which the hardware prefetchers follow well; with the rows taken
// four at a time the partial sums cost one load and one store per four
// input elements. On the development machine (AMD EPYC, 1 MiB L2 per core)
// 32768 beat 16384 by ≈10% at 1e7–1e8 elements and 2048–8192 by 25–45%;
// 49152 and 65536 were no better.
const asmColBlock = 32768

// accumulateRows adds each of the n rows of grads (row-major, n×d) into sum
// (len d) and returns the sum of their squared norms, accumulated in float64.
func accumulateRows[T float32 | float64](sum []float64, grads []T, n, d int) float64 {
	if useAVX2 {
		switch g := any(grads).(type) {
		case []float32:
			return accumulateRowsF32AVX2(sum, g, n, d)
		case []float64:
			return accumulateRowsF64AVX2(sum, g, n, d)
		}
	}
	return accumulateRowsGo(sum, grads, n, d)
}

// AccumulateRows adds each of the n rows of grads (row-major, n×d) into sum
// (len d) and returns the sum of their squared norms, accumulated in float64
// by the same kernels (AVX2 on amd64) as ComputeStats: the building block
// of a trainer that sums per-example gradients one at a time. It panics if
// n < 0, d < 0, len(sum) < d or len(grads) < n·d.
func AccumulateRows[T float32 | float64](sum []float64, grads []T, n, d int) float64 {
	return accumulateRows(sum, grads, n, d)
}

// accumulateDiffRows is accumulateRows for the row-wise differences a − b,
// formed in float64.
func accumulateDiffRows[T float32 | float64](sum []float64, a, b []T, n, d int) float64 {
	if useAVX2 {
		switch a := any(a).(type) {
		case []float32:
			return accumulateDiffRowsF32AVX2(sum, a, any(b).([]float32), n, d)
		case []float64:
			return accumulateDiffRowsF64AVX2(sum, a, any(b).([]float64), n, d)
		}
	}
	return accumulateDiffRowsGo(sum, a, b, n, d)
}

// accumulateRowsGo is the pure-Go accumulateRows.
func accumulateRowsGo[T float32 | float64](sum []float64, grads []T, n, d int) float64 {
	checkKernelShape(len(sum), len(grads), n, d)
	var sq float64
	for j0 := 0; j0 < d; j0 += colBlock {
		w := min(colBlock, d-j0)
		s := sum[j0 : j0+w]
		off := j0
		i := 0
		for ; i+4 <= n; i += 4 {
			sq += rowKernel4(s, grads[off:off+w], grads[off+d:off+d+w],
				grads[off+2*d:off+2*d+w], grads[off+3*d:off+3*d+w])
			off += 4 * d
		}
		for ; i < n; i++ {
			sq += rowKernel(s, grads[off:off+w])
			off += d
		}
	}
	return sq
}

// rowKernel4 adds the rows x0..x3 (each len(s)) into s, in that order, and
// returns the sum of their squared norms. One column per iteration, with no
// bounds checks in the loop, measured faster than unrolling by two columns.
func rowKernel4[T float32 | float64](s []float64, x0, x1, x2, x3 []T) float64 {
	x0 = x0[:len(s)]
	x1 = x1[:len(s)]
	x2 = x2[:len(s)]
	x3 = x3[:len(s)]
	var a0, a1, a2, a3 float64
	for j := range s {
		u0, u1, u2, u3 := float64(x0[j]), float64(x1[j]), float64(x2[j]), float64(x3[j])
		a0 += u0 * u0
		a1 += u1 * u1
		a2 += u2 * u2
		a3 += u3 * u3
		s[j] = s[j] + u0 + u1 + u2 + u3
	}
	return (a0 + a1) + (a2 + a3)
}

// rowKernel adds row into s (len(s) == len(row)) and returns ‖row‖².
func rowKernel[T float32 | float64](s []float64, row []T) float64 {
	s = s[:len(row)]
	var a0, a1, a2, a3 float64
	j := 0
	for ; j+4 <= len(row); j += 4 {
		x := row[j : j+4 : j+4]
		t := s[j : j+4 : j+4]
		x0, x1, x2, x3 := float64(x[0]), float64(x[1]), float64(x[2]), float64(x[3])
		a0 += x0 * x0
		a1 += x1 * x1
		a2 += x2 * x2
		a3 += x3 * x3
		t[0] += x0
		t[1] += x1
		t[2] += x2
		t[3] += x3
	}
	for ; j < len(row); j++ {
		x := float64(row[j])
		a0 += x * x
		s[j] += x
	}
	return (a0 + a1) + (a2 + a3)
}

// accumulateDiffRowsGo is the pure-Go accumulateDiffRows.
func accumulateDiffRowsGo[T float32 | float64](sum []float64, a, b []T, n, d int) float64 {
	checkKernelShape(len(sum), len(a), n, d)
	checkKernelShape(len(sum), len(b), n, d)
	var sq float64
	for j0 := 0; j0 < d; j0 += colBlock {
		w := min(colBlock, d-j0)
		s := sum[j0 : j0+w]
		for off := j0; off < n*d; off += d {
			sq += diffRowKernel(s, a[off:off+w], b[off:off+w])
		}
	}
	return sq
}

// diffRowKernel adds ra − rb into s (all of one length) and returns ‖ra − rb‖².
func diffRowKernel[T float32 | float64](s []float64, ra, rb []T) float64 {
	s = s[:len(ra)]
	rb = rb[:len(ra)]
	var a0, a1, a2, a3 float64
	j := 0
	for ; j+4 <= len(ra); j += 4 {
		x := ra[j : j+4 : j+4]
		y := rb[j : j+4 : j+4]
		t := s[j : j+4 : j+4]
		x0 := float64(x[0]) - float64(y[0])
		x1 := float64(x[1]) - float64(y[1])
		x2 := float64(x[2]) - float64(y[2])
		x3 := float64(x[3]) - float64(y[3])
		a0 += x0 * x0
		a1 += x1 * x1
		a2 += x2 * x2
		a3 += x3 * x3
		t[0] += x0
		t[1] += x1
		t[2] += x2
		t[3] += x3
	}
	for ; j < len(ra); j++ {
		x := float64(ra[j]) - float64(rb[j])
		a0 += x * x
		s[j] += x
	}
	return (a0 + a1) + (a2 + a3)
}

// checkKernelShape panics unless a kernel may read an n×d buffer of length
// bufLen and write a sum of length sumLen: the assembly kernels do not check
// bounds themselves.
func checkKernelShape(sumLen, bufLen, n, d int) {
	if n < 0 || d < 0 || sumLen < d || bufLen < n*d {
		panic("gdiv: kernel shape mismatch")
	}
}
