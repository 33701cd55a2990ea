package main

import (
	"github.com/gdiv/gdiv/cmd/gdiv/internal/cli"
	"github.com/gdiv/gdiv/cmd/gdiv/internal/experiment"
)

// experimentCmd dispatches "gdiv experiment ..." to package experiment.
var experimentCmd = &command{
	name:    experiment.Name,
	summary: experiment.Summary,
	usage:   experiment.Usage,
	run: func(e *env, args []string) error {
		return experiment.Run(&cli.Env{Stdout: e.stdout, Stderr: e.stderr}, args)
	},
}
