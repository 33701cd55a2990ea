// Command gdiv measures the gradient diversity of Yin et al. ("Gradient
// Diversity: a Key Ingredient for Scalable Distributed Learning") from files
// of per-example gradients, using package github.com/gdiv/gdiv/gdiv for
// every formula.
//
// Usage:
//
//	gdiv stats FILE                       diversity and batch-size bound
//	gdiv diff FILE_W FILE_W2              differential diversity (Definition 6)
//	gdiv dim --mechanism M [flags] FILE   expected diversity under a DIM
//	gdiv bound glm|sparse FILE            lower bounds on the batch-size bound
//
// Run "gdiv help" or "gdiv COMMAND --help" for details. Exit status: 0 on
// success, 1 for bad data (unreadable file, NaN, all-zero gradients), 2 for
// usage errors; an error is one line on stderr, "gdiv: COMMAND: MESSAGE".
package main

import (
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"os"
	"runtime/debug"
	"strconv"
	"strings"
	"unicode/utf8"

	"github.com/gdiv/gdiv/cmd/gdiv/internal/cli"
	"github.com/gdiv/gdiv/gdiv"
	"github.com/gdiv/gdiv/gdiv/data"
)

func main() {
	os.Exit(run(os.Args[1:], os.Stdin, os.Stdout, os.Stderr))
}

// env is what a command needs from the process.
type env struct {
	stdin          io.Reader
	stdout, stderr io.Writer
}

// command is one subcommand.
type command struct {
	name    string
	summary string
	usage   string // full help text, printed by --help
	run     func(e *env, args []string) error
}

// commands in the order "gdiv help" lists them; filled in by init to avoid
// an initialization cycle (help refers to the table).
var commands []*command

func init() {
	commands = []*command{statsCmd, diffCmd, dimCmd, boundCmd, trainCmd, experimentCmd,
		{name: "help", summary: "show help for gdiv or for a command", usage: helpUsage, run: runHelp},
		{name: "version", summary: "print the version", usage: versionUsage, run: runVersion},
	}
}

func lookup(name string) *command {
	for _, c := range commands {
		if c.name == name {
			return c
		}
	}
	return nil
}

const commonHelp = `Input files hold one example per row:
  .csv .txt       comma-separated numbers; line 1 is a header of column names
                  when any of its cells is not a number
  .tsv            tab-separated, likewise
  .npy            NumPy 2-D float32/float64 array
  .arrow .feather .ipc .arrows
                  Arrow IPC file or stream: one fixed_size_list<float> column
                  (e.g. arrow.fixed_shape_tensor), or only float columns
  other names are sniffed (NumPy or Arrow magic, else CSV); "-" reads CSV
  from standard input.

Flags of every command:
  --format json|table   output format (default table)
  --cols SPEC           use only these columns: comma-separated 0-based
                        indices (-1 = last), Python slices (0:64, :-1, ::2)
                        or header names (label)
  --max-bytes SIZE      the most memory a command may take for its input and
                        arrays (default 4GiB; suffixes K, M, G, T or KiB...):
                        a larger file, a stream (standard input, /dev/zero)
                        running past it, or arrays it would need (dim
                        --samples, train --hidden) are refused before
                        allocating, with a one-line error. The numbers
                        parsed from CSV (8 bytes each) count too.
  --help                show the command's help

Output: table prints aligned "key  value" lines; json prints one object with
the keys the command's help lists, in that order, numbers as JSON numbers.
+Inf (gradients that sum to exactly zero: no signal, any batch size is as
good as any other) is written as inf in tables and as the JSON string "inf".

Exit status: 0 success, 1 bad data (unreadable file, NaN/Inf, all-zero
gradients, shape mismatch), 2 usage error. Errors are one line on stderr:
"gdiv: COMMAND: MESSAGE".
`

const mainUsage = `gdiv measures gradient diversity (Yin et al., "Gradient Diversity: a Key
Ingredient for Scalable Distributed Learning") from per-example gradients:
diversity = sum_i |g_i|^2 / |sum_i g_i|^2 and the batch-size bound
batch_bound = n * diversity, the largest mini-batch size that still speeds up
SGD per gradient computed.

Usage:
  gdiv COMMAND [flags] FILE...
  gdiv COMMAND --help

Commands:
`

const helpUsage = `Usage: gdiv help [COMMAND]

Show the list of commands, or the help of COMMAND (same as gdiv COMMAND --help).
`

const versionUsage = `Usage: gdiv version

Print the module version of this gdiv binary.
`

// run executes the command line args and returns the exit status.
func run(args []string, stdin io.Reader, stdout, stderr io.Writer) int {
	e := &env{stdin: stdin, stdout: stdout, stderr: stderr}
	if len(args) == 0 {
		fmt.Fprintln(stderr, "gdiv: missing command; run 'gdiv --help' for the list")
		return exitUsage
	}
	name := args[0]
	switch name {
	case "-h", "-help", "--help":
		printMainUsage(stdout)
		return exitOK
	case "--version", "-version":
		name = "version"
	}
	c := lookup(name)
	if c == nil {
		if strings.HasPrefix(name, "-") {
			fmt.Fprintf(stderr, "gdiv: flag %s given before the command; run 'gdiv --help' for the list of commands\n", oneLine(name))
		} else {
			fmt.Fprintf(stderr, "gdiv: %s: unknown command; run 'gdiv --help' for the list\n", oneLine(name))
		}
		return exitUsage
	}
	return cli.Report(stdout, stderr, c.name, c.usage, c.run(e, args[1:]))
}

func printMainUsage(w io.Writer) {
	var b strings.Builder
	b.WriteString(mainUsage)
	for _, c := range commands {
		fmt.Fprintf(&b, "  %-11s %s\n", c.name, c.summary)
	}
	b.WriteString("\n")
	b.WriteString(commonHelp)
	fmt.Fprint(w, b.String())
}

func runHelp(e *env, args []string) error {
	fs := flag.NewFlagSet("help", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	pos, err := parseArgs(fs, args)
	if err != nil {
		return flagError(err)
	}
	switch len(pos) {
	case 0:
		printMainUsage(e.stdout)
		return nil
	case 1:
		c := lookup(pos[0])
		if c == nil {
			return usagef("unknown command %q", pos[0])
		}
		fmt.Fprint(e.stdout, c.usage)
		return nil
	}
	return usagef("unexpected argument %q", pos[1])
}

func runVersion(e *env, args []string) error {
	fs := flag.NewFlagSet("version", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	pos, err := parseArgs(fs, args)
	if err != nil {
		return flagError(err)
	}
	if len(pos) > 0 {
		return usagef("unexpected argument %q", pos[0])
	}
	v := "(devel)"
	if bi, ok := debug.ReadBuildInfo(); ok && bi.Main.Version != "" {
		v = bi.Main.Version
	}
	fmt.Fprintf(e.stdout, "gdiv %s\n", v)
	return nil
}

// --- flags -----------------------------------------------------------------

// common holds the flags every file-reading command has.
type common struct {
	format   string
	cols     string
	maxBytes *cli.ByteSize
}

func newFlagSet(name string) (*flag.FlagSet, *common) {
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	fs.SetOutput(io.Discard) // errors are reported by run, help by --help
	c := &common{}
	fs.StringVar(&c.format, "format", "table", "output format: json or table")
	fs.StringVar(&c.cols, "cols", "", "columns to use")
	c.maxBytes = cli.AddMaxBytes(fs)
	return fs, c
}

func (c *common) check() error {
	if c.format != "json" && c.format != "table" {
		return usagef("--format %q: want json or table", c.format)
	}
	return nil
}

// --- input -----------------------------------------------------------------

// readMatrix reads FILE ("-" = CSV on stdin) and applies --cols.
func (e *env) readMatrix(path string, c *common) (*data.Matrix, error) {
	var m *data.Matrix
	var err error
	if path == "-" {
		m, err = data.ReadCSVLimit(e.stdin, "<stdin>", int64(*c.maxBytes))
	} else {
		m, err = data.ReadMatrixFileLimit(path, int64(*c.maxBytes))
	}
	if err != nil {
		return nil, err
	}
	if c.cols != "" {
		s, err := m.SelectColumns(c.cols)
		if err != nil {
			msg := strings.TrimPrefix(err.Error(), gdiv.ErrParam.Error()+": ")
			return nil, usagef("--cols %q: %s: %s", c.cols, displayName(path), msg)
		}
		m = s
	}
	return m, nil
}

func displayName(path string) string {
	if path == "-" {
		return "<stdin>"
	}
	return path
}

// dataErr prefixes a library error with the file it concerns.
func dataErr(path string, err error) error {
	return fmt.Errorf("%s: %s", displayName(path), strings.TrimPrefix(err.Error(), "gdiv: "))
}

// positionals checks the number of positional arguments.
func positionals(pos []string, names ...string) error {
	if len(pos) < len(names) {
		return usagef("missing %s argument", names[len(pos)])
	}
	if len(pos) > len(names) {
		return usagef("unexpected argument %q", pos[len(names)])
	}
	return nil
}

// --- output ----------------------------------------------------------------

// kv is one output line: a key and an int, float64 or string value.
type kv struct {
	key string
	val any
}

// writeResult prints the key/value pairs as a table or a JSON object.
func writeResult(w io.Writer, format string, fields []kv) error {
	var b strings.Builder
	if format == "json" {
		b.WriteString("{\n")
		for i, f := range fields {
			k, _ := json.Marshal(f.key)
			fmt.Fprintf(&b, "  %s: %s", k, jsonValue(f.val))
			if i < len(fields)-1 {
				b.WriteString(",")
			}
			b.WriteString("\n")
		}
		b.WriteString("}\n")
	} else {
		width := 0
		for _, f := range fields {
			width = max(width, utf8.RuneCountInString(f.key))
		}
		for _, f := range fields {
			fmt.Fprintf(&b, "%-*s  %s\n", width, f.key, tableValue(f.val))
		}
	}
	_, err := io.WriteString(w, b.String())
	return err
}

func tableValue(v any) string {
	switch x := v.(type) {
	case float64:
		if s, ok := nonFinite(x); ok {
			return s
		}
		return jsonValue(x) // same digits as the JSON output: 6907012, 1.5e-07
	case int:
		return strconv.Itoa(x)
	case string:
		return x
	}
	return fmt.Sprint(v)
}
