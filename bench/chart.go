package bench

import (
	"bytes"
	"fmt"
	"image/color"

	"gonum.org/v1/plot"
	"gonum.org/v1/plot/font"
	"gonum.org/v1/plot/plotter"
	"gonum.org/v1/plot/vg"
	"gonum.org/v1/plot/vg/draw"
	"gonum.org/v1/plot/vg/vgimg"
)

var (
	colPeer    = color.RGBA{R: 0x8c, G: 0x8c, B: 0x8c, A: 0xff} // plain Redis and Redis Cluster
	colPubmesh = color.RGBA{R: 0x1f, G: 0x77, B: 0xb4, A: 0xff}
	colLatency = color.RGBA{R: 0xd6, G: 0x61, B: 0x2a, A: 0xff}
)

// Chart draws the report as a PNG: delivered/s and p99 latency by target
// (top), Redis CPU per message by target and pubmesh p99 at fixed offered
// rates (middle), delivered/s and p99 by pubmesh node count (bottom).
func (r *Report) Chart() ([]byte, error) {
	var names, rowNums []string // the right plots name rows by number only
	var deliv, p99, rcpu plotter.Values
	var pubmesh []bool
	// Rows are drawn top to bottom in table order: NominalY counts upwards.
	for i := len(r.Rows) - 1; i >= 0; i-- {
		x := r.Rows[i]
		if x.Err != "" {
			continue
		}
		names = append(names, fmt.Sprintf("%d %s", x.Row, x.Label))
		rowNums = append(rowNums, fmt.Sprintf("row %d", x.Row))
		deliv = append(deliv, x.DeliveredPerSec/1e6)
		p99 = append(p99, x.P99us/1000)
		rcpu = append(rcpu, x.RedisCPUPerMsgUs)
		pubmesh = append(pubmesh, x.Row >= 5)
	}
	byTarget1, err := hbars("Delivered messages/s by target (millions)", "M msg/s", names, deliv, pubmesh, colPubmesh, rateLabel)
	if err != nil {
		return nil, err
	}
	byTarget2, err := hbars("p99 end-to-end latency by target, at max rate (ms)", "ms", rowNums, p99, pubmesh, colLatency, msLabel)
	if err != nil {
		return nil, err
	}

	var nn []string
	var nd, np plotter.Values
	var all []bool
	for _, x := range r.Scaling {
		if x.Err != "" {
			continue
		}
		nn = append(nn, fmt.Sprintf("%d", x.Nodes))
		nd = append(nd, x.DeliveredPerSec/1e6)
		np = append(np, x.P99us/1000)
		all = append(all, true)
	}
	byNodes1, err := vbars("pubmesh delivered/s by node count (millions)", "nodes", "M msg/s", nn, nd, all, colPubmesh, rateLabel)
	if err != nil {
		return nil, err
	}
	byNodes2, err := vbars("pubmesh p99 latency by node count, at max rate (ms)", "nodes", "ms", nn, np, all, colLatency, msLabel)
	if err != nil {
		return nil, err
	}

	byTarget3, err := hbars("Redis CPU per delivered message by target (µs)", "µs", names, rcpu, pubmesh, colPubmesh,
		func(v float64) string { return fmt.Sprintf("%.2f µs", v) })
	if err != nil {
		return nil, err
	}
	var ln []string
	var lp plotter.Values
	var lall []bool
	for _, x := range r.Latency {
		if x.Err != "" || x.LoadFraction >= 1 {
			continue
		}
		who := "pubmesh"
		switch {
		case x.Reference:
			who = "redis"
		case x.History:
			who = "history"
		}
		ln = append(ln, fmt.Sprintf("%.0f%%\n%s", x.LoadFraction*100, who))
		lp = append(lp, x.P99us/1000)
		lall = append(lall, !x.Reference)
	}
	byLoad, err := vbars("p99 latency at fixed offered rates (ms)",
		"offered rate, % of row 5's max (grey: plain go-redis at the same rate; dashed: 2 ms)", "ms", ln, lp, lall, colLatency, msLabel)
	if err != nil {
		return nil, err
	}
	if len(lp) > 0 {
		target, err := plotter.NewLine(plotter.XYs{{X: -0.5, Y: 2}, {X: float64(len(lp)) - 0.5, Y: 2}})
		if err != nil {
			return nil, fmt.Errorf("bench: chart: %w", err)
		}
		target.Dashes = []vg.Length{vg.Points(4), vg.Points(3)}
		byLoad.Add(target)
	}

	const w, h = 30 * vg.Centimeter, 30 * vg.Centimeter
	img := vgimg.NewWith(vgimg.UseWH(w, h), vgimg.UseDPI(110))
	dc := draw.New(img)
	title := fmt.Sprintf("pubmesh benchmark %s — %s", r.Started.UTC().Format("2006-01-02 15:04Z"), r.Machine.short())
	dc.FillText(draw.TextStyle{Color: color.Black, Font: font.From(plot.DefaultFont, 13), Handler: plot.DefaultTextHandler,
		XAlign: draw.XCenter, YAlign: draw.YTop}, vg.Point{X: w / 2, Y: h - 2*vg.Millimeter}, title)
	body := draw.Crop(dc, 0, 0, 0, -8*vg.Millimeter)
	tiles := draw.Tiles{Rows: 3, Cols: 2, PadX: 6 * vg.Millimeter, PadY: 6 * vg.Millimeter,
		PadTop: 2 * vg.Millimeter, PadBottom: 2 * vg.Millimeter, PadLeft: 2 * vg.Millimeter, PadRight: 4 * vg.Millimeter}
	plots := [][]*plot.Plot{{byTarget1, byTarget2}, {byTarget3, byLoad}, {byNodes1, byNodes2}}
	canvases := plot.Align(plots, tiles, body)
	for i := range plots {
		for j := range plots[i] {
			plots[i][j].Draw(canvases[i][j])
		}
	}
	var buf bytes.Buffer
	if _, err := (vgimg.PngCanvas{Canvas: img}).WriteTo(&buf); err != nil {
		return nil, fmt.Errorf("bench: chart: %w", err)
	}
	return buf.Bytes(), nil
}

// rateLabel writes millions of messages per second as "359k/s".
func rateLabel(v float64) string { return si(v*1e6) + "/s" }

// msLabel writes milliseconds.
func msLabel(v float64) string { return ms(v * 1000) }

func (m Machine) short() string {
	return fmt.Sprintf("%d CPUs, %s", m.CPUs, m.CPUModel)
}

// hbars is a horizontal bar chart, one bar per name; highlighted bars get
// col, the others grey.
func hbars(title, unit string, names []string, vals plotter.Values, highlight []bool, col color.Color, label func(float64) string) (*plot.Plot, error) {
	p := plot.New()
	p.Title.Text = title
	p.X.Label.Text = unit
	p.X.Min = 0
	if err := addBars(p, vals, highlight, col, true, label); err != nil {
		return nil, err
	}
	p.NominalY(names...)
	return p, nil
}

// vbars is a vertical bar chart with names along X.
func vbars(title, xlabel, unit string, names []string, vals plotter.Values, highlight []bool, col color.Color, label func(float64) string) (*plot.Plot, error) {
	p := plot.New()
	p.Title.Text = title
	p.X.Label.Text = xlabel
	p.Y.Label.Text = unit
	p.Y.Min = 0
	if err := addBars(p, vals, highlight, col, false, label); err != nil {
		return nil, err
	}
	p.NominalX(names...)
	return p, nil
}

// addBars adds one BarChart per bar (so each has its colour), with its
// value written beside it.
func addBars(p *plot.Plot, vals plotter.Values, highlight []bool, col color.Color, horizontal bool, label func(float64) string) error {
	if len(vals) == 0 {
		p.Title.Text += " — not measured"
		return nil
	}
	for i, v := range vals {
		single := make(plotter.Values, len(vals))
		single[i] = v
		b, err := plotter.NewBarChart(single, vg.Points(14))
		if err != nil {
			return fmt.Errorf("bench: chart: %w", err)
		}
		b.Horizontal = horizontal
		b.LineStyle.Width = 0
		b.Color = colPeer
		if highlight[i] {
			b.Color = col
		}
		p.Add(b)
		x, y := float64(i), v
		if horizontal {
			x, y = v, float64(i)
		}
		lbl, err := plotter.NewLabels(plotter.XYLabels{XYs: plotter.XYs{{X: x, Y: y}}, Labels: []string{" " + label(v)}})
		if err != nil {
			return fmt.Errorf("bench: chart: %w", err)
		}
		if horizontal {
			lbl.TextStyle[0].YAlign = draw.YCenter
		} else {
			lbl.TextStyle[0].XAlign = draw.XCenter
		}
		p.Add(lbl)
	}
	top := 0.0
	for _, v := range vals {
		top = max(top, v)
	}
	if horizontal {
		p.X.Max = top * 1.2
	} else {
		p.Y.Max = top * 1.2
	}
	return nil
}
