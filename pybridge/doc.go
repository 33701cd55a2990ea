// Package pybridge is the surface that gopy exports to Python as the
// extension module gdiv._gdivgo. It is a boundary, not a second core: it turns
// buffer addresses and Arrow C Data structs into Go slices, calls package
// gdiv, writes the results into a small caller-supplied float64 buffer and
// maps panics and bad input to errors. Every formula lives in package gdiv.
//
// # Conventions (all exports)
//
// Exports are non-generic, take only basic types (uintptr, int, float64,
// uint64, bool) and return (T, error) — gopy leaks a C string per call for a
// bare error result. Each one recovers from panics (a Go panic would abort
// the Python interpreter) and reports them as an "[internal]" error.
//
// Error messages start with a tag in square brackets naming the class of the
// problem, which the Python package maps to an exception type:
//
//	[empty] [zero_dim] [non_finite] [overflow] [all_zero] [too_few]
//	[shape] [param] [label] [null]   → ValueError subclasses
//	[type]                           → TypeError
//	[internal]                       → RuntimeError (a bug: please report)
//
// Results are written to out, the address of a float64 buffer of the length
// the export documents (a count written as a float64 is exact below 2^53).
// Multiple results through one caller-owned buffer cost one cgo call and no
// allocation; gopy's struct and slice returns cost a handle and one call per
// field.
//
// # Inputs
//
// A matrix operand is described by (kind, addr, aux, n, d):
//
//	kind 0 (kindF64): addr is the address of n·d float64 values, row-major
//	kind 1 (kindF32): addr is the address of n·d float32 values, row-major
//	kind 2 (kindArrow): addr is a struct ArrowArray*, aux a struct ArrowSchema*
//	                  (Arrow C Data Interface); n and d are ignored and come
//	                  from the array, a FixedSizeList<float32|float64> or an
//	                  extension type (arrow.fixed_shape_tensor) stored as one.
//
// Settings with several fields cross as small float64 buffers owned by the
// caller, with integer fields (and enum codes, the values of the core's
// constants) written as exact float64 values: the batch-size policy
// (policy.go), the problem spec and SGD settings of the reference trainer
// (reference.go). Example indices cross as int64 buffers.
//
// # Ownership
//
// Raw buffers belong to the caller, who validated them (dtype, shape,
// C-contiguity, alignment, writability) and keeps them alive for the whole
// call: Go cannot check the length behind an address. Go reads (and, for the
// in-place mechanisms, writes) that memory directly — zero copy — and keeps no
// reference to it after returning. The memory is not Go-allocated, so the cgo
// pointer rules do not apply to it.
//
// Arrow structs are imported with arrow-go's cdata.ImportCArray, which moves
// the producer's ArrowArray (marking the caller's struct released) and views
// its buffers without copying; the schema is released at import. The
// imported array is released — running the producer's release callback —
// before the export returns, on every path, errors included.
package pybridge
