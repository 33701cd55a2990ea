package train_test

import (
	"fmt"
	"math/rand/v2"

	"github.com/gdiv/gdiv/gdiv"
	"github.com/gdiv/gdiv/gdiv/data"
	"github.com/gdiv/gdiv/gdiv/train"
	"gonum.org/v1/gonum/floats"
)

// The bundled data sets load without touching the disk.
func ExampleLoadBuiltin() {
	ds, err := data.LoadBuiltin("digits")
	if err != nil {
		panic(err)
	}
	fmt.Printf("%s: %d examples × %d features, %d classes\n", ds.Name, ds.N, ds.D, ds.Classes)
	fmt.Println("examples per class:", ds.ClassCounts())
	// Output:
	// digits: 1797 examples × 64 features, 10 classes
	// examples per class: [178 182 177 183 181 182 181 179 174 180]
}

// Full-batch gradient descent on logistic regression, measuring the
// batch-size bound B_S = n·Δ of the per-example gradients as training goes:
// near the optimum the gradients cancel, so the diversity and B_S grow.
func ExampleNewLogistic() {
	raw, err := data.LoadBuiltin("breast_cancer")
	if err != nil {
		panic(err)
	}
	ds, _ := raw.Standardize()
	p, err := train.NewLogistic(ds, 1e-3)
	if err != nil {
		panic(err)
	}
	w := p.InitialWeights(nil) // zeros
	grad := make([]float64, p.NumParams())
	batchBound := func() float64 {
		g, _ := train.PerExampleGrads(nil, p, w, nil)
		s, err := gdiv.ComputeStats(g, ds.N, p.NumParams())
		if err != nil {
			panic(err)
		}
		return s.BatchBound
	}
	fmt.Printf("start: F = %.4f, B_S = %.1f\n", train.FullLoss(p, nil, w), batchBound())
	for range 100 {
		train.FullLoss(p, grad, w)
		floats.AddScaled(w, -1, grad)
	}
	acc, _ := train.Accuracy(p, w, ds)
	fmt.Printf("after 100 steps: F = %.3f, B_S = %.2g, accuracy %.3f\n", train.FullLoss(p, nil, w), batchBound(), acc)
	// Output:
	// start: F = 0.6931, B_S = 3.9
	// after 100 steps: F = 0.066, B_S = 3.3e+03, accuracy 0.988
}

// Exact r-fold tiling repeats each kept example r times: the diversity of
// the per-example gradients drops by exactly r and the batch-size bound
// stays that of the kept examples.
func ExampleTile() {
	rng := rand.New(rand.NewPCG(1, 2))
	ds := train.GaussianDataset(1000, 20, 1, rng)
	tiled, err := train.Tile(ds, 4, rng)
	if err != nil {
		panic(err)
	}
	first := make([]int, tiled.N/4) // the first copy: the kept examples
	for i := range first {
		first[i] = i
	}
	kept := tiled.Subset(first)
	stats := func(ds *data.Dataset) gdiv.Stats {
		p, _ := train.NewLeastSquares(ds, 0)
		g, _ := train.PerExampleGrads(nil, p, p.InitialWeights(nil), nil)
		s, err := gdiv.ComputeStats(g, ds.N, p.NumParams())
		if err != nil {
			panic(err)
		}
		return s
	}
	st, sk := stats(tiled), stats(kept)
	fmt.Printf("n = %d, kept %d; Δ_kept/Δ_tiled = %.3f; B_S %.1f vs %.1f\n",
		tiled.N, kept.N, sk.Diversity/st.Diversity, st.BatchBound, sk.BatchBound)
	// Output:
	// n = 1000, kept 250; Δ_kept/Δ_tiled = 4.000; B_S 18.3 vs 18.3
}

// A user's own loss: f_i(w) = ½(w − c_i)², minimized on average at the
// mean of the c_i.
func ExampleProblemFunc() {
	c := []float64{1, 2, 6}
	p := train.ProblemFunc{Params: 1, Examples: len(c), Func: func(grad, w []float64, i int) float64 {
		r := w[0] - c[i]
		if grad != nil {
			grad[0] = r
		}
		return 0.5 * r * r
	}}
	grad := []float64{0}
	for _, w := range []float64{0, 3} {
		f := train.FullLoss(p, grad, []float64{w})
		fmt.Printf("F(%g) = %.4f, F'(%g) = %g\n", w, f, w, grad[0])
	}
	// Output:
	// F(0) = 6.8333, F'(0) = -3
	// F(3) = 2.3333, F'(3) = 0
}
