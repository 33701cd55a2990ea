package pybridge

import (
	"errors"
	"math"
	"strings"
	"testing"

	"github.com/gdiv/gdiv/gdiv"
)

// errTag returns the sentinel tag of a bridge error ("param" for
// "[param] ..." and "[param:min_batch] ...").
func errTag(err error) string {
	msg := err.Error()
	if !strings.HasPrefix(msg, "[") {
		return ""
	}
	tag, _, _ := strings.Cut(msg[1:], "]")
	tag, _, _ = strings.Cut(tag, ":")
	return tag
}

func TestTaggedField(t *testing.T) {
	err := tagged(gdiv.BatchSizePolicy{MinBatch: -1}.Validate())
	if !strings.HasPrefix(err.Error(), "[param:min_batch] ") {
		t.Errorf("got %v, want the field in the tag", err)
	}
	if err := tagged(errors.New("x")); !strings.HasPrefix(err.Error(), "[internal] ") {
		t.Errorf("got %v", err)
	}
}

func ctrlCfg(t *testing.T, p *gdiv.BatchSizePolicy, batch, n int, mean bool, lr gdiv.LRRule) uintptr {
	addr, v := foreign64(t, make([]float64, ctrlCfgLen))
	if p != nil {
		writePolicy(v, *p)
		v[8] = 1
	}
	v[9], v[10], v[12] = float64(batch), float64(n), 0.9
	if mean {
		v[13] = 1
	}
	v[14] = float64(lr)
	splitSeed(v[16:18], 0xdeadbeefcafe1234)
	return addr
}

// TestControllerBridgeMatchesGo runs the same observations through the
// bridge (state in a caller buffer, rebuilt every call) and a Go
// Controller: identical decisions and states, and the next seed.
func TestControllerBridgeMatchesGo(t *testing.T) {
	pol := &gdiv.BatchSizePolicy{MaxBatch: 64, MultipleOf: 2}
	cfg := ctrlCfg(t, pol, 0, 100, true, gdiv.LRLinear)
	stAddr, st := foreign64(t, make([]float64, ctrlStateLen))
	polAddr, polOut := foreign64(t, make([]float64, policyLen))
	b0, err := ControllerInit(cfg, stAddr, polAddr)
	if err != nil || b0 != 2 || polOut[1] != 2 {
		t.Fatalf("init: %v, %v, policy %v", b0, err, polOut)
	}
	c, _ := gdiv.NewController(gdiv.ControllerSettings{Policy: pol, DatasetSize: 100, EstimatorBeta: 0.9, Step: gdiv.MeanStep, LR: gdiv.LRLinear, Seed: 0xdeadbeefcafe1234})
	inAddr, in := foreign64(t, make([]float64, ctrlInLen))
	outAddr, out := foreign64(t, make([]float64, ctrlOutLen))
	batch := b0
	for k := 1; k <= 30; k++ {
		s1, s2 := float64(batch)*1.5/float64(batch*batch), 0.3*float64(k%5)/float64(batch*batch)
		copy(in, []float64{float64(batch), s1, s2, 1, 0, 0, 0, 0, 0, 0, 0})
		if _, err := ControllerObserve(cfg, stAddr, inAddr, outAddr); err != nil {
			t.Fatal(err)
		}
		d, _ := c.Observe(gdiv.Observation{Batch: batch, SumSqNorms: s1, SqNormBatchGrad: s2, Mean: true})
		if out[2] != float64(d.NextBatch) || out[3] != d.LRFactor || out[16] != d.Smoothed.BatchBound && !math.IsInf(d.Smoothed.BatchBound, 1) || int(out[20]) != int(d.Skipped) {
			t.Fatalf("step %d: bridge %v, Go %+v", k, out, d)
		}
		if st[6] != float64(k) || st[5] != float64(d.NextBatch) {
			t.Fatalf("step %d: state %v", k, st)
		}
		seed, _ := joinSeed(st[10:12], "seed")
		if seed != gdiv.StepSeed(0xdeadbeefcafe1234, k+1) {
			t.Fatalf("step %d: next seed %x", k, seed)
		}
		batch = d.NextBatch
	}
	// A bad observation or state is a field error and leaves the state alone.
	before := append([]float64(nil), st...)
	in[0] = 2.5
	if _, err := ControllerObserve(cfg, stAddr, inAddr, outAddr); err == nil || !strings.HasPrefix(err.Error(), "[param:batch] ") {
		t.Errorf("fractional batch: %v", err)
	}
	st[8] = st[6] + 1 // decisions > steps
	if _, err := ControllerSetState(cfg, stAddr); err == nil || !strings.HasPrefix(err.Error(), "[param:decisions] ") {
		t.Errorf("bad state: %v", err)
	}
	st[8] = before[8]
	for i := range st {
		if st[i] != before[i] && !(math.IsNaN(st[i]) && math.IsNaN(before[i])) {
			t.Fatalf("state changed by failed calls: %v → %v", before, st)
		}
	}
}

func TestControllerInitErrors(t *testing.T) {
	stAddr, _ := foreign64(t, make([]float64, ctrlStateLen))
	polAddr, _ := foreign64(t, make([]float64, policyLen))
	cfg := ctrlCfg(t, &gdiv.BatchSizePolicy{MultipleOf: 4}, 6, 0, true, gdiv.LRLinear)
	if _, err := ControllerInit(cfg, stAddr, polAddr); err == nil || !strings.HasPrefix(err.Error(), "[param:batch_size] ") {
		t.Errorf("initial batch not allowed: %v", err)
	}
	cfg = ctrlCfg(t, nil, 0, 0, false, gdiv.LRLinear)
	if _, err := ControllerInit(cfg, stAddr, polAddr); err == nil || !strings.HasPrefix(err.Error(), "[param:lr_rule] ") {
		t.Errorf("LR rule with a sum loss: %v", err)
	}
}

// TestControllerBridgeLRWarmup: cfg[23] is the warm-up and state[14:16]
// its ramp; the bridge's factors and ramp state are Go's, and a bad ramp in
// the state is a field error.
func TestControllerBridgeLRWarmup(t *testing.T) {
	pol := &gdiv.BatchSizePolicy{MinBatch: 4, MaxBatch: 64}
	cfg := ctrlCfg(t, pol, 0, 100, true, gdiv.LRLinear)
	v := outBuf(cfg, ctrlCfgLen)
	v[23] = 4
	stAddr, st := foreign64(t, make([]float64, ctrlStateLen))
	polAddr, _ := foreign64(t, make([]float64, policyLen))
	if _, err := ControllerInit(cfg, stAddr, polAddr); err != nil {
		t.Fatal(err)
	}
	c, _ := gdiv.NewController(gdiv.ControllerSettings{Policy: pol, DatasetSize: 100, EstimatorBeta: 0.9, Step: gdiv.MeanStep, LR: gdiv.LRLinear,
		Seed: 0xdeadbeefcafe1234, LRWarmupSteps: 4})
	inAddr, in := foreign64(t, make([]float64, ctrlInLen))
	outAddr, out := foreign64(t, make([]float64, ctrlOutLen))
	ramps := 0
	for k := 1; k <= 12; k++ {
		b := c.Batch()
		s1 := 1 / float64(b) // no signal: the batch doubles, each time with a ramp
		copy(in, []float64{float64(b), s1, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0})
		if _, err := ControllerObserve(cfg, stAddr, inAddr, outAddr); err != nil {
			t.Fatal(err)
		}
		d, _ := c.Observe(gdiv.Observation{Batch: b, SumSqNorms: s1, Mean: true})
		gs := c.State()
		if out[3] != d.LRFactor || st[14] != gs.RampFrom || st[15] != float64(gs.RampLeft) {
			t.Fatalf("step %d: bridge factor %v, ramp %v; Go %v, %+v", k, out[3], st[14:16], d.LRFactor, gs)
		}
		if gs.RampLeft > 0 {
			ramps++
		}
	}
	if ramps == 0 {
		t.Fatal("no ramp: the case does not exercise the warm-up")
	}
	v[23] = -1
	if _, err := ControllerInit(cfg, stAddr, polAddr); err == nil || !strings.HasPrefix(err.Error(), "[param:lr_warmup_steps] ") {
		t.Errorf("negative warm-up: %v", err)
	}
	v[23] = 4
	st[15] = 9
	if _, err := ControllerSetState(cfg, stAddr); err == nil || !strings.HasPrefix(err.Error(), "[param:ramp_left] ") {
		t.Errorf("ramp_left > W: %v", err)
	}
	st[15] = 2.5
	if _, err := ControllerSetState(cfg, stAddr); err == nil || !strings.HasPrefix(err.Error(), "[param:ramp_left] ") {
		t.Errorf("fractional ramp_left: %v", err)
	}
}
