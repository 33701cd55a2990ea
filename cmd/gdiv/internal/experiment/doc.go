// Package experiment implements "gdiv experiment": the paper's experiments
// (Section 6) on the bundled data, run with the Go reference trainer.
//
//	replication  the paper's Figure 3a (Section 6.1): r-replicated data
//	stability    the paper's Figure 4a (Section 6.2) with the quantities
//	             of Theorem 12 and the step-size bound of eq. 9
//	adaptive     a fixed batch against gdiv's batch-size policy,
//	             B = δ·B̂_S + 1 (Theorem 3)
//
// Every formula (losses, gradients, statistics, bounds, the trainer) comes
// from packages gdiv and gdiv/train; what lives here is orchestration:
// grids, loops over seeds, averages, tables and figures. The CLI's main
// package dispatches to Run; flags and errors shared with the user commands
// come from package cli.
package experiment
