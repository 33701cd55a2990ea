package gdiv_test

import (
	"fmt"
	"math/rand/v2"

	"github.com/gdiv/gdiv/gdiv"
)

// The expected diversity of unscaled gradient dropout (eq. 22) for three
// aligned gradients: Δ < 1, so dropout raises the batch-size bound
// (Theorem 9). Here Σ‖g_i‖² = 15.75 and ‖Σ g_i‖² = 42.75.
func ExampleExpected() {
	grads := []float64{
		1.0, 2.0, 0.0,
		2.0, 1.0, 1.0,
		1.5, 1.5, 0.5,
	}
	e, err := gdiv.Expected(gdiv.Dropout{P: 0.5}, grads, 3, 3)
	if err != nil {
		panic(err)
	}
	fmt.Printf("B_S = %.4f, B^drop = %.4f\n", e.BaseBatchBound, e.BatchBound)
	e, _ = gdiv.Expected(gdiv.Langevin{Std: 1}, grads, 3, 3)
	fmt.Printf("B^sgld(σ=1) = %.4f\n", e.BatchBound)
	e, _ = gdiv.Expected(gdiv.Quantize{}, grads, 3, 3)
	fmt.Printf("B^quant = %.4f\n", e.BatchBound)
	// Output:
	// B_S = 1.1053, B^drop = 1.6154
	// B^sgld(σ=1) = 1.4348
	// B^quant = 1.4159
}

// Applying a mechanism in place, with an explicit random source: rescaled
// dropout zeroes each coordinate with probability p and divides the kept
// ones by 1 − p. (Only rng.Uint64 is used, so the draws are those of the
// PCG stream.)
func ExampleDropout_Apply() {
	grads := []float64{
		1, 2, 3, 4,
		5, 6, 7, 8,
	}
	rng := rand.New(rand.NewPCG(2, 3))
	if err := (gdiv.Dropout{P: 0.5, Rescale: true}).Apply(grads, 2, 4, rng); err != nil {
		panic(err)
	}
	fmt.Println(grads)
	// Output:
	// [2 4 0 8 10 0 14 0]
}

// Invalid parameters are errors, and the buffer is left untouched.
func ExampleMechanism_validate() {
	err := gdiv.Dropout{P: 1}.Validate()
	fmt.Println(err)
	// Output:
	// gdiv: invalid parameter: dropout p = 1, want 0 ≤ p < 1
}
