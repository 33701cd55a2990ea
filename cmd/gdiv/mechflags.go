package main

import (
	"flag"
	"math"
	"sort"
	"strings"

	"github.com/gdiv/gdiv/gdiv"
)

// mechanismFlags lists the flags that belong to each mechanism.
var mechanismFlags = map[string][]string{
	"dropout":  {"p", "rescale"},
	"langevin": {"std"},
	"quantize": {"levels"},
}

// mechFlags are the flags that choose a diversity-inducing mechanism; dim,
// train and the experiments share them.
type mechFlags struct {
	name    *string
	p       *float64
	rescale *bool
	std     *float64
	levels  *int
}

func addMechFlags(fs *flag.FlagSet) *mechFlags {
	return &mechFlags{
		name:    fs.String("mechanism", "", "dropout, langevin or quantize"),
		p:       fs.Float64("p", 0, "dropout probability"),
		rescale: fs.Bool("rescale", false, "rescale kept coordinates by 1/(1-p)"),
		std:     fs.Float64("std", 0, "Langevin noise standard deviation"),
		levels:  fs.Int("levels", 1, "quantization levels"),
	}
}

// build returns the mechanism the flags describe, nil when --mechanism was
// not given and required is false. set is given(fs).
func (f *mechFlags) build(set map[string]bool, required bool) (gdiv.Mechanism, error) {
	if !set["mechanism"] {
		var stray []string
		for _, fl := range mechanismFlags {
			for _, name := range fl {
				if set[name] {
					stray = append(stray, "--"+name)
				}
			}
		}
		if len(stray) > 0 {
			sort.Strings(stray)
			return nil, usagef("%s given without --mechanism", strings.Join(stray, ", "))
		}
		if required {
			return nil, usagef("missing --mechanism (dropout, langevin or quantize)")
		}
		return nil, nil
	}
	own, ok := mechanismFlags[*f.name]
	if !ok {
		return nil, usagef("unknown mechanism %q: want dropout, langevin or quantize", *f.name)
	}
	var others []string
	for _, fl := range mechanismFlags {
		for _, name := range fl {
			if set[name] && !contains(own, name) {
				others = append(others, "--"+name)
			}
		}
	}
	if len(others) > 0 {
		sort.Strings(others)
		return nil, usagef("%s does not apply to --mechanism %s (its flags: --%s)", strings.Join(others, ", "), *f.name, strings.Join(own, ", --"))
	}
	var m gdiv.Mechanism
	switch *f.name {
	case "dropout":
		if !set["p"] {
			return nil, usagef("--mechanism dropout needs --p (drop probability, 0 <= p < 1)")
		}
		if !(*f.p >= 0 && *f.p < 1) {
			return nil, usagef("--p %v is out of range: want 0 <= p < 1", *f.p)
		}
		m = gdiv.Dropout{P: *f.p, Rescale: *f.rescale}
	case "langevin":
		if !set["std"] {
			return nil, usagef("--mechanism langevin needs --std (noise standard deviation, >= 0)")
		}
		if !(*f.std >= 0 && *f.std <= math.MaxFloat64) {
			return nil, usagef("--std %v is out of range: want a finite std >= 0", *f.std)
		}
		m = gdiv.Langevin{Std: *f.std}
	case "quantize":
		if *f.levels < 1 {
			return nil, usagef("--levels %d is out of range: want levels >= 1", *f.levels)
		}
		m = gdiv.Quantize{Levels: *f.levels}
	}
	if err := m.Validate(); err != nil {
		return nil, usagef("%s", strings.TrimPrefix(err.Error(), "gdiv: "))
	}
	return m, nil
}
