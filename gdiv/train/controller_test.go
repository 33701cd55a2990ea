package train

import (
	"testing"

	"github.com/gdiv/gdiv/gdiv"
)

// TestSGDUsesController replays an adaptive SGD run's batches through a
// Controller with the same settings: the same sums give the same batch
// sequence and estimates bit for bit — one code path.
func TestSGDUsesController(t *testing.T) {
	q := sgdRandomLSQ(200, 5, 8)
	p := q.problem()
	w0 := []float64{3, -3, 3, -3, 3}
	pol := &gdiv.BatchSizePolicy{MaxBatch: 64, MaxGrowth: 1.5}
	s := SGDSettings{LR: 0.05, Step: MeanStep, Policy: pol, Steps: 60, Seed: 2, EstimatorBeta: 0.9, RecordIndices: true}
	res, err := SGD(p, w0, s)
	if err != nil {
		t.Fatal(err)
	}
	c, err := gdiv.NewController(gdiv.ControllerSettings{Policy: pol, DatasetSize: 200, EstimatorBeta: 0.9, Step: MeanStep, LR: pol.LR})
	if err != nil {
		t.Fatal(err)
	}
	w := append([]float64(nil), w0...)
	sum, row := make([]float64, 5), make([]float64, 5)
	for k, idx := range res.Batches {
		if c.Batch() != len(idx) {
			t.Fatalf("step %d: controller batch %d, SGD used %d", k+1, c.Batch(), len(idx))
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
		if d.Smoothed.BatchBound != r.BatchBound || d.Smoothed.M2 != r.M2 || r.LR != c.ScaleLR(s.LR, len(idx)) {
			t.Fatalf("step %d: controller %v (lr %v), SGD %+v", k+1, d.Smoothed, c.ScaleLR(s.LR, len(idx)), r)
		}
		if err := SGDStep(w, w, p, idx, r.LR, MeanStep, 0); err != nil {
			t.Fatal(err)
		}
	}
}
