package train

import (
	"fmt"
	"math/rand/v2"
	"testing"

	"github.com/gdiv/gdiv/gdiv/data"
)

// Benchmarks of the reference trainer on the built-in digits data (1797
// examples, 64 standardized features, 10 classes): softmax regression
// (650 parameters) and an MLP with 32 tanh hidden units (2410
// parameters), mean-step SGD with replacement, reporting examples/s
// (per-example gradients computed per second). One benchmark iteration is
// one SGD step; the whole loop is a single SGD call with Steps = b.N, so
// the two full-loss evaluations (F(w0) and F(W)) are amortized over the
// run. The "grads-only" variants time the per-example gradients alone
// (Problem.LossGrad over the same batches), so the difference is the
// trainer's own cost: the estimate, the step and the bookkeeping.

func sgdBenchProblem(b *testing.B, name string) Problem {
	b.Helper()
	ds, err := data.LoadBuiltin("digits")
	if err != nil {
		b.Fatal(err)
	}
	ds, _ = ds.Standardize()
	var p Problem
	switch name {
	case "softmax":
		p, err = NewSoftmax(ds, 1e-4)
	case "mlp":
		p, err = NewMLP(ds, 32, Tanh, 1e-4)
	default:
		b.Fatalf("unknown problem %q", name)
	}
	if err != nil {
		b.Fatal(err)
	}
	return p
}

func sgdBenchInit(p Problem) []float64 {
	if in, ok := p.(Initializer); ok {
		return in.InitialWeights(rand.New(rand.NewPCG(1, 2)))
	}
	return make([]float64, p.NumParams())
}

func benchmarkSGD(b *testing.B, problem string, batch int) {
	p := sgdBenchProblem(b, problem)
	w0 := sgdBenchInit(p)
	s := SGDSettings{LR: 0.05, Step: MeanStep, Batch: batch, Steps: b.N, Seed: 1, EstimatorBeta: 0.9, EvalEvery: -1}
	b.ResetTimer()
	res, err := SGD(p, w0, s)
	if err != nil {
		b.Fatal(err)
	}
	b.ReportMetric(float64(res.Examples)/b.Elapsed().Seconds(), "examples/s")
}

func benchmarkGradsOnly(b *testing.B, problem string, batch int) {
	p := sgdBenchProblem(b, problem)
	w := sgdBenchInit(p)
	rng := rand.New(rand.NewPCG(1, 2))
	n, d := p.NumExamples(), p.NumParams()
	grads := make([]float64, batch*d)
	b.ResetTimer()
	for range b.N {
		for j := range batch {
			p.LossGrad(grads[j*d:(j+1)*d], w, uniformIndex(rng, n))
		}
	}
	b.ReportMetric(float64(b.N*batch)/b.Elapsed().Seconds(), "examples/s")
}

func BenchmarkSGD(b *testing.B) {
	for _, problem := range []string{"softmax", "mlp"} {
		for _, batch := range []int{64, 512} {
			b.Run(fmt.Sprintf("problem=%s/batch=%d/sgd", problem, batch), func(b *testing.B) {
				benchmarkSGD(b, problem, batch)
			})
			b.Run(fmt.Sprintf("problem=%s/batch=%d/grads-only", problem, batch), func(b *testing.B) {
				benchmarkGradsOnly(b, problem, batch)
			})
		}
	}
}
