// Package data reads the matrices and data sets that package gdiv's
// statistics and package train's problems work on. It computes no
// formula: every statistic is in package gdiv.
//
// # Matrices
//
// A Matrix is a dense row-major float64 matrix, one example (a gradient or
// a feature vector) per row, with the column names of the file when it has
// them. The readers accept
//
//	.csv .txt .tsv   delimited text, a header line when any cell is not a number (ReadCSV)
//	.npy             NumPy 2-D float32/float64, C or Fortran order (ReadNPY)
//	.arrow .feather  Arrow IPC file or stream: one fixed_size_list<float32|float64>
//	.ipc .arrows     column, or only float32/float64 columns (ReadArrowIPC, arrow-go)
//
// and ReadMatrixFile / ReadMatrix choose by extension or sniff the content.
// Every returned Matrix has Rows ≥ 1, Cols ≥ 1 and only finite entries;
// SelectColumns takes indices, Python slices or header names. Bad files give
// a *ReadError wrapping ErrFormat or one of gdiv's sentinels (ErrNonFinite,
// ErrEmpty, ErrZeroDim), naming the line and column (CSV) or the 0-based
// row and column (binary formats). Corrupt input is an error, never a
// crash; the fuzz targets check that.
//
// # Data sets (Section 3, eq. 1)
//
// A Dataset holds n examples (x_i, y_i): features X (row-major n×d) and
// targets Y, either real values (Classes = 0, regression) or class labels
// 0..Classes−1. LoadBuiltin gives the bundled data ("digits",
// "breast_cancer", embedded in the binary from the repository's testdata/);
// ReadDataset and ReadDatasetClasses read any matrix file with a label
// column. Subset, Binary (one class against the rest), Standardize and
// Scaler prepare them; bad labels give ErrLabel.
package data
