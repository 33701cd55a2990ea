// Package cli holds what the gdiv command's user commands (package main)
// and its research experiments (package experiment) share: the exit
// statuses, the usage and labeled errors and how they are reported, flag
// parsing, the problem and policy flags, and JSON value formatting. It
// computes nothing: every formula comes from package gdiv, the problems and
// the trainer from gdiv/train, the data sets from gdiv/data.
package cli

import (
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"math"
	"strconv"
	"strings"
)

// Exit statuses.
const (
	ExitOK    = 0
	ExitData  = 1 // the input data (or a file) is bad
	ExitUsage = 2 // the command line is bad
)

// UsageError is a problem with the command line: exit status 2.
type UsageError struct{ Msg string }

func (e *UsageError) Error() string { return e.Msg }

// Usagef returns a *UsageError with the formatted message.
func Usagef(format string, args ...any) error {
	return &UsageError{Msg: fmt.Sprintf(format, args...)}
}

// LabeledError carries a more specific command label for the error line
// ("bound glm", "experiment stability").
type LabeledError struct {
	Label string
	Err   error
}

func (e *LabeledError) Error() string { return e.Err.Error() }
func (e *LabeledError) Unwrap() error { return e.Err }

// Report prints the outcome of command name (whose --help text is usage)
// and returns the exit status: flag.ErrHelp prints usage to stdout (0); any
// other error is one line on stderr, "gdiv: LABEL: MESSAGE", with a hint to
// --help for a *UsageError (2) and without for bad data (1).
func Report(stdout, stderr io.Writer, name, usage string, err error) int {
	if err == nil {
		return ExitOK
	}
	if errors.Is(err, flag.ErrHelp) {
		fmt.Fprint(stdout, usage)
		return ExitOK
	}
	// A command may refine its name ("bound glm").
	label := name
	var le *LabeledError
	if errors.As(err, &le) {
		label = le.Label
		err = le.Err
	}
	msg := OneLine(strings.TrimPrefix(err.Error(), "gdiv: "))
	var ue *UsageError
	if errors.As(err, &ue) {
		fmt.Fprintf(stderr, "gdiv: %s: %s (see 'gdiv %s --help')\n", label, msg, name)
		return ExitUsage
	}
	fmt.Fprintf(stderr, "gdiv: %s: %s\n", label, msg)
	return ExitData
}

// OneLine makes s safe for a one-line message.
func OneLine(s string) string {
	s = strings.ToValidUTF8(s, "\uFFFD")
	return strings.Map(func(r rune) rune {
		if r == '\n' || r == '\r' {
			return ' '
		}
		return r
	}, s)
}

// ParseArgs parses flags that may come before, between and after the
// positional arguments (the flag package alone stops at the first
// positional). Everything after "--" is positional.
func ParseArgs(fs *flag.FlagSet, args []string) ([]string, error) {
	var pos []string
	for {
		if err := fs.Parse(args); err != nil {
			return nil, err
		}
		rest := fs.Args()
		if used := len(args) - len(rest); used > 0 && args[used-1] == "--" {
			return append(pos, rest...), nil
		}
		if len(rest) == 0 {
			return pos, nil
		}
		pos = append(pos, rest[0])
		args = rest[1:]
	}
}

// FlagError turns a flag package error into a usage error; --help passes.
func FlagError(err error) error {
	if errors.Is(err, flag.ErrHelp) {
		return err
	}
	return &UsageError{Msg: err.Error()}
}

// Given returns the set of flags set on the command line.
func Given(fs *flag.FlagSet) map[string]bool {
	set := map[string]bool{}
	fs.Visit(func(f *flag.Flag) { set[f.Name] = true })
	return set
}

// NonFinite names +Inf, -Inf and NaN; only +Inf can occur in results.
func NonFinite(v float64) (string, bool) {
	switch {
	case math.IsInf(v, 1):
		return "inf", true
	case math.IsInf(v, -1):
		return "-inf", true
	case math.IsNaN(v):
		return "nan", true
	}
	return "", false
}

// JSONValue encodes v as JSON, writing +Inf, -Inf and NaN as the strings
// "inf", "-inf" and "nan".
func JSONValue(v any) string {
	if f, ok := v.(float64); ok {
		if s, ok := NonFinite(f); ok {
			return strconv.Quote(s)
		}
	}
	b, err := json.Marshal(v)
	if err != nil {
		panic(fmt.Sprintf("gdiv: cannot encode %v: %v", v, err))
	}
	return string(b)
}

// Env is what an experiment needs from the process: where its results
// (stdout) and progress lines (stderr) go.
type Env struct {
	Stdout, Stderr io.Writer
}
