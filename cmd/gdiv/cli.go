package main

import "github.com/gdiv/gdiv/cmd/gdiv/internal/cli"

// The helpers the user commands share with the experiments live in package
// cli; these names keep the commands' code as it was.

type (
	usageError   = cli.UsageError
	labeledError = cli.LabeledError
	problemFlags = cli.ProblemFlags
	policyFlags  = cli.PolicyFlags
)

const (
	exitOK    = cli.ExitOK
	exitData  = cli.ExitData
	exitUsage = cli.ExitUsage
)

func usagef(format string, args ...any) error { return cli.Usagef(format, args...) }

var (
	oneLine         = cli.OneLine
	parseArgs       = cli.ParseArgs
	flagError       = cli.FlagError
	given           = cli.Given
	nonFinite       = cli.NonFinite
	jsonValue       = cli.JSONValue
	addProblemFlags = cli.AddProblemFlags
	addPolicyFlags  = cli.AddPolicyFlags
)
