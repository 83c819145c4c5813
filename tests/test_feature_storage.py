"""Stored feature tensors come back from read-only Arrow and object-store buffers as tensors
that own writable memory: no NumPy "not writable" warning, and writing to one never touches
the buffer it came from."""

import warnings

import numpy as np
import pyarrow as pa
import pytest
import torch

from selva_ray.io.feature_schema import from_storage, read_tensor, tensor_array, to_storage


@pytest.mark.parametrize("dtype", ["float32", "float16", "bfloat16"])
def test_read_only_buffers_give_writable_tensors_without_a_warning(dtype):
    values = torch.linspace(-1, 1, 12).reshape(3, 4)
    stored = to_storage(values, dtype)
    stored.flags.writeable = False  # as Arrow and Ray hand them out
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        got = from_storage(stored, dtype)
    assert got.dtype == torch.float32 and torch.allclose(got, values, atol=1e-2)
    got.zero_()
    assert np.any(stored != 0)  # the buffer is untouched


def test_a_parquet_tensor_column_reads_without_a_warning():
    table = pa.table({"t": tensor_array(np.ones((2, 3, 4), np.float32), (3, 4))})
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        got = read_tensor(table, "t")
    assert got.shape == (2, 3, 4) and float(got.sum()) == 24.0
