"""No result changes: the accuracy matrices of 16 reference runs (deterministic, CPU, seed 0)
equal the ones stored before the method kernel was rebuilt (scripts/golden_matrices.py)."""

import sys

import pytest
import torch

from conftest import REPO, needs_mnist

sys.path.insert(0, str(REPO / "scripts"))
import golden_matrices as golden  # noqa: E402


@pytest.mark.slow
@needs_mnist
@pytest.mark.parametrize("name", list(golden.RUNS))
def test_accuracy_matrix_is_unchanged(name, tmp_path):
    if golden.stored_torch(name) != torch.__version__:
        pytest.skip(f"stored with torch {golden.stored_torch(name)}, running {torch.__version__}")
    assert golden.compare(name, tmp_path) == 0.0
