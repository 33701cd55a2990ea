//go:build unix

package pybridge

import (
	"bufio"
	"os"
	"strings"
	"testing"

	"github.com/gdiv/gdiv/gdiv"
)

// Train prints the CLI's progress lines on the descriptor it is given, and
// leaves the descriptor open.
func TestTrainProgress(t *testing.T) {
	const n, d, k, h = 40, 5, 3, 4
	_, spec, x, y := newRefData(t, n, d, k, probMLP, h)
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	defer w.Close()
	pol := gdiv.BatchSizePolicy{MaxBatch: 16}
	settings, _ := foreign64(t, []float64{0.05, 1, 0, 0, 200, 1, 0, 0.5, 3, 0})
	np := h*(d+1) + k*(h+1)
	wAddr, _ := foreign64(t, make([]float64, np))
	hAddr, _ := foreign64(t, make([]float64, 200*historyLen))
	sAddr, _ := foreign64(t, make([]float64, summaryLen))
	if _, err := Train(spec, kindF64, x, y, n, d, 0, 0, settings, policyBuf(t, pol), -1, 0, 0, false, 11,
		wAddr, np, hAddr, 200, 0, 0, sAddr, int(w.Fd())); err != nil {
		t.Fatal(err)
	}
	if _, err := w.Write([]byte("end\n")); err != nil { // still open
		t.Fatalf("the descriptor was closed: %v", err)
	}
	sc := bufio.NewScanner(r)
	lines := 0
	for sc.Scan() && sc.Text() != "end" {
		if !strings.HasPrefix(sc.Text(), "train: ") {
			t.Errorf("line %q", sc.Text())
		}
		lines++
	}
	if lines < 2 || lines > 22 || !strings.Contains(sc.Text(), "end") {
		t.Errorf("%d progress lines, want about 20", lines)
	}
}
