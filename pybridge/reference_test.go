//go:build unix && cgo

package pybridge

import (
	"math"
	"math/rand/v2"
	"reflect"
	"strings"
	"testing"
	"unsafe"

	"github.com/gdiv/gdiv/gdiv"
	"github.com/gdiv/gdiv/gdiv/data"
	"github.com/gdiv/gdiv/gdiv/train"
)

// The codes that cross as integers are the values of the core's enums; the
// Python package's name tables rely on it.
func TestCodesAreCoreEnums(t *testing.T) {
	for name, want := range map[string]int{"none": 0, "linear": 1, "sqrt": 2, "adascale": 3} {
		if r, err := gdiv.ParseLRRule(name); err != nil || int(r) != want {
			t.Errorf("LR rule %q = %d, %v; want code %d", name, r, err, want)
		}
	}
	for name, want := range map[string]int{"sum": 0, "mean": 1} {
		if r, err := train.ParseStepRule(name); err != nil || int(r) != want {
			t.Errorf("step rule %q = %d, %v; want code %d", name, r, err, want)
		}
	}
	for name, want := range map[string]int{"replacement": 0, "shuffle": 1} {
		if r, err := train.ParseSampling(name); err != nil || int(r) != want {
			t.Errorf("sampling %q = %d, %v; want code %d", name, r, err, want)
		}
	}
	for name, want := range map[string]int{"tanh": 0, "relu": 1} {
		if r, err := train.ParseActivation(name); err != nil || int(r) != want {
			t.Errorf("activation %q = %d, %v; want code %d", name, r, err, want)
		}
	}
}

func policyBuf(t *testing.T, p gdiv.BatchSizePolicy) uintptr {
	addr, buf := foreign64(t, make([]float64, policyLen))
	writePolicy(buf, p)
	return addr
}

func TestPolicyNextMatchesCore(t *testing.T) {
	policies := []gdiv.BatchSizePolicy{
		{},
		{Delta: 0.5, MinBatch: 4, MaxBatch: 200, MultipleOf: 4, Hysteresis: 0.1, MaxGrowth: 1.5, Warmup: 2, LR: gdiv.LRSqrt},
		{MaxGrowth: math.Inf(1), MaxBatch: 64},
	}
	rng := rand.New(rand.NewPCG(1, 2))
	for pi, p := range policies {
		addr := policyBuf(t, p)
		if _, err := PolicyValidate(addr); err != nil {
			t.Fatalf("policy %d: %v", pi, err)
		}
		for range 2000 {
			cur := 1 + rng.IntN(300)
			step := rng.IntN(4)
			bs := math.Exp(rng.Float64() * 10)
			noSignal := rng.IntN(10) == 0
			est := gdiv.Estimate{M2: 1, G: 1 / bs, BatchBound: bs, NoiseScale: bs - 1, NoSignal: noSignal}
			if noSignal {
				est.BatchBound = math.Inf(1)
			}
			got, err := PolicyNext(addr, cur, est.M2, est.G, est.BatchBound, est.NoSignal, step)
			if want := p.Next(cur, est, step); err != nil || got != want {
				t.Fatalf("policy %d: PolicyNext(%d, %v, %d) = %d, %v; want %d", pi, cur, est, step, got, err, want)
			}
		}
	}
}

func TestPolicyErrors(t *testing.T) {
	bad := func(p gdiv.BatchSizePolicy) uintptr { return policyBuf(t, p) }
	cases := []struct {
		name string
		call func() error
		want string
	}{
		{"delta", func() error { _, err := PolicyValidate(bad(gdiv.BatchSizePolicy{Delta: -1})); return err }, "delta"},
		{"min above max", func() error {
			_, err := PolicyValidate(bad(gdiv.BatchSizePolicy{MinBatch: 9, MaxBatch: 3}))
			return err
		}, "min batch = 9 > max batch = 3"},
		{"lr rule", func() error { _, err := PolicyValidate(bad(gdiv.BatchSizePolicy{LR: 9})); return err }, "LRRule(9)"},
		{"non-integer", func() error {
			a, buf := foreign64(t, make([]float64, policyLen))
			buf[1] = 2.5
			_, err := PolicyValidate(a)
			return err
		}, "min batch = 2.5"},
		{"current", func() error { _, err := PolicyNext(bad(gdiv.BatchSizePolicy{}), 0, 1, 1, 4, false, 0); return err }, "current batch = 0"},
		{"step", func() error { _, err := PolicyNext(bad(gdiv.BatchSizePolicy{}), 4, 1, 1, 4, false, -1); return err }, "step = -1"},
		{"NaN", func() error {
			_, err := PolicyNext(bad(gdiv.BatchSizePolicy{}), 4, 1, 1, math.NaN(), false, 0)
			return err
		}, "NaN"},
		{"negative", func() error { _, err := PolicyNext(bad(gdiv.BatchSizePolicy{}), 8, 1, 1, -5, false, 0); return err }, "batch_bound = -5"},
		{"scale rule", func() error { _, err := PolicyScaleLR(9, 0.1, 2, 4); return err }, "LRRule(9)"},
		{"scale batch", func() error { _, err := PolicyScaleLR(1, 0.1, 0, 4); return err }, "batches 0 → 4"},
		{"scale lr", func() error { _, err := PolicyScaleLR(1, math.NaN(), 2, 4); return err }, "lr = NaN"},
	}
	for _, c := range cases {
		err := c.call()
		if err == nil || errTag(err) != "param" || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: got %v, want a [param] error mentioning %q", c.name, err, c.want)
		}
	}
	if got, err := PolicyScaleLR(int(gdiv.LRSqrt), 0.1, 32, 128); err != nil || got != gdiv.ScaleLR(gdiv.LRSqrt, 0.1, 32, 128) {
		t.Errorf("PolicyScaleLR = %v, %v", got, err)
	}
}

// newRefData returns a small random data set, in foreign memory too, and
// the spec of the problem prob over it.
func newRefData(t *testing.T, n, d, classes int, prob int, hidden int) (ds *data.Dataset, spec, x, y uintptr) {
	t.Helper()
	rng := rand.New(rand.NewPCG(7, 7))
	ds = &data.Dataset{X: make([]float64, n*d), Y: make([]float64, n), N: n, D: d, Classes: classes}
	for i := range ds.X {
		ds.X[i] = rng.NormFloat64()
	}
	for i := range ds.Y {
		if classes > 0 {
			ds.Y[i] = float64(rng.IntN(classes))
		} else {
			ds.Y[i] = rng.NormFloat64()
		}
	}
	spec, _ = foreign64(t, []float64{float64(prob), 1e-3, float64(hidden), 0, 1, float64(classes)})
	x, _ = foreign64(t, ds.X)
	y, _ = foreign64(t, ds.Y)
	return ds, spec, x, y
}

func TestTrainMatchesSGD(t *testing.T) {
	const n, d, k, h = 40, 5, 3, 4
	ds, spec, x, y := newRefData(t, n, d, k, probMLP, h)
	prob, err := train.NewMLP(ds, h, train.Tanh, 1e-3)
	if err != nil {
		t.Fatal(err)
	}
	np := prob.NumParams()
	pol := gdiv.BatchSizePolicy{MaxBatch: 16, LR: gdiv.LRLinear}
	s := train.SGDSettings{LR: 0.05, Step: train.MeanStep, Policy: &pol, Examples: 200, Sampling: train.Shuffle,
		Mechanism: gdiv.Dropout{P: 0.25}, Seed: 11, EstimatorBeta: 0.5, EvalEvery: 3, RecordIndices: true, LRWarmupSteps: 3}
	want, err := train.SGD(prob, prob.InitialWeights(rand.New(rand.NewPCG(11, train.InitStream))), s)
	if err != nil {
		t.Fatal(err)
	}

	settings, _ := foreign64(t, []float64{0.05, 1, 0, 0, 200, 1, 0, 0.5, 3, 3})
	wAddr, w := foreign64(t, make([]float64, np))
	hAddr, hist := foreign64(t, make([]float64, 200*historyLen))
	ibuf := foreign(t, 8*400)
	iAddr := uintptr(unsafe.Pointer(&ibuf[0]))
	sAddr, sum := foreign64(t, make([]float64, summaryLen))
	steps, err := Train(spec, kindF64, x, y, n, d, 0, 0, settings, policyBuf(t, pol), mechDropout, 0.25, 0, false, 11,
		wAddr, np, hAddr, 200, iAddr, 400, sAddr, -1)
	if err != nil {
		t.Fatal(err)
	}
	if steps != want.Steps || !reflect.DeepEqual(w, want.W) {
		t.Fatalf("steps %d (want %d) or weights differ", steps, want.Steps)
	}
	idx := unsafe.Slice((*int64)(unsafe.Pointer(&ibuf[0])), int(sum[18]))
	k0 := 0
	for s, r := range want.History {
		row := hist[s*historyLen : (s+1)*historyLen]
		if row[0] != float64(r.Step) || row[2] != float64(r.Batch) || row[3] != r.LR || row[5] != r.Loss ||
			row[9] != r.BatchBound || (row[6] == 1) != r.Evaluated || (row[12] == 1) != r.HasEstimate {
			t.Fatalf("history row %d: %v, want %+v", s, row, r)
		}
		for _, i := range want.Batches[s] {
			if idx[k0] != int64(i) {
				t.Fatalf("index %d: %d, want %d", k0, idx[k0], i)
			}
			k0++
		}
	}
	if sum[0] != float64(want.Steps) || sum[3] != want.FinalLoss || sum[7] != want.Estimate.BatchBound ||
		sum[11] != 2 || sum[12] != 16 || int(sum[18]) != k0 {
		t.Errorf("summary %v", sum)
	}

	// Buffers that are too small are an [internal] error.
	if _, err := Train(spec, kindF64, x, y, n, d, 0, 0, settings, policyBuf(t, pol), -1, 0, 0, false, 11,
		wAddr, np, hAddr, 2, 0, 0, sAddr, -1); err == nil || !strings.HasPrefix(err.Error(), "[internal] ") {
		t.Errorf("small buffers: got %v", err)
	}
}

func TestStepAndLossGradsMatchCore(t *testing.T) {
	const n, d, k = 30, 4, 3
	ds, spec, x, y := newRefData(t, n, d, k, probSoftmax, 0)
	prob, _ := train.NewSoftmax(ds, 1e-3)
	np := prob.NumParams()
	w0 := make([]float64, np)
	for i := range w0 {
		w0[i] = 0.1 * float64(i%5)
	}
	idx := []int{3, 1, 3, 29}
	ib := foreign(t, 8*len(idx))
	iv := unsafe.Slice((*int64)(unsafe.Pointer(&ib[0])), len(idx))
	for j, i := range idx {
		iv[j] = int64(i)
	}
	iAddr := uintptr(unsafe.Pointer(&ib[0]))
	wAddr, _ := foreign64(t, w0)
	dAddr, dst := foreign64(t, make([]float64, np))
	if _, err := Step(spec, kindF64, x, y, n, d, wAddr, np, iAddr, len(idx), 0.1, 1, 2.0, dAddr); err != nil {
		t.Fatal(err)
	}
	want := make([]float64, np)
	if err := train.SGDStep(want, w0, prob, idx, 0.1, train.MeanStep, 2.0); err != nil || !reflect.DeepEqual(dst, want) {
		t.Fatalf("Step differs from SGDStep (%v)", err)
	}

	lAddr, losses := foreign64(t, make([]float64, len(idx)))
	gAddr, grads := foreign64(t, make([]float64, len(idx)*np))
	if _, err := LossGrads(spec, kindF64, x, y, n, d, wAddr, np, iAddr, len(idx), lAddr, gAddr); err != nil {
		t.Fatal(err)
	}
	wantG, meanLoss := train.PerExampleGrads(nil, prob, w0, idx)
	if !reflect.DeepEqual(grads, wantG) {
		t.Error("LossGrads gradients differ from PerExampleGrads")
	}
	var s float64
	for _, l := range losses {
		s += l
	}
	if math.Abs(s/float64(len(idx))-meanLoss) > 1e-14 {
		t.Errorf("mean loss %v, want %v", s/float64(len(idx)), meanLoss)
	}

	// float32 X is widened: the same results for values that are exact in float32.
	x32 := make([]float32, len(ds.X))
	for i, v := range ds.X {
		x32[i] = float32(v)
		ds.X[i] = float64(x32[i])
	}
	x32Addr, _ := foreign32(t, x32)
	if _, err := Step(spec, kindF32, x32Addr, y, n, d, wAddr, np, iAddr, len(idx), 0.1, 1, 2.0, dAddr); err != nil {
		t.Fatal(err)
	}
	_ = train.SGDStep(want, w0, prob, idx, 0.1, train.MeanStep, 2.0)
	if !reflect.DeepEqual(dst, want) {
		t.Error("float32 Step differs")
	}
}

func TestReferenceErrorsAreTagged(t *testing.T) {
	const n, d = 10, 3
	_, spec, x, y := newRefData(t, n, d, 2, probSoftmax, 0)
	np := 2 * (d + 1)
	wAddr, _ := foreign64(t, make([]float64, np))
	dAddr, _ := foreign64(t, make([]float64, np))
	one := foreign(t, 8)
	*(*int64)(unsafe.Pointer(&one[0])) = n
	iAddr := uintptr(unsafe.Pointer(&one[0]))
	badY, _ := foreign64(t, []float64{0, 1, 2, 0, 1, 0, 1, 0, 1, 0})
	nanX, _ := foreign64(t, append([]float64{math.NaN()}, make([]float64, n*d-1)...))
	settings, _ := foreign64(t, []float64{-1, 0, 2, 3, 0, 0, 0, 0, 0, 0})
	sAddr, _ := foreign64(t, make([]float64, summaryLen))
	hAddr, _ := foreign64(t, make([]float64, 3*historyLen))
	badSpec, _ := foreign64(t, []float64{9, 0, 0, 0, 1, 2})
	cases := []struct {
		name, tag, want string
		call            func() error
	}{
		{"label", "[label] ", "row 2", func() error {
			_, err := Step(spec, kindF64, x, badY, n, d, wAddr, np, iAddr, 0, 0.1, 0, 0, dAddr)
			return err
		}},
		{"NaN X", "[non_finite] ", "row 0, column 0", func() error {
			_, err := Step(spec, kindF64, nanX, y, n, d, wAddr, np, iAddr, 0, 0.1, 0, 0, dAddr)
			return err
		}},
		{"index", "[param] ", "indices[0] = 10", func() error {
			_, err := Step(spec, kindF64, x, y, n, d, wAddr, np, iAddr, 1, 0.1, 0, 0, dAddr)
			return err
		}},
		{"w length", "[shape] ", "w has 3 values", func() error {
			_, err := Step(spec, kindF64, x, y, n, d, wAddr, 3, iAddr, 1, 0.1, 0, 0, dAddr)
			return err
		}},
		{"lr", "[param] ", "learning rate = -1", func() error {
			_, err := Train(spec, kindF64, x, y, n, d, 0, 0, settings, 0, -1, 0, 0, false, 1, wAddr, np, hAddr, 3, 0, 0, sAddr, -1)
			return err
		}},
		{"problem", "[param] ", "problem code 9", func() error { _, err := NumParams(badSpec, d); return err }},
		{"kind", "[type] ", "X must be", func() error {
			_, err := Step(spec, kindArrow, x, y, n, d, wAddr, np, iAddr, 1, 0.1, 0, 0, dAddr)
			return err
		}},
	}
	for _, c := range cases {
		err := c.call()
		if err == nil || !strings.HasPrefix(err.Error(), c.tag) || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: got %v, want %s... mentioning %q", c.name, err, c.tag, c.want)
		}
	}
}

func TestInitialWeightsStream(t *testing.T) {
	spec, _ := foreign64(t, []float64{probMLP, 0, 6, 1, 1, 3})
	np, err := NumParams(spec, 4)
	if err != nil || np != 6*5+3*7 {
		t.Fatalf("NumParams = %d, %v", np, err)
	}
	dAddr, dst := foreign64(t, make([]float64, np))
	if _, err := InitialWeights(spec, 4, 5, dAddr, np); err != nil {
		t.Fatal(err)
	}
	ds := &data.Dataset{X: make([]float64, 4), Y: []float64{0}, N: 1, D: 4, Classes: 3}
	p, _ := train.NewMLP(ds, 6, train.ReLU, 0)
	if want := p.InitialWeights(rand.New(rand.NewPCG(5, train.InitStream))); !reflect.DeepEqual(dst, want) {
		t.Error("InitialWeights differs from MLP.InitialWeights(PCG(seed, train.InitStream))")
	}
}
