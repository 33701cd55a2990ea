package train_test

import (
	"fmt"

	"github.com/gdiv/gdiv/gdiv"
	"github.com/gdiv/gdiv/gdiv/data"
	"github.com/gdiv/gdiv/gdiv/train"
)

// Mini-batch SGD with the paper's sum-step (eq. 2) on a least-squares fit
// of y = 2x − 1. The data are exactly linear, so every per-example
// gradient vanishes at the optimum and SGD converges to it. The run is a
// deterministic function of the seed.
func ExampleSGD() {
	ds := &data.Dataset{Name: "line", X: []float64{0, 1, 2, 3}, Y: []float64{-1, 1, 3, 5}, N: 4, D: 1}
	p, err := train.NewLeastSquares(ds, 0)
	if err != nil {
		panic(err)
	}
	res, err := train.SGD(p, make([]float64, 2), train.SGDSettings{
		LR:            0.05,
		Batch:         2,
		Steps:         400,
		Seed:          1,
		RecordIndices: true,
	})
	if err != nil {
		panic(err)
	}
	fmt.Printf("w = %.4f, b = %.4f after %d steps (%d examples)\n", res.W[0], res.W[1], res.Steps, res.Examples)
	fmt.Printf("F(w0) = %.2f, F(w) < 1e-9: %v\n", res.InitialLoss, res.FinalLoss < 1e-9)
	fmt.Println("first batches:", res.Batches[:3])
	// Output:
	// w = 2.0000, b = -1.0000 after 400 steps (800 examples)
	// F(w0) = 4.50, F(w) < 1e-9: true
	// first batches: [[3 0] [1 1] [3 3]]
}

// A batch-size decision: the per-batch estimate of B_S from the sums of a
// batch of 64 per-example gradients, then the policy's next batch
// δ·B̂_S + 1 = 101, limited to twice the current batch and rounded down to
// a multiple of the 8 workers. With a mean-reduced loss the linear rule
// rescales the learning rate. When the batch shows no evidence of signal
// (Ĝ ≤ 0), the policy heads for MaxBatch, here limited by the growth
// factor.
func ExampleBatchSizePolicy_Next() {
	policy := gdiv.BatchSizePolicy{
		Delta:      1,
		MinBatch:   8,
		MaxBatch:   1024,
		MultipleOf: 8,
		Hysteresis: 0.1,
		LR:         gdiv.LRLinear,
	}
	if err := policy.Validate(); err != nil {
		panic(err)
	}
	// Σ‖g_i‖² = 128 (M̂² = 2) and ‖Σ g_i‖² = 208.64 (Ĝ = 0.02) over 64 examples.
	est, err := gdiv.EstimateBatch(64, 128, 208.64)
	if err != nil {
		panic(err)
	}
	next := policy.Next(64, est, 10)
	fmt.Printf("B̂_S = %.1f: batch 64 → %d, lr 0.1 → %.2f\n", est.BatchBound, next, gdiv.ScaleLR(policy.LR, 0.1, 64, next))

	noise, _ := gdiv.EstimateBatch(64, 128, 100)
	fmt.Printf("no signal: %v, batch 64 → %d\n", noise.NoSignal, policy.Next(64, noise, 11))
	// Output:
	// B̂_S = 100.0: batch 64 → 96, lr 0.1 → 0.15
	// no signal: true, batch 64 → 128
}
