"""Criteria as objects in one registry: built-ins and user criteria take the same path.

A ``Criterion`` declares what it scores (its granularities), what it needs from the model
(``needs``: the group's weights, its BatchNormalization scales, connection strengths, a seed),
how its scores are made comparable across groups for one global threshold (``comparable``),
and its score function. The planner hands it a ``GroupInputs`` (filter granularity: one
dependency group) or a ``LayerInputs`` (connection granularity: one convolution), whose
tensors are computed only when the criterion reads them; it has no criterion-specific code.
Lower scores are pruned first. A criterion that picks the ``k`` units itself instead of
scoring them (D-Step) sets ``selects`` and implements ``select``; it has no global ranking.

Everything here is pure TF on tensors: no Keras.
"""

import numpy as np

from tfsynapse.backends import tf

from tfsynapse.criteria import connections, filters

GRANULARITIES = ("filter", "connection")


class GroupInputs:
    """What a filter criterion may read about one dependency group (computed on first read).

    Attributes:
      name: the group's name (for messages).
      size: ``n``, its number of units (channels).
      seed: an integer seed, distinct per group (the run's seed plus the group's id).
    """

    def __init__(self, name, size, seed, weights, bn_scale, incoming):
        self.name, self.size, self.seed = name, size, seed
        self._weights, self._bn_scale, self._incoming = weights, bn_scale, incoming

    @property
    def weights(self):
        """``[n, d]``: row ``u`` holds every producer's weights for unit ``u`` side by side."""
        return self._weights()

    @property
    def bn_scale(self):
        """``[n]``: ``sum |gamma|`` over the group's BatchNormalizations (0 without one)."""
        return self._bn_scale()

    def incoming(self, criterion):
        """``[n]``: each unit's incoming connection scores under ``criterion``, summed over
        the group's convolution producers (their ``[C_in, C_out]`` scores summed over C_in)."""
        return self._incoming(criterion)


class LayerInputs:
    """What a connection criterion may read about one convolution (computed on first read).

    Attributes:
      name: the layer's name (for messages).
      seed: an integer seed, distinct per layer.
    """

    def __init__(self, name, seed, kernel, input_scale, strength):
        self.name, self.seed = name, seed
        self._kernel, self._input_scale, self._strength = kernel, input_scale, strength

    @property
    def kernel(self):
        """The kernel as the model computes with it (masks applied), ``(..., C_in, C_out)``."""
        return self._kernel()

    @property
    def shape(self):
        """``[C_in, C_out]``."""
        return list(self.kernel.shape[-2:])

    @property
    def input_scale(self):
        """``[C_in]`` gamma of the BatchNormalization feeding the layer, or None."""
        return self._input_scale()

    @property
    def strength(self):
        """``[C_in, C_out]`` trainable synaptic strengths (``SynapticConv2D``), or None."""
        return self._strength()


class Criterion:
    """One importance criterion. Subclass it, or pass a plain function (``FunctionCriterion``).

    Attributes:
      name: the name used in ``criterion=`` and in saved models.
      granularities: which of 'filter' and 'connection' it scores.
      needs: what it reads, for documentation and the CLI: a subset of {'weights',
        'batchnorm', 'input_scale', 'strength', 'seed'}. 'batchnorm' is required: groups
        without a BatchNormalization are frozen (with that reason) instead of scored;
        'input_scale' (the BatchNormalization before a convolution) is used when present.
      selects: True when it chooses the pruned units itself (``select``), with no scores to
        rank globally (so scope='global' is refused).
      summary: one line for listings.
    """

    name = None
    granularities = ("filter",)
    needs = frozenset({"weights"})
    selects = False
    summary = ""

    def filter_scores(self, group):
        """``[n]`` scores of one dependency group's units (``group``: ``GroupInputs``)."""
        raise NotImplementedError(f"criterion '{self.name}' does not score filters")

    def connection_scores(self, layer):
        """``[C_in, C_out]`` scores of one convolution's connections (``LayerInputs``)."""
        raise NotImplementedError(f"criterion '{self.name}' does not score connections")

    def select(self, group, k):
        """``[n]`` bool mask of the ``k`` units to prune (only when ``selects``)."""
        raise NotImplementedError(f"criterion '{self.name}' scores units; it does not select")

    def comparable(self, scores):
        """One group's scores made comparable with other groups' (scope='global')."""
        return scores


class _MatrixCriterion(Criterion):
    def __init__(self, name, fn, summary, comparable=None):
        self.name, self._fn, self.summary, self._comparable = name, fn, summary, comparable

    def filter_scores(self, group):
        return self._fn(group.weights)

    def comparable(self, scores):
        return self._comparable(scores) if self._comparable else scores


class _Selector(Criterion):
    selects = True

    def __init__(self, name, fn, summary):
        self.name, self._fn, self.summary = name, fn, summary

    def select(self, group, k):
        return self._fn(group.weights, k)


class _KernelCriterion(Criterion):
    granularities = ("connection",)

    def __init__(self, name, fn, summary):
        self.name, self._fn, self.summary = name, fn, summary

    def connection_scores(self, layer):
        return self._fn(layer.kernel)


class _BatchNormScale(Criterion):
    name = "bn_scale"
    needs = frozenset({"batchnorm"})
    summary = "sum of |gamma| over the group's BatchNormalizations (Network Slimming)"

    def filter_scores(self, group):
        return group.bn_scale


class _Random(Criterion):
    name = "random"
    granularities = GRANULARITIES
    needs = frozenset({"seed"})
    summary = "uniform random scores (the baseline every criterion must beat)"

    def filter_scores(self, group):
        return filters.random_scores(group.size, group.seed)

    def connection_scores(self, layer):
        c_in, c_out = layer.shape
        return tf.reshape(filters.random_scores(c_in * c_out, layer.seed), [c_in, c_out])


class _SynapticStrength(Criterion):
    name = "synaptic_strength"
    granularities = GRANULARITIES
    needs = frozenset({"weights", "input_scale", "strength", "connections"})
    summary = ("|gamma_i| * ||K[..., i, j]||_2 per connection, or the trained strength; "
               "a filter sums its incoming strengths (Lin et al. 2018)")

    def connection_scores(self, layer):
        strength = layer.strength
        if strength is not None:
            return connections.strength_magnitude(strength)
        return connections.synaptic_strength(layer.kernel, layer.input_scale)

    def filter_scores(self, group):
        return group.incoming(self)


class FunctionCriterion(Criterion):
    """A user function as a criterion: ``fn(weights [n, d]) -> [n]`` for filters, or
    ``fn(kernel) -> [C_in, C_out]`` for connections (TF ops, lower = pruned first)."""

    granularities = GRANULARITIES
    summary = "a user function"

    def __init__(self, name, fn):
        self.name, self.fn = name, fn

    def filter_scores(self, group):
        return self.fn(group.weights)

    def connection_scores(self, layer):
        return self.fn(layer.kernel)


def _by_mean(scores):
    # magnitudes and summed distances grow with fan-in and weight scale: a group's average
    # unit scores 1, so a global threshold removes units weak *relative to their group*
    return scores / (tf.reduce_mean(scores) + 1e-12)


def _by_largest_dscore(scores):
    n = tf.cast(tf.size(scores), scores.dtype)  # 2 (n - 1) is the largest D-Score: [0, 1]
    return tf.math.divide_no_nan(scores, 2.0 * (n - 1.0))


_REGISTRY = {}


def _builtins():
    return [
        _MatrixCriterion("l1", filters.l1_scores, "sum |w| of the unit's weights (Li et al. "
                         "2017)", _by_mean),
        _MatrixCriterion("l2", filters.l2_scores, "||w||_2 of the unit's weights", _by_mean),
        _MatrixCriterion("dscore", filters.dscore_scores, "rank of the positive plus rank of "
                         "the negative weight mass (D-Score, Park et al. 2023)",
                         _by_largest_dscore),
        _MatrixCriterion("fpgm", filters.fpgm_scores, "summed distance to the other units "
                         "(geometric median, He et al. 2019)", _by_mean),
        _Selector("dstep", filters.dstep_prune_mask, "units low in both the positive and the "
                  "negative order (D-Step, Park et al. 2023)"),
        _Selector("dstep_gm", filters.dstep_gm_prune_mask, "D-Step on geometric-median "
                  "distances of the positive and negative parts"),
        _BatchNormScale(), _Random(), _SynapticStrength(),
        _KernelCriterion("kernel_norm", connections.kernel_norm, "||K[..., i, j]||_2"),
        _KernelCriterion("l2", connections.kernel_norm, "||K[..., i, j]||_2"),
        _KernelCriterion("l1", connections.connection_l1, "sum |K[..., i, j]|"),
    ]


def register(criterion):
    """Adds ``criterion`` under its name; a built-in name is refused.

    Args:
      criterion: a ``Criterion`` with a ``name``.

    Returns:
      The criterion that name named before, or None.

    Raises:
      ValueError: the name is a built-in criterion's, or empty.
    """
    if not isinstance(criterion, Criterion) or not criterion.name:
        raise ValueError(f"a criterion needs a name, got {criterion!r}")
    if is_builtin(criterion.name):
        raise ValueError(f"'{criterion.name}' is a built-in criterion; choose another name.")
    before = _REGISTRY.get(criterion.name)
    _REGISTRY[criterion.name] = criterion
    return before


def unregister(name):
    """Removes a user criterion (built-ins stay). Returns what the name named, or None."""
    return None if is_builtin(name) else _REGISTRY.pop(name, None)


def get(name, granularity=None):
    """The criterion registered as ``name`` (for ``granularity`` when names are shared), or None."""
    if granularity is not None and (name, granularity) in _BUILTIN:
        return _BUILTIN[name, granularity]
    if name in _REGISTRY:
        return _REGISTRY[name]
    return next((c for (n, _), c in _BUILTIN.items() if n == name), None)


def is_builtin(name):
    """Whether ``name`` is a built-in criterion's."""
    return any(n == name for n, _ in _BUILTIN)


def names(granularity):
    """Sorted names of every criterion (built-in and registered) that scores ``granularity``."""
    found = {n for (n, g) in _BUILTIN if g == granularity}
    found |= {n for n, c in _REGISTRY.items() if granularity in c.granularities}
    return tuple(sorted(found))


_BUILTIN = {}
for _criterion in _builtins():
    for _granularity in _criterion.granularities:
        _BUILTIN[_criterion.name, _granularity] = _criterion


def table():
    """Every criterion, one line each: name, granularities, what it needs, what it computes.

    Returns:
      A multi-line string (what ``tfsynapse criteria`` and the CLI help print).
    """
    rows = {}
    for (name, granularity), criterion in sorted(_BUILTIN.items()):
        rows.setdefault(name, []).append((granularity, criterion))
    for name, criterion in sorted(_REGISTRY.items()):
        rows[name] = [(g, criterion) for g in criterion.granularities]
    lines = []
    for name, entries in rows.items():
        for granularity, criterion in entries:
            needs = ", ".join(sorted(criterion.needs))
            select = "; selects per group (no scope='global')" if criterion.selects else ""
            lines.append(f"{name:<18} {granularity:<11} needs {needs:<28} "
                         f"{criterion.summary}{select}")
    return "\n".join(lines)


def _is_int(value):
    return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))


def select_filters(kernel, k, method):
    """Indices of the ``k`` filters that criterion ``method`` prunes from one Keras kernel,
    through the same criterion object the planner uses.

    Args:
      kernel: numpy array in Keras layout, the last axis indexing filters / output channels
        (Conv1D/2D/3D kernels ``(..spatial.., C_in, C_out)``, Dense kernels ``(in, out)``).
      k: number of filters to prune, a Python int in ``[0, n]``.
      method: a filter criterion that reads weights only (``names('filter')`` minus those
        that need a BatchNormalization or incoming connections): e.g. ``'dscore'``,
        ``'dstep'``, ``'dstep_gm'``, ``'fpgm'``, ``'l1'``, ``'l2'``, ``'random'``.

    Returns:
      np.ndarray of int64, the sorted indices of the pruned filters (length ``k``).

    Raises:
      ValueError: an unknown criterion or one that needs more than a kernel, ``kernel`` with
        fewer than 2 dimensions, or ``k`` not an integer in ``[0, n]``.
    """
    criterion = get(method, "filter") if isinstance(method, str) else None
    usable = sorted(n for n in names("filter")
                    if get(n, "filter").needs <= {"weights", "seed"})
    if criterion is None or not criterion.needs <= {"weights", "seed"}:
        raise ValueError(f"Unknown filter criterion {method!r} for a kernel alone; choose one "
                         f"of {', '.join(usable)}.")
    kernel = np.asarray(kernel)
    if kernel.ndim < 2:
        raise ValueError(
            f"kernel must have at least 2 dimensions with filters on the last axis, got shape "
            f"{kernel.shape}.")
    n = kernel.shape[-1]
    if not _is_int(k) or not 0 <= k <= n:
        raise ValueError(f"k must be an integer in [0, {n}] (the number of filters), got {k!r}.")
    rows = tf.constant(np.moveaxis(kernel, -1, 0).reshape(n, -1))
    group = GroupInputs("kernel", n, 0, lambda: rows, lambda: tf.zeros([n]), None)
    if criterion.selects:
        mask = criterion.select(group, k)
    else:
        mask = filters.lowest_k_mask(criterion.filter_scores(group), k)
    return np.flatnonzero(np.asarray(mask)).astype(np.int64)
