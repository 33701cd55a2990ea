package train

import (
	"testing"

	"github.com/gdiv/gdiv/gdiv"
)

// TestSGDUsesController replays an adaptive SGD run's batches through a
// Controller with the same settings: the same sums give the same batch
// sequence, estimates and learning rates bit for bit — one code path —,
// with and without an LR warm-up (which then holds some rates below the
// linear rule's).
func TestSGDUsesController(t *testing.T) {
	q := sgdRandomLSQ(200, 5, 8)
	p := q.problem()
	w0 := []float64{3, -3, 3, -3, 3}
	pol := &gdiv.BatchSizePolicy{MaxBatch: 64, MaxGrowth: 1.5, LR: gdiv.LRLinear}
	for _, warm := range []int{0, 4} {
		s := SGDSettings{LR: 0.01, Step: MeanStep, Policy: pol, Steps: 60, Seed: 2, EstimatorBeta: 0.9, RecordIndices: true, LRWarmupSteps: warm}
		res, err := SGD(p, w0, s)
		if err != nil {
			t.Fatal(err)
		}
		c, err := gdiv.NewController(gdiv.ControllerSettings{Policy: pol, DatasetSize: 200, EstimatorBeta: 0.9, Step: MeanStep, LR: pol.LR, LRWarmupSteps: warm})
		if err != nil {
			t.Fatal(err)
		}
		w := append([]float64(nil), w0...)
		sum, row := make([]float64, 5), make([]float64, 5)
		below := 0
		b0 := len(res.Batches[0])
		for k, idx := range res.Batches {
			if c.Batch() != len(idx) {
				t.Fatalf("W=%d, step %d: controller batch %d, SGD used %d", warm, k+1, c.Batch(), len(idx))
			}
			_, sumSq, err := sumGrads(sum, row, p, w, idx, nil, nil, "")
			if err != nil {
				t.Fatal(err)
			}
			d, err := c.Observe(gdiv.Observation{Batch: len(idx), SumSqNorms: sumSq, SqNormBatchGrad: gdiv.SqNorm(sum)})
			if err != nil {
				t.Fatal(err)
			}
			r := res.History[k]
			if d.Smoothed.BatchBound != r.BatchBound || d.Smoothed.M2 != r.M2 || r.LR != s.LR*d.LRFactor {
				t.Fatalf("W=%d, step %d: controller %v (lr %v), SGD %+v", warm, k+1, d.Smoothed, s.LR*d.LRFactor, r)
			}
			if linear := s.LR * float64(len(idx)) / float64(b0); r.LR < linear {
				below++
			}
			if err := SGDStep(w, w, p, idx, r.LR, MeanStep, 0); err != nil {
				t.Fatal(err)
			}
		}
		if (warm == 0) != (below == 0) {
			t.Errorf("W=%d: %d steps below the linear rule's rate", warm, below)
		}
	}
}
