//go:build unix && cgo

package pybridge

import (
	"math"
	"strings"
	"testing"

	"github.com/gdiv/gdiv/gdiv"
)

func TestTorchSupportMatchesCore(t *testing.T) {
	outAddr, out := foreign64(t, make([]float64, 2))
	if _, err := BatchSumsFromScalars(outAddr, 8, 4*3.0, 4*5.0, true, 2, 2); err != nil {
		t.Fatal(err)
	}
	ws, wt, _ := gdiv.BatchSumsFromScalars(8, 12, 20, true, 2, 2)
	if out[0] != ws || out[1] != wt || ws != 3 || wt != 64*5 {
		t.Errorf("sums %v, want %v %v", out, ws, wt)
	}
	m := gdiv.Langevin{Std: 0.25}
	if got, _ := LangevinSumNoiseStd(0.25, 9, true); got != m.SumNoiseStd(9, true) {
		t.Errorf("SumNoiseStd %v", got)
	}
	if got, _ := LangevinExpectedSumSqNorms(0.25, 2, 3, 4); got != m.ExpectedSumSqNorms(2, 3, 4) {
		t.Errorf("ExpectedSumSqNorms %v", got)
	}
}

func TestTorchSupportErrorsAreTagged(t *testing.T) {
	outAddr, _ := foreign64(t, make([]float64, 2))
	for _, c := range []struct {
		name string
		f    func() error
		tag  string
	}{
		{"empty", func() error { _, err := BatchSumsFromScalars(outAddr, 0, 1, 1, false, 1, 1); return err }, "[empty] "},
		{"inf", func() error { _, err := BatchSumsFromScalars(outAddr, 2, 1, math.Inf(1), false, 1, 1); return err }, "[non_finite] "},
		{"scale", func() error { _, err := BatchSumsFromScalars(outAddr, 2, 1, 1, false, 1, 0); return err }, "[param] "},
		{"std", func() error { _, err := LangevinSumNoiseStd(-1, 2, false); return err }, "[param] "},
		{"b", func() error { _, err := LangevinSumNoiseStd(1, 0, false); return err }, "[param] "},
		{"d", func() error { _, err := LangevinExpectedSumSqNorms(1, 1, 2, 0); return err }, "[param] "},
		{"neg", func() error { _, err := LangevinExpectedSumSqNorms(1, -1, 2, 3); return err }, "[param] "},
		{"nan", func() error { _, err := LangevinExpectedSumSqNorms(1, math.NaN(), 2, 3); return err }, "[non_finite] "},
	} {
		if err := c.f(); err == nil || !strings.HasPrefix(err.Error(), c.tag) {
			t.Errorf("%s: err = %v, want a %s error", c.name, err, c.tag)
		}
	}
}
