package main

import (
	"strings"
	"testing"
)

// The experiments are tested in package experiment; this checks the CLI's
// wiring: the command table, help and the exit statuses.
func TestExperimentDispatch(t *testing.T) {
	for _, args := range [][]string{{"experiment", "--help"}, {"help", "experiment"}} {
		code, out, _ := gdivRun(t, "", args...)
		if code != 0 {
			t.Errorf("%v: exit %d", args, code)
		}
		for _, w := range []string{"replication", "stability", "adaptive", "--quick", "--csv", "--plot", "batch_bound_w0", "gamma_eq9", "subopt_ratio"} {
			if !strings.Contains(out, w) {
				t.Errorf("%v: help lacks %q", args, w)
			}
		}
	}
	code, out, _ := gdivRun(t, "", "--help")
	if code != 0 || !strings.Contains(out, "experiment") {
		t.Errorf("gdiv --help: exit %d, lists no experiment command", code)
	}
	code, _, errs := gdivRun(t, "", "experiment", "stability", "--bogus")
	if code != exitUsage || !strings.HasPrefix(errs, "gdiv: experiment stability: ") || !strings.Contains(errs, "bogus") {
		t.Errorf("bad flag: exit %d, %q", code, errs)
	}
	code, _, errs = gdivRun(t, "", "experiment", "stability", "--quick", "--quiet", "--data", t.TempDir()+"/none.csv")
	if code != exitData || !strings.HasPrefix(errs, "gdiv: experiment stability: ") {
		t.Errorf("missing file: exit %d, %q", code, errs)
	}
}
