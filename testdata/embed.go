// Package datasets exposes the small real data sets committed in this
// directory (see README.md for their sources and licences) as embedded
// bytes, so that nothing is read from disk or downloaded at run time.
//
// Use them through data.LoadBuiltin (package gdiv/data), which parses and
// validates them; this package only holds the raw CSV text. The directory
// is named testdata, so "./..." patterns skip it, but it is an ordinary
// importable package: github.com/gdiv/gdiv/testdata.
package datasets

import _ "embed"

// DigitsCSV is digits.csv: 1797 rows of 8×8 images (pixel_0 … pixel_63,
// integers 0–16) and a label column (digit 0–9), with a header line.
//
//go:embed digits.csv
var DigitsCSV []byte

// BreastCancerCSV is breast_cancer.csv: 569 rows of 30 real features and a
// label column (0 = malignant, 1 = benign), with a header line.
//
//go:embed breast_cancer.csv
var BreastCancerCSV []byte
