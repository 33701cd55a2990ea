// Package plotx draws the PNG figures of the gdiv CLI: stacked panels of
// line series, on gonum/plot. It holds no statistics — only layout.
package plotx

import (
	"fmt"
	"math"
	"os"

	"gonum.org/v1/plot"
	"gonum.org/v1/plot/plotter"
	"gonum.org/v1/plot/plotutil"
	"gonum.org/v1/plot/vg"
	"gonum.org/v1/plot/vg/draw"
	"gonum.org/v1/plot/vg/vgimg"
)

// Series is one line: points (X[i], Y[i]). Non-finite points are dropped
// (an infinite batch-bound estimate cannot be drawn), so a series may have
// gaps but never breaks the figure.
type Series struct {
	Name string
	X, Y []float64
	// Dashed draws the line dashed (e.g. a reference or a bound).
	Dashed bool
	// Points draws markers instead of a line.
	Points bool
	// Color is a 1-based palette index, so that related series (a mean and
	// its error band) share a colour; 0 colours series by position.
	Color int
}

// Panel is one plot of a figure.
type Panel struct {
	Title, XLabel, YLabel string
	LogX, LogY            bool
	LegendBottom          bool // legend in the bottom-right corner (for rising curves)
	Series                []Series
}

// Save writes the panels, stacked vertically in one column (cols = 1) or
// on a grid of cols columns, as a PNG of width×height points per panel.
func Save(path string, panels []Panel, cols int, panelW, panelH vg.Length) error {
	if len(panels) == 0 {
		return fmt.Errorf("plotx: no panels to draw")
	}
	if cols < 1 {
		cols = 1
	}
	rows := (len(panels) + cols - 1) / cols
	plots := make([][]*plot.Plot, rows)
	for r := range plots {
		plots[r] = make([]*plot.Plot, cols)
	}
	for i, pn := range panels {
		p, err := build(pn)
		if err != nil {
			return fmt.Errorf("plotx: panel %q: %w", pn.Title, err)
		}
		plots[i/cols][i%cols] = p
	}
	img := vgimg.New(panelW*vg.Length(cols), panelH*vg.Length(rows))
	dc := draw.New(img)
	tiles := draw.Tiles{Rows: rows, Cols: cols, PadX: vg.Millimeter * 4, PadY: vg.Millimeter * 4,
		PadTop: vg.Millimeter * 2, PadBottom: vg.Millimeter * 2, PadLeft: vg.Millimeter * 2, PadRight: vg.Millimeter * 2}
	canvases := plot.Align(plots, tiles, dc)
	for r := range plots {
		for c := range plots[r] {
			if plots[r][c] != nil {
				plots[r][c].Draw(canvases[r][c])
			}
		}
	}
	png := vgimg.PngCanvas{Canvas: img}
	return writeFile(path, png)
}

func build(pn Panel) (*plot.Plot, error) {
	p := plot.New()
	p.Title.Text = pn.Title
	p.X.Label.Text = pn.XLabel
	p.Y.Label.Text = pn.YLabel
	p.Legend.Top = !pn.LegendBottom
	p.Add(plotter.NewGrid())
	if pn.LogX {
		p.X.Scale = plot.LogScale{}
		p.X.Tick.Marker = plot.LogTicks{Prec: -1}
	}
	if pn.LogY {
		p.Y.Scale = plot.LogScale{}
		p.Y.Tick.Marker = plot.LogTicks{Prec: -1}
	}
	drawn := 0
	for i, s := range pn.Series {
		xy := make(plotter.XYs, 0, len(s.X))
		for k := range s.X {
			x, y := s.X[k], s.Y[k]
			if math.IsNaN(x) || math.IsInf(x, 0) || math.IsNaN(y) || math.IsInf(y, 0) {
				continue
			}
			if (pn.LogX && x <= 0) || (pn.LogY && y <= 0) {
				continue
			}
			xy = append(xy, plotter.XY{X: x, Y: y})
		}
		if len(xy) == 0 {
			continue
		}
		ci := i
		if s.Color > 0 {
			ci = s.Color - 1
		}
		col := plotutil.Color(ci)
		if s.Points {
			sc, err := plotter.NewScatter(xy)
			if err != nil {
				return nil, err
			}
			sc.GlyphStyle.Color = col
			sc.GlyphStyle.Shape = plotutil.Shape(i)
			p.Add(sc)
			p.Legend.Add(s.Name, sc)
		} else {
			l, err := plotter.NewLine(xy)
			if err != nil {
				return nil, err
			}
			l.LineStyle.Color = col
			l.LineStyle.Width = vg.Points(1.5)
			if s.Dashed {
				l.LineStyle.Dashes = []vg.Length{vg.Points(5), vg.Points(3)}
				l.LineStyle.Width = vg.Points(1)
			}
			p.Add(l)
			p.Legend.Add(s.Name, l)
		}
		drawn++
	}
	if drawn == 0 {
		return nil, fmt.Errorf("no finite points to draw")
	}
	// A single value gives an empty range, which a log axis cannot tick:
	// widen it by a factor of 2 (log) or ±1 (linear) around the value.
	widen(&p.X.Min, &p.X.Max, pn.LogX)
	widen(&p.Y.Min, &p.Y.Max, pn.LogY)
	return p, nil
}

func widen(lo, hi *float64, log bool) {
	if *lo != *hi {
		return
	}
	if log {
		*lo, *hi = *lo/2, *hi*2
	} else {
		*lo, *hi = *lo-1, *hi+1
	}
}

func writeFile(path string, png vgimg.PngCanvas) error {
	f, err := os.Create(path)
	if err != nil {
		return fmt.Errorf("plotx: %w", err)
	}
	if _, err := png.WriteTo(f); err != nil {
		f.Close()
		return fmt.Errorf("plotx: writing %s: %w", path, err)
	}
	return f.Close()
}
