//go:build unix && cgo

package pybridge

import (
	"math"
	"math/rand/v2"
	"strings"
	"syscall"
	"testing"
	"unsafe"

	"github.com/apache/arrow-go/v18/arrow"
	"github.com/apache/arrow-go/v18/arrow/array"
	"github.com/apache/arrow-go/v18/arrow/cdata"
	"github.com/apache/arrow-go/v18/arrow/memory"
	"github.com/apache/arrow-go/v18/arrow/memory/mallocator"

	"github.com/gdiv/gdiv/gdiv"
)

// The tests hand the exports foreign (non-Go) memory, as Python does:
// anonymous mmap regions, freed at the end of each test, and Arrow arrays
// allocated with the C allocator (mallocator), as another process's producer
// would hand over. So they also pass with GOEXPERIMENT=cgocheck2 and -race.

func foreign(t *testing.T, bytes int) []byte {
	t.Helper()
	if bytes == 0 {
		bytes = 8
	}
	b, err := syscall.Mmap(-1, 0, bytes, syscall.PROT_READ|syscall.PROT_WRITE, syscall.MAP_ANON|syscall.MAP_PRIVATE)
	if err != nil {
		t.Fatalf("mmap: %v", err)
	}
	t.Cleanup(func() { _ = syscall.Munmap(b) })
	return b
}

func foreign64(t *testing.T, vals []float64) (uintptr, []float64) {
	b := foreign(t, 8*len(vals))
	f := unsafe.Slice((*float64)(unsafe.Pointer(&b[0])), len(vals))
	copy(f, vals)
	return uintptr(unsafe.Pointer(&b[0])), f
}

func foreign32(t *testing.T, vals []float32) (uintptr, []float32) {
	b := foreign(t, 4*len(vals))
	f := unsafe.Slice((*float32)(unsafe.Pointer(&b[0])), len(vals))
	copy(f, vals)
	return uintptr(unsafe.Pointer(&b[0])), f
}

func randGrads(n, d int, seed uint64) []float64 {
	rng := rand.New(rand.NewPCG(seed, 1))
	g := make([]float64, n*d)
	for i := range g {
		g[i] = rng.NormFloat64() + 0.5
	}
	return g
}

func statsOf(o []float64) gdiv.Stats {
	return gdiv.Stats{N: int(o[0]), Dim: int(o[1]), SumSqNorms: o[2], SqNormOfSum: o[3], M2: o[4], G: o[5], Diversity: o[6], BatchBound: o[7], NoiseScale: o[8]}
}

func TestStatsBuffersMatchCore(t *testing.T) {
	const n, d = 37, 11
	g := randGrads(n, d, 1)
	want, err := gdiv.ComputeStats(g, n, d)
	if err != nil {
		t.Fatal(err)
	}
	outAddr, out := foreign64(t, make([]float64, statsLen))
	addr, _ := foreign64(t, g)
	if _, err := Stats(outAddr, kindF64, addr, 0, n, d); err != nil {
		t.Fatal(err)
	}
	if got := statsOf(out); got != want {
		t.Errorf("float64: got %+v, want %+v", got, want)
	}

	g32 := make([]float32, len(g))
	for i, v := range g {
		g32[i] = float32(v)
	}
	want32, _ := gdiv.ComputeStats32(g32, n, d)
	addr32, _ := foreign32(t, g32)
	if _, err := Stats(outAddr, kindF32, addr32, 0, n, d); err != nil {
		t.Fatal(err)
	}
	if got := statsOf(out); got != want32 {
		t.Errorf("float32: got %+v, want %+v", got, want32)
	}
}

func TestErrorsAreTagged(t *testing.T) {
	outAddr, _ := foreign64(t, make([]float64, statsLen))
	zeros, _ := foreign64(t, make([]float64, 6))
	nan, _ := foreign64(t, []float64{1, math.NaN()})
	cases := []struct {
		name string
		call func() error
		tag  string
	}{
		{"empty", func() error { _, err := Stats(outAddr, kindF64, zeros, 0, 0, 3); return err }, "[empty] "},
		{"zero dim", func() error { _, err := Stats(outAddr, kindF64, zeros, 0, 3, 0); return err }, "[zero_dim] "},
		{"all zero", func() error { _, err := Stats(outAddr, kindF64, zeros, 0, 2, 3); return err }, "[all_zero] "},
		{"non-finite", func() error { _, err := Stats(outAddr, kindF64, nan, 0, 1, 2); return err }, "[non_finite] "},
		{"too few", func() error { _, err := EstimateSums(0, outAddr, 1, 0, 1, 1); return err }, "[too_few] "},
		{"param", func() error { _, err := MechanismValidate(mechDropout, 1, 0, false); return err }, "[param] "},
		{"shape", func() error { _, err := Stats(outAddr, kindF64, zeros, 0, -1, 3); return err }, "[shape] "},
		{"kind", func() error { _, err := Stats(outAddr, 7, zeros, 0, 1, 1); return err }, "[param] "},
		{"misaligned", func() error { _, err := Stats(outAddr, kindF64, zeros+1, 0, 1, 1); return err }, "[param] "},
		{"null address", func() error { _, err := Stats(outAddr, kindF64, 0, 0, 1, 1); return err }, "[param] "},
		{"overflow", func() error { _, err := StatsFromSums(outAddr, 2, 1, math.Inf(1), 1); return err }, "["},
	}
	for _, c := range cases {
		err := c.call()
		if err == nil || !strings.HasPrefix(err.Error(), c.tag) {
			t.Errorf("%s: got %v, want an error starting %q", c.name, err, c.tag)
		}
	}
}

func TestPanicBecomesInternalError(t *testing.T) {
	addr, _ := foreign64(t, []float64{1, 2, 3, 4})
	// A null result buffer panics in outBuf; the export must recover.
	_, err := Stats(0, kindF64, addr, 0, 2, 2)
	if err == nil || !strings.HasPrefix(err.Error(), "[internal] gdiv: internal error (Go panic") {
		t.Fatalf("got %v, want an [internal] panic error", err)
	}
}

func TestMechanismApplyWritesInPlace(t *testing.T) {
	const n, d = 20, 30
	g := randGrads(n, d, 2)
	addr, buf := foreign64(t, g)
	if _, err := MechanismApply(mechDropout, 0.5, 0, false, kindF64, addr, n, d, 9); err != nil {
		t.Fatal(err)
	}
	want := append([]float64(nil), g...)
	if err := (gdiv.Dropout{P: 0.5}).Apply(want, n, d, newRand(9)); err != nil {
		t.Fatal(err)
	}
	for i := range want {
		if buf[i] != want[i] {
			t.Fatalf("value %d: got %v, want %v (the same draws as Dropout.Apply with PCG(9, 0))", i, buf[i], want[i])
		}
	}
	if _, err := MechanismApply(mechLangevin, 0.5, 0, false, kindArrow, addr, n, d, 1); err == nil || !strings.HasPrefix(err.Error(), "[type] ") {
		t.Errorf("Arrow in place: got %v, want a [type] error", err)
	}
}

func TestEstimateNormsMatchesEstimateBatch(t *testing.T) {
	const b, d = 16, 7
	g := randGrads(b, d, 3)
	st, _ := gdiv.ComputeStats(g, b, d)
	want, _ := gdiv.EstimateBatch(b, st.SumSqNorms, st.SqNormOfSum)
	norms := make([]float64, b)
	sum := make([]float64, d)
	for i := 0; i < b; i++ {
		for j := 0; j < d; j++ {
			v := g[i*d+j]
			norms[i] += v * v
			sum[j] += v
		}
	}
	nAddr, _ := foreign64(t, norms)
	gAddr, _ := foreign64(t, sum)
	outAddr, out := foreign64(t, make([]float64, estimateLen))
	if _, err := EstimateNorms(0, outAddr, 0, kindF64, nAddr, b, kindF64, gAddr, d, false); err != nil {
		t.Fatal(err)
	}
	if got := out[1]; math.Abs(got-want.M2) > 1e-12*want.M2 {
		t.Errorf("m2: got %v, want %v", got, want.M2)
	}
	if got := out[2]; math.Abs(got-want.G) > 1e-9*math.Abs(want.G) {
		t.Errorf("g: got %v, want %v", got, want.G)
	}
}

func TestEstimatorStateRoundTrip(t *testing.T) {
	stAddr, st := foreign64(t, []float64{0.9, 0, 0, 0, 0})
	outAddr, out := foreign64(t, make([]float64, 2*estimateLen))
	var e gdiv.Estimator
	e.Beta = 0.9
	for k := 0; k < 5; k++ {
		sq := float64(10 + k)
		if _, err := EstimateSums(stAddr, outAddr, 8, 0, 20, sq); err != nil {
			t.Fatal(err)
		}
		est, _ := gdiv.EstimateBatch(8, 20, sq)
		want, _ := e.Update(est)
		if out[6+3] != want.BatchBound || int(st[1]) != k+1 {
			t.Fatalf("step %d: smoothed bound %v, want %v; steps %v", k, out[9], want.BatchBound, st[1])
		}
	}
	st[0] = 1.5 // invalid beta
	if _, err := EstimatorSmoothed(stAddr, outAddr); err == nil || !strings.HasPrefix(err.Error(), "[param:beta] ") {
		t.Errorf("bad state: got %v, want a [param:beta] error", err)
	}
}

// arrowExport builds a FixedSizeList<float64>[d] array from g with a checked
// allocator, exports it into foreign C structs and returns their addresses
// and the allocator (which must be empty once the consumer released).
func arrowExport(t *testing.T, g []float64, d int, slice [2]int, nullRow int) (uintptr, uintptr, *memory.CheckedAllocator) {
	t.Helper()
	mem := memory.NewCheckedAllocator(mallocator.NewMallocator())
	bld := array.NewFixedSizeListBuilder(mem, int32(d), arrow.PrimitiveTypes.Float64)
	vb := bld.ValueBuilder().(*array.Float64Builder)
	for i := 0; i < len(g)/d; i++ {
		if i == nullRow {
			bld.AppendNull() // also appends d (null) child values
			continue
		}
		bld.Append(true)
		vb.AppendValues(g[i*d:(i+1)*d], nil)
	}
	arr := bld.NewArray()
	bld.Release()
	exp := arr
	if slice[1] > 0 {
		exp = array.NewSlice(arr, int64(slice[0]), int64(slice[1]))
		arr.Release()
	}
	cmem := foreign(t, int(unsafe.Sizeof(cdata.CArrowArray{})+unsafe.Sizeof(cdata.CArrowSchema{})))
	carr := (*cdata.CArrowArray)(unsafe.Pointer(&cmem[0]))
	csch := (*cdata.CArrowSchema)(unsafe.Pointer(&cmem[unsafe.Sizeof(cdata.CArrowArray{})]))
	cdata.ExportArrowArray(exp, carr, csch)
	exp.Release() // the export holds its own reference until released
	return uintptr(unsafe.Pointer(carr)), uintptr(unsafe.Pointer(csch)), mem
}

func TestArrowStatsZeroCopyAndReleased(t *testing.T) {
	const n, d = 25, 4
	g := randGrads(n, d, 4)
	outAddr, out := foreign64(t, make([]float64, statsLen))
	for _, sl := range [][2]int{{0, 0}, {3, 17}, {24, 25}} {
		a, s, mem := arrowExport(t, g, d, sl, -1)
		lo, hi := 0, n
		if sl[1] > 0 {
			lo, hi = sl[0], sl[1]
		}
		want, _ := gdiv.ComputeStats(g[lo*d:hi*d], hi-lo, d)
		if _, err := Stats(outAddr, kindArrow, a, s, 0, 0); err != nil {
			t.Fatal(err)
		}
		if got := statsOf(out); got != want {
			t.Errorf("slice %v: got %+v, want %+v", sl, got, want)
		}
		mem.AssertSize(t, 0) // the consumer released the array: nothing left
	}
}

func TestArrowErrorsRelease(t *testing.T) {
	g := randGrads(6, 3, 5)
	outAddr, _ := foreign64(t, make([]float64, statsLen))
	a, s, mem := arrowExport(t, g, 3, [2]int{}, 2)
	_, err := Stats(outAddr, kindArrow, a, s, 0, 0)
	if err == nil || !strings.HasPrefix(err.Error(), "[null] ") {
		t.Errorf("null row: got %v, want a [null] error", err)
	}
	mem.AssertSize(t, 0)

	// A plain float64 array is not a matrix.
	mem2 := memory.NewCheckedAllocator(mallocator.NewMallocator())
	fb := array.NewFloat64Builder(mem2)
	fb.AppendValues([]float64{1, 2}, nil)
	arr := fb.NewArray()
	fb.Release()
	cmem := foreign(t, int(unsafe.Sizeof(cdata.CArrowArray{})+unsafe.Sizeof(cdata.CArrowSchema{})))
	carr := (*cdata.CArrowArray)(unsafe.Pointer(&cmem[0]))
	csch := (*cdata.CArrowSchema)(unsafe.Pointer(&cmem[unsafe.Sizeof(cdata.CArrowArray{})]))
	cdata.ExportArrowArray(arr, carr, csch)
	arr.Release()
	_, err = Stats(outAddr, kindArrow, uintptr(unsafe.Pointer(carr)), uintptr(unsafe.Pointer(csch)), 0, 0)
	if err == nil || !strings.HasPrefix(err.Error(), "[type] ") || !strings.Contains(err.Error(), "float64") {
		t.Errorf("plain array: got %v, want a [type] error naming float64", err)
	}
	mem2.AssertSize(t, 0)
}

func TestArrowViewAndCopy(t *testing.T) {
	g := randGrads(5, 2, 6)
	infoAddr, info := foreign64(t, make([]float64, 3))
	a, s, mem := arrowExport(t, g, 2, [2]int{1, 4}, -1)
	p, err := ArrowView(infoAddr, a, s)
	if err != nil || p == 0 || info[0] != 3 || info[1] != 2 || info[2] != kindF64 {
		t.Fatalf("ArrowView: %v %#x %v", err, p, info)
	}
	mem.AssertSize(t, 0)
	a, s, mem = arrowExport(t, g, 2, [2]int{1, 4}, -1)
	dstAddr, dst := foreign64(t, make([]float64, 6))
	if k, err := ArrowCopy(dstAddr, kindF64, 6, a, s); err != nil || k != 6 {
		t.Fatalf("ArrowCopy: %v %v", k, err)
	}
	for i, v := range dst {
		if v != g[2+i] {
			t.Fatalf("copy %d: got %v want %v", i, v, g[2+i])
		}
	}
	mem.AssertSize(t, 0)
}
