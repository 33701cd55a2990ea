package gdiv_test

import (
	"fmt"

	"github.com/gdiv/gdiv/gdiv"
)

// Theorem 1: for any generalized linear loss ℓ_i(x_iᵀw) on these four
// features, B_S(w) ≥ n·min‖x_i‖²/σ²_max(X) for every w. Here XᵀX =
// I + (1,1,0)(1,1,0)ᵀ has largest eigenvalue 3, so B_S ≥ 4·1/3.
func ExampleBoundGLM() {
	x := []float64{
		1, 0, 0,
		0, 1, 0,
		0, 0, 1,
		1, 1, 0,
	}
	b, err := gdiv.BoundGLM(x, 4, 3)
	if err != nil {
		panic(err)
	}
	fmt.Printf("min‖x_i‖² = %.4g, σ²_max = %.4g, B_S ≥ %.4f\n", b.MinSqNorm, b.SigmaMaxSq, b.BatchBoundLower)
	// Output:
	// min‖x_i‖² = 1, σ²_max = 3, B_S ≥ 1.3333
}

// Theorem 2: rows 0–1 and 2–3 overlap in pairs, row 4 conflicts with none;
// ρ = 1, so B_S ≥ 5/2 whatever the values on these supports.
func ExampleBoundSparse() {
	g := []float64{
		1, 1, 0, 0, 0,
		0, 2, 0, 0, 0,
		0, 0, 3, 0, 0,
		0, 0, -1, 1, 0,
		0, 0, 0, 0, 5,
	}
	b, err := gdiv.BoundSparse(g, 5, 5)
	if err != nil {
		panic(err)
	}
	fmt.Printf("ρ = %d, B_S ≥ %.1f\n", b.MaxDegree, b.BatchBoundLower)
	// Output:
	// ρ = 1, B_S ≥ 2.5
}

// Eq. (9) and (11): the largest stable step size for batch 32 when the
// differential batch-size bound is at least 100.
func ExampleStabilityStepConvex() {
	g, _ := gdiv.StabilityStepConvex(1, 1000, 1, 100)
	fmt.Printf("serial: γ ≤ %.4f\n", g)
	g, _ = gdiv.StabilityStepConvex(1, 1000, 32, 100)
	fmt.Printf("B = 32: γ ≤ %.4f\n", g)
	g, _ = gdiv.StabilityStepStronglyConvex(1, 0.01, 1000, 32, 100)
	fmt.Printf("strongly convex, λ = 0.01: γ ≤ %.4f\n", g)
	// Output:
	// serial: γ ≤ 2.0000
	// B = 32: γ ≤ 1.5256
	// strongly convex, λ = 0.01: γ ≤ 1.5104
}
