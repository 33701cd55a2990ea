package plotx

import (
	"bytes"
	"math"
	"os"
	"path/filepath"
	"testing"

	"gonum.org/v1/plot/vg"
)

func TestSaveWritesPNG(t *testing.T) {
	path := filepath.Join(t.TempDir(), "f.png")
	panels := []Panel{
		{Title: "loss", XLabel: "examples", YLabel: "F(w)", LogY: true, Series: []Series{
			{Name: "a", X: []float64{1, 2, 3}, Y: []float64{3, 2, 1}},
			{Name: "b", X: []float64{1, 2, 3}, Y: []float64{math.Inf(1), 2, 0}, Dashed: true}, // Inf and a 0 on a log axis are dropped
		}},
		{Title: "one point on log axes", LogX: true, LogY: true, Series: []Series{{Name: "p", X: []float64{5}, Y: []float64{0.3}, Points: true}}},
		{Title: "batch", Series: []Series{{Name: "B", X: []float64{1, 2}, Y: []float64{16, 32}, Points: true}}},
	}
	if err := Save(path, panels, 1, 4*vg.Inch, 3*vg.Inch); err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(path)
	if err != nil || !bytes.HasPrefix(b, []byte("\x89PNG\r\n\x1a\n")) || len(b) < 1000 {
		t.Fatalf("not a PNG: %d bytes, %v", len(b), err)
	}
}

func TestSaveRejectsEmpty(t *testing.T) {
	dir := t.TempDir()
	if err := Save(filepath.Join(dir, "x.png"), nil, 1, vg.Inch, vg.Inch); err == nil {
		t.Error("no panels: want an error")
	}
	nan := []Panel{{Title: "nan", Series: []Series{{X: []float64{math.NaN()}, Y: []float64{1}}}}}
	if err := Save(filepath.Join(dir, "y.png"), nan, 1, vg.Inch, vg.Inch); err == nil {
		t.Error("no finite points: want an error")
	}
}
