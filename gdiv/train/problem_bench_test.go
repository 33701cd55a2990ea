package train

import (
	"math/rand/v2"
	"testing"

	"github.com/gdiv/gdiv/gdiv/data"
)

// BenchmarkLossGrad measures per-example LossGrad throughput (loss and
// gradient of one example) on the standardized digits data (1797 × 64,
// 10 classes), cycling through the examples; examples/s is reported.
//
//	go test ./gdiv -run '^$' -bench LossGrad
func BenchmarkLossGrad(b *testing.B) {
	raw, err := data.LoadBuiltin("digits")
	if err != nil {
		b.Fatal(err)
	}
	ds, _ := raw.Standardize()
	even := ds.Binary(func(y float64) bool { return int(y)%2 == 0 })
	type named struct {
		name string
		make func() (Problem, error)
	}
	for _, c := range []named{
		{"leastsquares", func() (Problem, error) { return NewLeastSquares(ds, 1e-4) }},
		{"logistic", func() (Problem, error) { return NewLogistic(even, 1e-4) }},
		{"softmax", func() (Problem, error) { return NewSoftmax(ds, 1e-4) }},
		{"mlp", func() (Problem, error) { return NewMLP(ds, 32, Tanh, 1e-4) }},
		{"mlp-relu", func() (Problem, error) { return NewMLP(ds, 32, ReLU, 1e-4) }},
	} {
		p, err := c.make()
		if err != nil {
			b.Fatal(err)
		}
		b.Run("problem="+c.name, func(b *testing.B) { benchmarkLossGrad(b, p) })
	}
}

func benchmarkLossGrad(b *testing.B, p Problem) {
	rng := rand.New(rand.NewPCG(1, 2))
	w := make([]float64, p.NumParams())
	for j := range w {
		w[j] = 0.1 * rng.NormFloat64()
	}
	grad := make([]float64, p.NumParams())
	n := p.NumExamples()
	b.SetBytes(int64(8 * p.NumParams())) // the gradient written per example
	b.ResetTimer()
	i := 0
	for b.Loop() {
		p.LossGrad(grad, w, i)
		if i++; i == n {
			i = 0
		}
	}
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "examples/s")
}
