import numpy as np
import pytest

from cl_bench.metrics.accuracy import (
    all_metrics,
    average_accuracy,
    average_incremental_accuracy,
    backward_transfer,
    forgetting,
    forward_transfer,
)

# a[i][j]: accuracy on task j after training task i; task 1 improves after task 2, so
# forgetting (measured from the best) and BWT (measured from a[j][j]) differ.
A = np.array([
    [0.80, 0.10, 0.00],
    [0.90, 0.80, 0.20],
    [0.50, 0.70, 0.95],
])
RANDOM_INIT = np.array([0.10, 0.05, 0.10])


def test_average_accuracy():
    assert average_accuracy(A) == pytest.approx((0.50 + 0.70 + 0.95) / 3)


def test_average_incremental_accuracy():
    expected = (0.80 + (0.90 + 0.80) / 2 + (0.50 + 0.70 + 0.95) / 3) / 3
    assert average_incremental_accuracy(A) == pytest.approx(expected)


def test_forgetting_uses_best_earlier_accuracy():
    assert forgetting(A) == pytest.approx(((0.90 - 0.50) + (0.80 - 0.70)) / 2)


def test_backward_transfer():
    assert backward_transfer(A) == pytest.approx(((0.50 - 0.80) + (0.70 - 0.80)) / 2)


def test_forward_transfer():
    assert forward_transfer(A, RANDOM_INIT) == pytest.approx(((0.10 - 0.05) + (0.20 - 0.10)) / 2)


def test_partial_matrix_uses_seen_tasks_only():
    # after 2 of 3 tasks: ACC averages the two seen tasks only
    assert average_accuracy(A[:2]) == pytest.approx((0.90 + 0.80) / 2)
    assert forgetting(A[:1]) == 0.0


def test_all_metrics_names():
    m = all_metrics(A, RANDOM_INIT, "class_il")
    assert set(m) == {"acc_class_il", "aia_class_il", "forgetting_class_il", "bwt_class_il",
                      "fwt_class_il"}
    assert m["bwt_class_il"] == pytest.approx(-0.2)
