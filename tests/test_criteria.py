"""Tests of tfsynapse.criteria: hand-derived examples, D-Step corner cases, invariants."""

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import normal
from tfsynapse.backends.tf_keras import tf
from tfsynapse.criteria import (
    connection_l1,
    dscore_scores,
    dstep_gm_prune_mask,
    dstep_prune_mask,
    fpgm_scores,
    kernel_norm,
    l1_scores,
    l2_scores,
    lowest_k_mask,
    random_scores,
    registry,
    ranks,
    select_filters,
    strength_magnitude,
    synaptic_strength,
)

METHODS = ("dscore", "dstep", "dstep_gm", "fpgm", "l1", "l2")
SCORED = {"l1": l1_scores, "l2": l2_scores, "dscore": dscore_scores, "fpgm": fpgm_scores}
SELECTING = {"dstep": dstep_prune_mask, "dstep_gm": dstep_gm_prune_mask}
FAST = settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# Hand example: four filters of three weights (rows).
#   f0 = [ 3, -1,  0]   P=3 N=1   L1=4   L2=sqrt(10)=3.162
#   f1 = [ 1, -2, -2]   P=1 N=4   L1=5   L2=3
#   f2 = [ 0,  2, -1]   P=2 N=1   L1=3   L2=sqrt(5)=2.236
#   f3 = [-1,  1,  4]   P=5 N=1   L1=6   L2=sqrt(18)=4.243
# rP: P ascending 1(f1) 2(f2) 3(f0) 5(f3)               -> rP = [2, 0, 1, 3]
# rN: N ascending, ties by index: 1(f0) 1(f2) 1(f3) 4(f1) -> rN = [0, 3, 1, 2]
# D-Score = rP + rN = [2, 3, 2, 5]
ROWS = np.array([[3, -1, 0], [1, -2, -2], [0, 2, -1], [-1, 1, 4]], dtype=np.float32)


def _kernels(rows):
    """The same filters as a Dense kernel (d, n) and as a Conv2D kernel (1, d, 1, n)."""
    n, d = rows.shape
    return [rows.T.copy(), rows.T.reshape(1, d, 1, n).copy()]


def _pn_rows(rank_p, rank_n):
    """Two-weight filters [rP + 1, -(rN + 1)] whose P and N ranks are exactly rank_p, rank_n."""
    return np.array([[p + 1, -(q + 1)] for p, q in zip(rank_p, rank_n)], dtype=np.float32)


# --- hand-computed scores and selections ---------------------------------------------------


def test_hand_scores():
    np.testing.assert_allclose(l1_scores(ROWS), [4, 5, 3, 6])
    np.testing.assert_allclose(
        l2_scores(ROWS), [3.16227766, 3.0, 2.23606798, 4.24264069], rtol=1e-6
    )
    np.testing.assert_array_equal(dscore_scores(ROWS), [2, 3, 2, 5])
    assert dscore_scores(ROWS).dtype == tf.float32
    # Pairwise distances: d01=|[2,1,2]|=3, d02=|[3,-3,1]|=sqrt19=4.359, d03=|[4,-2,-4]|=6,
    # d12=|[1,-4,-1]|=sqrt18=4.243, d13=|[2,-3,-6]|=7, d23=|[1,1,-5]|=sqrt27=5.196.
    # Sums: f0=3+4.359+6, f1=3+4.243+7, f2=4.359+4.243+5.196, f3=6+7+5.196.
    np.testing.assert_allclose(
        fpgm_scores(ROWS), [13.358899, 14.242641, 13.797692, 18.196152], rtol=1e-6
    )


@pytest.mark.parametrize(
    "method, k, expected",
    [
        ("l1", 1, [2]),  # L1 [4, 5, 3, 6]
        ("l1", 2, [0, 2]),
        ("l2", 2, [1, 2]),  # L2 [3.16, 3, 2.24, 4.24]
        ("dscore", 1, [0]),  # D-Score [2, 3, 2, 5]: f0 and f2 tie, lower index first
        ("dscore", 2, [0, 2]),
        ("dscore", 3, [0, 1, 2]),
        ("fpgm", 1, [0]),  # FPGM [13.36, 14.24, 13.80, 18.20]
        ("fpgm", 2, [0, 2]),
        # D-Step: max(rP, rN) = [2, 3, 1, 3]. k=1: m=2 gives {f2}. k=2: m=3 gives {f2, f0}.
        # k=3: m=3 holds 2, m=4 holds all 4 = k+1 -> drop the largest rP+rN, f3 (5).
        ("dstep", 1, [2]),
        ("dstep", 2, [0, 2]),
        ("dstep", 3, [0, 1, 2]),
        ("dstep", 4, [0, 1, 2, 3]),
        ("dstep", 0, []),
    ],
)
def test_hand_select_filters(method, k, expected):
    for kernel in _kernels(ROWS):
        got = select_filters(kernel, k, method)
        assert got.dtype == np.int64
        np.testing.assert_array_equal(got, expected)


def test_select_filters_uses_last_axis_of_conv_kernel():
    # Conv2D kernel (2, 2, 2, 3); filter j is the constant c_j = [1, -3, 2]: L1 = 8|c_j| =
    # [8, 24, 16]. Only the last axis indexes filters, so k=1 prunes filter 0 and k=2 adds 2.
    kernel = np.ones((2, 2, 2, 3), np.float32) * np.array([1, -3, 2], np.float32)
    np.testing.assert_array_equal(select_filters(kernel, 1, "l1"), [0])
    np.testing.assert_array_equal(select_filters(kernel, 2, "l1"), [0, 2])
    # Conv1D (3, 2, 3) and Conv3D (1, 2, 1, 2, 3) kernels of the same filters agree.
    np.testing.assert_array_equal(select_filters(kernel.reshape(2, 4, 3), 2, "l2"), [0, 2])
    np.testing.assert_array_equal(select_filters(kernel.reshape(1, 2, 2, 2, 3), 2, "l2"), [0, 2])


# --- D-Step corner cases --------------------------------------------------------------------


def test_dstep_jump_drops_new_member():
    # rP = [0, 2, 1, 3], rN = [1, 0, 2, 3]: max = [1, 2, 2, 3], rP + rN = [1, 2, 3, 6].
    # |I(1)| = 0, |I(2)| = 1 ({f0}), |I(3)| = 3 ({f0, f1, f2}): for k = 2 the intersection
    # jumps from k-1 to k+1; the dropped member is f2 (rP+rN = 3), one of the two newcomers.
    rows = _pn_rows([0, 2, 1, 3], [1, 0, 2, 3])
    np.testing.assert_array_equal(dstep_prune_mask(rows, 2), [True, True, False, False])
    np.testing.assert_array_equal(select_filters(rows.T, 2, "dstep"), [0, 1])


def test_dstep_jump_drops_older_member():
    # rP = [2, 3, 0, 1], rN = [2, 0, 3, 1]: max = [2, 3, 3, 1], rP + rN = [4, 3, 3, 2].
    # |I(2)| = 1 ({f3}), |I(3)| = 2 ({f3, f0}), |I(4)| = 4. For k = 3 the intersection jumps
    # from 2 to 4; the largest rP+rN is f0 (4), which joined at m = 3 (an OLDER member), so
    # f0 is dropped and the two newcomers f1, f2 stay pruned.
    rows = _pn_rows([2, 3, 0, 1], [2, 0, 3, 1])
    np.testing.assert_array_equal(dstep_prune_mask(rows, 3), [False, True, True, True])


def test_dstep_differs_from_dscore():
    # rP = [0, 2, 1, 3, 4], rN = [4, 2, 1, 0, 3]: D-Score = [4, 4, 2, 3, 7] -> k=2 prunes {2, 3}.
    # D-Step: max = [4, 2, 1, 3, 4]; |I(2)| = 1 ({f2}), |I(3)| = 2 ({f2, f1}) -> prunes {1, 2}.
    rows = _pn_rows([0, 2, 1, 3, 4], [4, 2, 1, 0, 3])
    np.testing.assert_array_equal(select_filters(rows.T, 2, "dscore"), [2, 3])
    np.testing.assert_array_equal(select_filters(rows.T, 2, "dstep"), [1, 2])


def test_dstep_drop_tie_goes_to_larger_index():
    # rP = [0, 1, 2], rN = [1, 0, 2]: max = [1, 1, 2]; |I(1)| = 0, |I(2)| = 2 with rP+rN = 1 for
    # both: for k = 1 the member with the larger index (f1) is dropped.
    rows = _pn_rows([0, 1, 2], [1, 0, 2])
    np.testing.assert_array_equal(dstep_prune_mask(rows, 1), [True, False, False])


# D-Step GM example: filters [a_u, -b_u]; positive parts [a_u, 0], negative parts [0, b_u], so
# the distances are |a_u - a_v| and |b_u - b_v|.
#   a = [0, 1, 3, 4, 10]: sums 18, 15, 13, 14, 32 -> rP = [3, 2, 0, 1, 4]
#   b = [2, 7, 0, 3, 5]:  sums 11, 18, 17, 10, 12 -> rN = [1, 4, 3, 0, 2]
#   max = [3, 4, 3, 1, 4], rP + rN = [4, 6, 3, 1, 6]
# k=1: {f3}. k=2: |I(2)| = 1, |I(4)| = 3 = {f0, f2, f3}; drop f0 (4) -> {2, 3}. k=3: {0, 2, 3}.
# k=4: all five; f1 and f4 tie at 6 -> drop the larger index f4 -> {0, 1, 2, 3}.
# Plain D-Step on the same rows: rP = [0, 1, 2, 3, 4], rN = [1, 4, 0, 2, 3], max = [1, 4, 2, 3, 4]
# -> k=2 prunes {0, 2}.
GM_ROWS = np.array([[0, -2], [1, -7], [3, 0], [4, -3], [10, -5]], dtype=np.float32)


@pytest.mark.parametrize(
    "k, expected", [(0, []), (1, [3]), (2, [2, 3]), (3, [0, 2, 3]), (4, [0, 1, 2, 3])]
)
def test_dstep_gm_hand_example(k, expected):
    np.testing.assert_array_equal(select_filters(GM_ROWS.T, k, "dstep_gm"), expected)


def test_dstep_gm_differs_from_dstep():
    np.testing.assert_array_equal(select_filters(GM_ROWS.T, 2, "dstep"), [0, 2])


# --- ties -----------------------------------------------------------------------------------


@pytest.mark.parametrize("method", METHODS)
def test_equal_filters_break_ties_by_lower_index(method):
    kernel = np.tile(np.array([[1.0], [-2.0], [0.5]], np.float32), (1, 6))  # six equal filters
    for k in range(7):
        np.testing.assert_array_equal(select_filters(kernel, k, method), np.arange(k))


def test_ranks_and_lowest_k_mask():
    # Stable ascending order of [3, 1, 2, 1] is indices 1, 3, 2, 0 -> ranks [3, 0, 2, 1].
    np.testing.assert_array_equal(ranks([3.0, 1.0, 2.0, 1.0]), [3, 0, 2, 1])
    assert ranks([3.0, 1.0]).dtype == tf.int32
    scores = [3.0, 1.0, 2.0, 1.0]
    np.testing.assert_array_equal(lowest_k_mask(scores, 1), [False, True, False, False])
    np.testing.assert_array_equal(lowest_k_mask(scores, tf.constant(3)), [False, True, True, True])
    assert not lowest_k_mask(scores, 0).numpy().any()
    assert lowest_k_mask(scores, 4).numpy().all()


# --- invariants -----------------------------------------------------------------------------


@st.composite
def kernels_and_k(draw, tie_prone=True):
    n = draw(st.integers(1, 12))
    d = draw(st.integers(1, 6))
    seed = draw(st.integers(0, 2**31 - 1))
    rng = np.random.default_rng(seed)
    if tie_prone:  # small integers: many exact ties in P, N, L1 and equal filters
        kernel = rng.integers(-3, 4, size=(d, n)).astype(np.float32)
    else:
        kernel = rng.normal(size=(d, n)).astype(np.float32)
    return kernel, draw(st.integers(0, n))


@FAST
@given(kernels_and_k(), st.sampled_from(METHODS))
def test_select_filters_invariants(case, method):
    kernel, k = case
    n = kernel.shape[-1]
    got = select_filters(kernel, k, method)
    assert got.dtype == np.int64 and got.shape == (k,)
    assert np.all(np.diff(got) > 0) and np.all((got >= 0) & (got < n))
    np.testing.assert_array_equal(got, select_filters(kernel, k, method))
    assert select_filters(kernel, 0, method).size == 0
    np.testing.assert_array_equal(select_filters(kernel, n, method), np.arange(n))
    if method in SCORED:  # every pruned filter scores no higher than every kept one
        scores = SCORED[method](kernel.T).numpy()
        kept = np.setdiff1d(np.arange(n), got)
        if k and kept.size:
            assert scores[got].max() <= scores[kept].min()


@tf.function(reduce_retracing=True)
def _all_masks_graph(rows, k):
    return _all_masks(rows, k)


def _all_masks(rows, k):
    masks = [lowest_k_mask(fn(rows), k) for fn in SCORED.values()]
    masks += [fn(rows, k) for fn in SELECTING.values()]
    return tf.stack(masks)


@FAST
@given(kernels_and_k())
def test_graph_with_tensor_k_matches_eager(case):
    kernel, k = case
    rows = tf.constant(kernel.T)
    eager = _all_masks(rows, k).numpy()
    graph = _all_masks_graph(rows, tf.constant(k, tf.int32)).numpy()
    np.testing.assert_array_equal(graph, eager)
    assert np.all(eager.sum(axis=1) == k)


def _np_ranks(values):
    return np.argsort(np.argsort(values, kind="stable"), kind="stable")


def _reference_dstep(rank_p, rank_n, k):
    """METHODS.md D-Step, literally: grow m until the intersection holds >= k, drop one if k+1."""
    if k == 0:
        return set()
    order_p, order_n = np.argsort(rank_p), np.argsort(rank_n)
    for m in range(1, len(rank_p) + 1):
        common = set(order_p[:m].tolist()) & set(order_n[:m].tolist())
        if len(common) >= k:
            break
    assert len(common) in (k, k + 1)
    if len(common) == k + 1:
        common.remove(max(common, key=lambda u: (rank_p[u] + rank_n[u], u)))
    return common


def _np_summed_distances(rows):
    rows = rows.astype(np.float64)
    return np.sqrt(((rows[:, None, :] - rows[None, :, :]) ** 2).sum(-1)).sum(1)


@FAST
@given(kernels_and_k())
def test_dstep_matches_literal_reference(case):
    kernel, k = case
    rows = kernel.T
    pos, neg = np.maximum(rows, 0).sum(1), np.maximum(-rows, 0).sum(1)
    expected = _reference_dstep(_np_ranks(pos), _np_ranks(neg), k)
    assert set(np.flatnonzero(dstep_prune_mask(rows, k))) == expected


@FAST
@given(kernels_and_k(tie_prone=False))
def test_dstep_gm_matches_literal_reference(case):
    kernel, k = case
    rows = kernel.T
    rank_p = _np_ranks(_np_summed_distances(np.maximum(rows, 0)))
    rank_n = _np_ranks(_np_summed_distances(np.maximum(-rows, 0)))
    expected = _reference_dstep(rank_p, rank_n, k)
    assert set(np.flatnonzero(dstep_gm_prune_mask(rows, k))) == expected


# --- random scores and global normalisation -------------------------------------------------


def test_random_scores_deterministic():
    a, b = random_scores(8, 3).numpy(), random_scores(8, tf.constant(3)).numpy()
    np.testing.assert_array_equal(a, b)
    assert a.shape == (8,) and np.all((a >= 0) & (a < 1))
    assert not np.array_equal(a, random_scores(8, 4).numpy())


def _comparable(name, scores):
    return registry.get(name, "filter").comparable(tf.constant(scores, tf.float32))


def test_each_criterion_makes_its_scores_comparable_for_global_ranking():
    np.testing.assert_allclose(_comparable("l1", [1.0, 3.0]), [0.5, 1.5], rtol=1e-6)
    np.testing.assert_allclose(_comparable("fpgm", [0.0]), [0.0])
    # D-Score of n=3 lies in [0, 4]; divided by 2(n-1) = 4.
    np.testing.assert_allclose(_comparable("dscore", [0.0, 2.0, 4.0]), [0, 0.5, 1])
    np.testing.assert_allclose(_comparable("dscore", [0.0]), [0.0])
    for name in ("random", "bn_scale", "synaptic_strength"):
        np.testing.assert_allclose(_comparable(name, [0.2, 5.0]), [0.2, 5.0])


# --- connection criteria --------------------------------------------------------------------


@pytest.mark.parametrize("shape", [(3, 3, 4, 5), (3, 4, 5), (4, 5), (2, 2, 2, 4, 5)])
def test_connection_criteria_match_numpy(shape):
    kernel = normal(*shape)
    axes = tuple(range(len(shape) - 2))
    np.testing.assert_allclose(kernel_norm(kernel), np.sqrt((kernel**2).sum(axes)), rtol=1e-5)
    np.testing.assert_allclose(connection_l1(kernel), np.abs(kernel).sum(axes), rtol=1e-5)
    layer = registry.LayerInputs("k", 0, lambda: tf.constant(kernel), lambda: None, lambda: None)
    np.testing.assert_allclose(registry.get("l2", "connection").connection_scores(layer),
                               kernel_norm(kernel))
    np.testing.assert_allclose(synaptic_strength(kernel), kernel_norm(kernel))


def test_synaptic_strength_with_gamma():
    kernel = normal(3, 3, 4, 2, seed=1)
    gamma = np.array([2.0, -0.5, 0.0, 1.0], np.float32)
    expected = np.abs(gamma)[:, None] * np.sqrt((kernel**2).sum((0, 1)))
    np.testing.assert_allclose(synaptic_strength(kernel, gamma), expected, rtol=1e-5)
    np.testing.assert_allclose(strength_magnitude([[-1.0, 2.0]]), [[1.0, 2.0]])
    with pytest.raises(ValueError, match="4 gammas"):
        synaptic_strength(kernel, gamma[:3])
    with pytest.raises(ValueError, match="at least 2"):
        kernel_norm(np.ones(3))


# --- errors ---------------------------------------------------------------------------------


def test_select_filters_errors():
    kernel = np.ones((3, 4), np.float32)
    with pytest.raises(ValueError, match="dscore, dstep, dstep_gm, fpgm, l1, l2"):
        select_filters(kernel, 1, "magnitude")
    for k in (-1, 5, 1.5, True, "2", None):
        with pytest.raises(ValueError, match=r"\[0, 4\]"):
            select_filters(kernel, k, "l1")
    with pytest.raises(ValueError, match="at least 2 dimensions"):
        select_filters(np.ones(4), 1, "l1")
    np.testing.assert_array_equal(select_filters(kernel, np.int64(2), "l1"), [0, 1])
