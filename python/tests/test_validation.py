"""Every bad input is rejected before (or as) it crosses, with a clear error.

One test per problem; each checks the exception type and that the message
names the problem.
"""

from __future__ import annotations

import numpy as np
import pytest

import gdiv
from conftest import needs_arrow, needs_torch, pa, pyarrow_matrix, torch
from gdiv._bridge import lib

# -- numpy -------------------------------------------------------------------


def test_rejects_1d():
    with pytest.raises(ValueError, match="2-D"):
        gdiv.stats(np.ones(5))


def test_rejects_3d():
    with pytest.raises(ValueError, match=r"2-D.*\(2, 3, 4\)"):
        gdiv.stats(np.ones((2, 3, 4)))


def test_rejects_integer_dtype():
    with pytest.raises(TypeError, match="int64"):
        gdiv.stats(np.ones((2, 3), dtype=np.int64))


def test_rejects_float16():
    with pytest.raises(TypeError, match="float16"):
        gdiv.stats(np.ones((2, 3), dtype=np.float16))


def test_rejects_complex():
    with pytest.raises(TypeError, match="complex"):
        gdiv.stats(np.ones((2, 3), dtype=np.complex128))


def test_rejects_non_native_byte_order():
    with pytest.raises(TypeError, match="byte order"):
        gdiv.stats(np.ones((2, 3), dtype=">f8"))


def test_rejects_non_contiguous():
    with pytest.raises(ValueError, match="C-contiguous"):
        gdiv.stats(np.ones((4, 6))[:, ::2])


def test_rejects_fortran_order():
    with pytest.raises(ValueError, match="C-contiguous"):
        gdiv.stats(np.asfortranarray(np.ones((4, 6))))


def test_rejects_misaligned():
    buf = bytearray(8 * 6 + 1)
    g = np.frombuffer(buf, dtype=np.float64, offset=1, count=6).reshape(2, 3)
    assert not g.flags.aligned
    with pytest.raises(ValueError, match="aligned"):
        gdiv.stats(g)


def test_rejects_read_only_for_in_place():
    g = np.ones((2, 3))
    g.setflags(write=False)
    with pytest.raises(ValueError, match="read-only"):
        gdiv.Dropout(0.5).apply_(g, seed=1)


def test_rejects_list_for_in_place():
    with pytest.raises(TypeError, match="in-place"):
        gdiv.Dropout(0.5).apply_([[1.0, 2.0]], seed=1)


def test_rejects_object_array_like():
    with pytest.raises(TypeError):
        gdiv.stats([["a", "b"], ["c", "d"]])


def test_rejects_ragged_list():
    with pytest.raises(TypeError, match="convert"):
        gdiv.stats([[1.0, 2.0], [3.0]])


# -- data errors from Go -----------------------------------------------------


def test_empty():
    with pytest.raises(gdiv.EmptyInputError, match="empty"):
        gdiv.stats(np.zeros((0, 3)))


def test_zero_dim():
    with pytest.raises(gdiv.ZeroDimError, match="zero dimension"):
        gdiv.stats(np.zeros((3, 0)))


def test_nan_names_row_and_column():
    g = np.ones((4, 5))
    g[2, 3] = np.nan
    with pytest.raises(gdiv.NonFiniteError, match=r"row 2.*column 3"):
        gdiv.stats(g)


def test_inf():
    g = np.ones((2, 2), dtype=np.float32)
    g[1, 0] = np.inf
    with pytest.raises(gdiv.NonFiniteError):
        gdiv.stats(g)


def test_overflow():
    with pytest.raises(gdiv.SumOverflowError, match="overflow"):
        gdiv.stats(np.full((2, 2), 1e200))


def test_all_zero():
    with pytest.raises(gdiv.AllZeroError, match="0/0"):
        gdiv.stats(np.zeros((3, 3)))


def test_errors_are_value_errors():
    assert issubclass(gdiv.NonFiniteError, ValueError) and issubclass(gdiv.GdivError, ValueError)
    with pytest.raises(ValueError):
        gdiv.stats(np.zeros((3, 3)))


def test_differential_shape_mismatch():
    with pytest.raises(gdiv.ShapeError, match=r"grads_w.*\(2, 3\).*grads_w2.*\(3, 3\)"):
        gdiv.stats_differential(np.ones((2, 3)), np.ones((3, 3)))


def test_differential_dtype_mismatch():
    with pytest.raises(TypeError, match="float64.*float32"):
        gdiv.stats_differential(np.ones((2, 3)), np.ones((2, 3), dtype=np.float32))


def test_bad_mechanism_parameters():
    with pytest.raises(gdiv.ParamError, match="1"):
        gdiv.Dropout(1.0)
    with pytest.raises(gdiv.ParamError):
        gdiv.Dropout(-0.1)
    with pytest.raises(gdiv.ParamError):
        gdiv.Langevin(-1.0)
    with pytest.raises(gdiv.ParamError):
        gdiv.Langevin(float("nan"))
    with pytest.raises(gdiv.ParamError):
        gdiv.Quantize(0)
    with pytest.raises(gdiv.ParamError):
        gdiv.Quantize(1.5)


def test_bad_seed():
    with pytest.raises(ValueError, match="seed"):
        gdiv.Dropout(0.5).apply_(np.ones((2, 2)), seed=-1)
    with pytest.raises(ValueError, match="seed"):
        gdiv.Dropout(0.5).apply_(np.ones((2, 2)), seed=2**64)


def test_too_few_for_estimate():
    with pytest.raises(gdiv.TooFewError, match="at least 2"):
        gdiv.estimate(np.ones((1, 3)))


def test_bad_beta():
    with pytest.raises(gdiv.ParamError, match="beta"):
        gdiv.Estimator(beta=1.0)


def test_go_panic_becomes_runtime_error():
    # A null result buffer makes the bridge panic inside Go; the panic is
    # recovered and reported, and the interpreter lives on.
    g = np.ones((2, 2))
    with pytest.raises(RuntimeError, match="internal error"):
        lib.Stats(0, 0, g.ctypes.data, 0, 2, 2)
    assert gdiv.stats(g).n == 2


def test_bridge_rejects_bad_addresses():
    out = np.empty(9)
    with pytest.raises(RuntimeError, match="null data address"):
        lib.Stats(out.ctypes.data, 0, 0, 0, 2, 2)
    with pytest.raises(RuntimeError, match="not aligned"):
        lib.Stats(out.ctypes.data, 0, out.ctypes.data + 1, 0, 1, 1)
    with pytest.raises(RuntimeError, match="negative shape"):
        lib.Stats(out.ctypes.data, 0, out.ctypes.data, 0, -1, 2)


# -- torch -------------------------------------------------------------------


@needs_torch
def test_torch_rejects_non_cpu():
    t = torch.empty(2, 3, device="meta")
    with pytest.raises(ValueError, match="device meta"):
        gdiv.stats(t)


@needs_torch
def test_torch_rejects_int():
    with pytest.raises(TypeError, match="int64"):
        gdiv.stats(torch.ones(2, 3, dtype=torch.int64))


@needs_torch
def test_torch_rejects_bfloat16():
    with pytest.raises(TypeError, match="bfloat16"):
        gdiv.stats(torch.ones(2, 3, dtype=torch.bfloat16))


@needs_torch
def test_torch_rejects_non_contiguous():
    with pytest.raises(ValueError, match="contiguous"):
        gdiv.stats(torch.ones(3, 4, dtype=torch.float64).t())


@needs_torch
def test_torch_rejects_1d():
    with pytest.raises(ValueError, match="2-D"):
        gdiv.stats(torch.ones(3, dtype=torch.float64))


@needs_torch
def test_torch_rejects_sparse():
    with pytest.raises(ValueError, match="layout"):
        gdiv.stats(torch.eye(3, dtype=torch.float64).to_sparse())


@needs_torch
def test_torch_rejects_lazy_negation():
    t = torch._neg_view(torch.ones(2, 2, dtype=torch.float64))
    assert t.is_neg()
    with pytest.raises(ValueError, match="negated"):
        gdiv.stats(t)


@needs_torch
def test_torch_rejects_requires_grad_in_place():
    t = torch.ones(2, 2, dtype=torch.float64, requires_grad=True)
    with pytest.raises(ValueError, match="requires grad"):
        gdiv.Dropout(0.5).apply_(t, seed=1)


# -- Arrow -------------------------------------------------------------------


@needs_arrow
def test_arrow_rejects_null_rows():
    values = pa.array(np.ones(6))
    arr = pa.FixedSizeListArray.from_arrays(values, 2, mask=pa.array([False, True, False]))
    with pytest.raises(gdiv.NullError, match="1 null rows"):
        gdiv.stats(arr)


@needs_arrow
def test_arrow_rejects_null_values():
    values = pa.array([1.0, 2.0, None, 4.0])
    arr = pa.FixedSizeListArray.from_arrays(values, 2)
    with pytest.raises(gdiv.NullError, match="row 1, column 0"):
        gdiv.stats(arr)


@needs_arrow
def test_arrow_null_outside_slice_is_fine():
    values = pa.array([None, 2.0, 3.0, 4.0])
    arr = pa.FixedSizeListArray.from_arrays(values, 2)
    assert gdiv.stats(arr[1:]).n == 1


@needs_arrow
def test_arrow_rejects_plain_float_array():
    with pytest.raises(TypeError, match="type float64; want fixed_size_list"):
        gdiv.stats(pa.array([1.0, 2.0]))


@needs_arrow
def test_arrow_rejects_int_values():
    arr = pa.FixedSizeListArray.from_arrays(pa.array([1, 2, 3, 4]), 2)
    with pytest.raises(TypeError, match="int64"):
        gdiv.stats(arr)


@needs_arrow
def test_arrow_rejects_variable_lists():
    with pytest.raises(TypeError, match="list"):
        gdiv.stats(pa.array([[1.0, 2.0], [3.0]]))


@needs_arrow
def test_arrow_rejects_in_place():
    with pytest.raises(TypeError, match="immutable"):
        gdiv.Dropout(0.5).apply_(pyarrow_matrix(np.ones((2, 2))), seed=1)


# -- read-only and masked memory ---------------------------------------------

_READ_ONLY_CHILD = r"""
import sys, warnings
import numpy as np
import gdiv
path = sys.argv[1]
np.save(path, np.ones((4, 8)))
{setup}
try:
    gdiv.Dropout(0.5).apply_(x, seed=1)
except gdiv.ParamError as e:
    assert e.field == "grads", e.field
    assert (np.asarray(src) == 1).all()  # nothing was written
    print("refused:", e)
else:
    print("no error")
"""


def _run_child(tmp_path, setup):
    import subprocess
    import sys

    code = _READ_ONLY_CHILD.replace("{setup}", setup)
    return subprocess.run([sys.executable, "-c", code, str(tmp_path / "g.npy")], capture_output=True, text=True, timeout=120)


@needs_torch
def test_torch_over_read_only_memmap_is_refused_not_a_crash(tmp_path):
    # torch.from_numpy of a read-only memmap only warns; the tensor looks
    # writable (tensor.numpy().flags.writeable is True). It used to SIGSEGV
    # inside Go, so the call runs in a child process.
    proc = _run_child(
        tmp_path,
        "import torch\nsrc = np.load(path, mmap_mode='r')\nwith warnings.catch_warnings():\n"
        "    warnings.simplefilter('ignore')\n    x = torch.from_numpy(src)",
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "refused:" in proc.stdout and "read-only" in proc.stdout, proc.stdout
    assert "grads" in proc.stdout


def test_numpy_read_only_memmap_is_refused_in_python(tmp_path):
    np.save(tmp_path / "g.npy", np.ones((4, 8)))
    x = np.load(tmp_path / "g.npy", mmap_mode="r")
    with pytest.raises(ValueError, match="read-only"):
        gdiv.Dropout(0.5).apply_(x)
    assert gdiv.Dropout(0.5).apply(x, seed=1).shape == (4, 8)  # a copy is fine


@needs_torch
def test_torch_after_a_read_only_refusal_the_process_works(tmp_path):
    proc = _run_child(
        tmp_path,
        "import torch\nsrc = np.load(path, mmap_mode='r')\nwith warnings.catch_warnings():\n"
        "    warnings.simplefilter('ignore')\n    x = torch.from_numpy(src)\n"
        "try:\n    gdiv.Dropout(0.5).apply_(x)\nexcept gdiv.ParamError:\n    pass\n"
        "y = torch.ones(4, 8, dtype=torch.float64)\ngdiv.Dropout(0.5).apply_(y, seed=1)\nassert (y == 0).any()",
    )
    assert proc.returncode == 0 and "refused:" in proc.stdout, proc.stderr[-2000:]


@pytest.mark.parametrize(
    "call",
    [
        lambda m: gdiv.stats(m),
        lambda m: gdiv.estimate(m),
        lambda m: gdiv.Dropout(0.5).apply_(m),
        lambda m: gdiv.Dropout(0.5).apply(m),
        lambda m: gdiv.Dropout(0.5).expected(m),
        lambda m: gdiv.Estimator().update(m),
        lambda m: gdiv.estimate_from_norms(m[:, 0], np.ones(3)),
        lambda m: gdiv.reference.train(np.ones((4, 3)), m[:, 0], problem="leastsquares", lr=0.1, batch=2, steps=1),
        lambda m: gdiv.stats([m[0], m[1], m[2], m[3]]),
    ],
    ids=["stats", "estimate", "apply_", "apply", "expected", "update", "norms", "reference-y", "list-of-rows"],
)
def test_masked_arrays_are_refused(call):
    m = np.ma.masked_array(np.arange(12.0).reshape(4, 3), mask=np.zeros((4, 3), bool))
    m[1, 2] = np.ma.masked
    with pytest.raises(TypeError, match="masked array"):
        call(m)
