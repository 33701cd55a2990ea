package main

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

var trainKeys = []string{"data", "problem", "n", "params", "steps", "examples", "initial_loss", "final_loss",
	"train_accuracy", "first_batch", "final_batch", "max_batch_used", "batch_bound", "wall_seconds"}

func TestTrainFixedAndAdaptive(t *testing.T) {
	dir := t.TempDir()
	hist, png := filepath.Join(dir, "h.csv"), filepath.Join(dir, "h.png")
	code, out, errOut := gdivRun(t, "", "train", "--data", "digits", "--problem", "softmax", "--lr", "0.01",
		"--batch", "16", "--epochs", "2", "--seed", "3", "--format", "json", "--out", hist, "--plot", png)
	if code != 0 {
		t.Fatalf("exit %d: %s", code, errOut)
	}
	v := jsonResult(t, out, trainKeys)
	if v["n"].(float64) != 1797 || v["params"].(float64) != 650 || v["steps"].(float64) != 225 || v["examples"].(float64) != 3600 {
		t.Errorf("n/params/steps/examples = %v/%v/%v/%v, want 1797/650/225/3600", v["n"], v["params"], v["steps"], v["examples"])
	}
	if !(v["final_loss"].(float64) < 0.5*v["initial_loss"].(float64)) || v["train_accuracy"].(float64) < 0.9 {
		t.Errorf("training did not progress: %v", v)
	}
	// Progress goes to stderr, about twenty lines.
	if n := strings.Count(errOut, "train: "); n < 10 || n > 25 {
		t.Errorf("%d progress lines on stderr, want about 20:\n%s", n, errOut)
	}
	csv, err := os.ReadFile(hist)
	if err != nil || !bytes.HasPrefix(csv, []byte("step,examples,batch,lr,")) || bytes.Count(csv, []byte("\n")) != 226 {
		t.Errorf("history CSV: %d lines, err %v", bytes.Count(csv, []byte("\n")), err)
	}
	if b, err := os.ReadFile(png); err != nil || !bytes.HasPrefix(b, []byte("\x89PNG")) {
		t.Errorf("plot not written: %v", err)
	}

	// Same seed → identical history bytes; the summary differs only in wall time.
	hist2 := filepath.Join(dir, "h2.csv")
	if code, _, e := gdivRun(t, "", "train", "--data", "digits", "--lr", "0.01", "--batch", "16", "--epochs", "2",
		"--seed", "3", "--out", hist2, "--quiet"); code != 0 {
		t.Fatal(e)
	}
	if csv2, _ := os.ReadFile(hist2); !bytes.Equal(csv, csv2) {
		t.Error("same seed gave a different history")
	}

	// Adaptive: the batch grows with the estimate, within the policy's bounds.
	code, out, errOut = gdivRun(t, "", "train", "--data", "digits", "--lr", "0.01", "--policy", "diversity",
		"--min-batch", "16", "--max-batch", "512", "--multiple-of", "8", "--epochs", "5", "--format", "json", "--quiet")
	if code != 0 {
		t.Fatalf("adaptive: exit %d: %s", code, errOut)
	}
	if errOut != "" {
		t.Errorf("--quiet printed %q", errOut)
	}
	v = jsonResult(t, out, trainKeys)
	if v["first_batch"].(float64) != 16 || v["max_batch_used"].(float64) <= 64 || v["max_batch_used"].(float64) > 512 {
		t.Errorf("adaptive batches: first %v, max used %v", v["first_batch"], v["max_batch_used"])
	}
	if int(v["final_batch"].(float64))%8 != 0 {
		t.Errorf("final batch %v is not a multiple of 8", v["final_batch"])
	}
}

func TestTrainOtherProblemsAndFile(t *testing.T) {
	for _, args := range [][]string{
		{"--data", "breast_cancer", "--problem", "logistic", "--lr", "0.05", "--batch", "8", "--steps", "50"},
		{"--data", "digits", "--problem", "logistic", "--positive", "0,2,4,6,8", "--lr", "0.01", "--batch", "8", "--steps", "50"},
		{"--data", "digits", "--problem", "mlp", "--hidden", "8", "--activation", "relu", "--lr", "0.01", "--batch", "8", "--steps", "50"},
		{"--data", "digits", "--problem", "softmax", "--lr", "0.1", "--step", "mean", "--batch", "32", "--steps", "30",
			"--sampling", "shuffle", "--radius", "10", "--mechanism", "dropout", "--p", "0.3"},
	} {
		if code, _, e := gdivRun(t, "", append([]string{"train", "--quiet"}, args...)...); code != 0 {
			t.Errorf("%v: exit %d: %s", args, code, e)
		}
	}
	// A regression file: label by name.
	f := writeFile(t, "reg.csv", "a,b,y\n1,0,1\n0,1,2\n1,1,3\n2,1,4.5\n")
	code, out, e := gdivRun(t, "", "train", "--quiet", "--data", f, "--label", "y", "--problem", "leastsquares",
		"--lr", "0.05", "--batch", "2", "--steps", "200", "--format", "json")
	if code != 0 {
		t.Fatalf("regression file: exit %d: %s", code, e)
	}
	if v := jsonResult(t, out, trainKeys); v["train_accuracy"].(float64) != -1 || v["final_loss"].(float64) > 0.5 {
		t.Errorf("regression: %v", v)
	}
}

func TestTrainErrors(t *testing.T) {
	labels := writeFile(t, "labels.csv", "x1,x2,label\n1,2,0\n3,4,1\n5,6,7\n")
	ragged := writeFile(t, "ragged.csv", "x1,x2,label\n1,2,0\n3,1\n")
	for _, tc := range []struct {
		name string
		code int
		args []string
		msg  string
	}{
		{"unknown data set", 2, []string{"--data", "mnist", "--lr", "1", "--batch", "4", "--steps", "1"}, "unknown data set"},
		{"missing data", 2, []string{"--lr", "1", "--batch", "4", "--steps", "1"}, "missing --data"},
		{"lr zero", 2, []string{"--data", "digits", "--lr", "0", "--batch", "4", "--steps", "1"}, "--lr"},
		{"lr negative", 2, []string{"--data", "digits", "--lr", "-1", "--batch", "4", "--steps", "1"}, "--lr"},
		{"no lr", 2, []string{"--data", "digits", "--batch", "4", "--steps", "1"}, "missing --lr"},
		{"no batch", 2, []string{"--data", "digits", "--lr", "1", "--steps", "1"}, "missing --batch"},
		{"steps and epochs", 2, []string{"--data", "digits", "--lr", "1", "--batch", "4", "--steps", "1", "--epochs", "1"}, "exactly one"},
		{"min > max", 2, []string{"--data", "digits", "--lr", "1", "--policy", "diversity", "--min-batch", "64", "--max-batch", "8", "--steps", "1"}, "max"},
		{"policy flag without policy", 2, []string{"--data", "digits", "--lr", "1", "--batch", "4", "--delta", "2", "--steps", "1"}, "--delta applies only"},
		{"unknown problem", 2, []string{"--data", "digits", "--problem", "svm", "--lr", "1", "--batch", "4", "--steps", "1"}, "unknown --problem"},
		{"logistic on 10 classes", 2, []string{"--data", "digits", "--problem", "logistic", "--lr", "1", "--batch", "4", "--steps", "1"}, "needs 2 classes"},
		{"positive out of range", 2, []string{"--data", "digits", "--problem", "logistic", "--positive", "3,11", "--lr", "1", "--batch", "4", "--steps", "1"}, "not a class label"},
		{"label out of range", 1, []string{"--data", labels, "--classes", "2", "--lr", "1", "--batch", "2", "--steps", "1"}, "row 2"},
		{"ragged row", 1, []string{"--data", ragged, "--lr", "1", "--batch", "2", "--steps", "1"}, "line 3"},
		{"mechanism flag alone", 2, []string{"--data", "digits", "--lr", "1", "--batch", "4", "--steps", "1", "--p", "0.5"}, "without --mechanism"},
		{"diverges", 1, []string{"--data", "digits", "--problem", "leastsquares", "--lr", "1e3", "--batch", "64", "--steps", "500"}, "at step"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			code, out, errOut := gdivRun(t, "", append([]string{"train", "--quiet"}, tc.args...)...)
			lines := strings.Split(strings.TrimSpace(errOut), "\n")
			if code != tc.code || out != "" || len(lines) != 1 || !strings.HasPrefix(lines[0], "gdiv: train: ") || !strings.Contains(lines[0], tc.msg) {
				t.Errorf("exit %d (want %d), stdout %q, stderr %q (want one line containing %q)", code, tc.code, out, errOut, tc.msg)
			}
		})
	}
}
