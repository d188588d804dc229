"""Validated pruning options shared by prune_synaptic, prune_once and the mask planner."""

import dataclasses
import difflib
import numbers
import warnings

from tfsynapse.criteria import registry
from tfsynapse.criteria.registry import Criterion, FunctionCriterion

GRANULARITIES = registry.GRANULARITIES
SCOPES = ("layer", "global")
RESIDUAL_MODES = ("group", "skip")
DEFAULT_MAX_RATIO = {"filter": 0.9, "connection": 0.99}


def register_criterion(name, fn):
    """Registers a custom criterion under ``name`` so that saved models can find it again.

    Args:
      name: the name to use in ``criterion=``.
      fn: a ``tfsynapse.Criterion`` named ``name`` (or unnamed: it is given ``name``), or a
        function: for
        filter granularity ``fn(filters [n, d]) -> scores [n]``; for connection granularity
        ``fn(kernel) -> scores [C_in, C_out]``. Lower = pruned first; TF ops only.

    Returns:
      ``name``.

    Raises:
      ValueError: the name is taken by a built-in criterion, ``fn`` is a criterion object
        named otherwise, or ``fn`` is not callable.
    """
    if registry.is_builtin(name):
        raise ValueError(f"'{name}' is a built-in criterion; choose another name.")
    if isinstance(fn, Criterion):
        if fn.name and fn.name != name:
            raise ValueError(
                f"the criterion object is named '{fn.name}'; register it under that name "
                f"(register_criterion('{fn.name}', criterion)) or set criterion.name = '{name}' "
                "first: tfsynapse does not rename your object.")
        fn.name = name  # an unnamed object takes the name it is registered under
        criterion = fn
    elif callable(fn):
        criterion = FunctionCriterion(name, fn)
    else:
        raise ValueError(f"register_criterion('{name}', fn) needs a callable fn or a "
                         f"tfsynapse.Criterion, got {fn!r}.")
    before = registry.register(criterion)
    if before is not None and _identity(before) is not _identity(criterion):
        warnings.warn(
            f"tfsynapse: criterion '{name}' now names another function. Models already built "
            "keep the function they were built with; a model saved with the earlier one loads "
            "with this one.", stacklevel=2)
    return name


def _identity(criterion):
    return criterion.fn if isinstance(criterion, FunctionCriterion) else criterion


@dataclasses.dataclass
class PruningOptions:
    """Everything that decides which units a pruning step removes.

    Attributes:
      criterion: a criterion name (built-in or registered with ``register_criterion``), a
        ``tfsynapse.Criterion`` or a function (see ``register_criterion``).
      granularity: 'filter' (channels of dependency groups) or 'connection' (kernel slices).
      scope: 'layer' (every group/layer reaches the target) or 'global' (one threshold).
      round_to: keep every group's channel count a multiple of this (filter granularity).
      max_pruning_ratio: no group/layer of ``n`` units loses more than
        ``round(max_pruning_ratio * n)`` of them (the nearest whole unit) or all of them. None
        (the default) means 0.9 at filter granularity and 0.99 at connection granularity (so
        the Synaptic Strength paper's 96-98% can be asked for), raised to the largest ratio
        of ``layer_sparsity`` when that is higher (an explicit per-layer ratio is honoured).
      ignored_layers: layer names whose output channels (and connections) are never pruned.
      layer_sparsity: ``{layer name: final ratio}`` overriding the target for the group that
        layer produces (or, at connection granularity, that layer's connections).
      residual: 'group' prunes residual groups as one; 'skip' leaves any group with more than
        one producer unpruned (the D-Score paper's choice for residual blocks).
      seed: seed of the 'random' criterion.
      final_sparsity: the schedule's final target (to scale ``layer_sparsity`` over time).
      only_listed: prune only the groups named in ``layer_sparsity`` (one-shot ratios).
    """

    criterion: str = "l1"
    granularity: str = "filter"
    scope: str = "layer"
    round_to: int = 1
    max_pruning_ratio: float = None
    ignored_layers: tuple = ()
    layer_sparsity: dict = None
    residual: str = "group"
    seed: int = 0
    final_sparsity: float = 1.0
    only_listed: bool = False
    criterion_object: object = dataclasses.field(default=None, compare=False, repr=False)

    def __post_init__(self):
        if self.granularity not in GRANULARITIES:
            raise ValueError(f"granularity must be one of {GRANULARITIES}, got {self.granularity!r}.")
        if self.scope not in SCOPES:
            raise ValueError(f"scope must be one of {SCOPES}, got {self.scope!r}.")
        if self.residual not in RESIDUAL_MODES:
            raise ValueError(f"residual must be one of {RESIDUAL_MODES}, got {self.residual!r}.")
        # a copy (dataclasses.replace) keeps the object it was built with
        kept = self.criterion_object
        given = kept if kept is not None and not registry.is_builtin(kept.name) else self.criterion
        self.criterion, self.criterion_object = _resolve(given, self.granularity)
        if self.granularity not in self.criterion_object.granularities:
            raise ValueError(_unknown_criterion_message(self.criterion, self.granularity))
        if self.criterion_object.selects and self.scope == "global":
            raise ValueError(
                f"criterion '{self.criterion}' selects filters per layer and has no global score; "
                "use scope='layer', or 'dscore' for a global D-Score."
            )
        if isinstance(self.round_to, bool) or not isinstance(self.round_to, int) or self.round_to < 1:
            raise ValueError(f"round_to must be an integer >= 1, got {self.round_to!r}.")
        if self.round_to > 1 and self.granularity == "connection":
            raise ValueError(
                "round_to applies to filter granularity; for connection pruning pass round_to "
                "to tfsynapse.shrink instead."
            )
        self.layer_sparsity = dict(self.layer_sparsity or {})
        for name, ratio in self.layer_sparsity.items():
            check_sparsity(ratio, f"layer_sparsity['{name}']")
        if self.max_pruning_ratio is None:
            default = DEFAULT_MAX_RATIO[self.granularity]
            self.max_pruning_ratio = max([default] + [float(r) for r in self.layer_sparsity.values()])
        if isinstance(self.max_pruning_ratio, bool) or not isinstance(self.max_pruning_ratio, numbers.Real) \
                or not 0.0 < float(self.max_pruning_ratio) <= 1.0:
            raise ValueError(f"max_pruning_ratio must be in (0, 1], got {self.max_pruning_ratio!r}.")
        self.ignored_layers = tuple(self.ignored_layers or ())
        if not 0.0 <= float(self.final_sparsity) <= 1.0:
            raise ValueError(f"final_sparsity must be in [0, 1], got {self.final_sparsity!r}.")
        if self.layer_sparsity and float(self.final_sparsity) == 0.0:
            raise ValueError(
                "layer_sparsity scales with the schedule, whose final sparsity is 0: give the "
                "schedule the largest of your per-layer ratios as its target."
            )

    def to_config(self):
        config = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)
                  if f.name != "criterion_object"}
        config["ignored_layers"] = list(self.ignored_layers)
        return config

    @classmethod
    def from_config(cls, config):
        name = config.get("criterion")
        if isinstance(name, str) and registry.get(name) is None:
            raise ValueError(
                f"this model was pruned with the custom criterion '{name}', which is not "
                f"registered in this process: call tfsynapse.register_criterion('{name}', fn) "
                "with the same function before loading it.")
        return cls(**config)


def _resolve(criterion, granularity):
    """``(name, Criterion)`` of a criterion given by name, as a ``Criterion`` or a function.

    An object or function keeps its identity: the options hold it, so a model computes its
    masks with the criterion it was built with whatever is registered later. It is also
    registered (for saving and loading) under its name. A named ``Criterion`` keeps its name,
    never renamed (registering it replaces what the name named; a different class is warned
    about); a function, or an unnamed object, is named after its ``__name__`` (or class), or,
    when that name is taken by another (two lambdas, two functions named alike), the first free
    ``name_2``, ``name_3``...
    """
    if isinstance(criterion, str):
        found = registry.get(criterion, granularity)
        if found is None:
            raise ValueError(_unknown_criterion_message(criterion, granularity))
        return criterion, found
    if not (isinstance(criterion, Criterion) or callable(criterion)):
        raise ValueError(f"criterion must be a name, a callable or a tfsynapse.Criterion, "
                         f"got {criterion!r}.")
    if isinstance(criterion, Criterion) and criterion.name:
        # a named object keeps its name (it is how a saved model finds it again); the latest
        # object registered under a name is the one a saved model loads with
        if registry.is_builtin(criterion.name):
            raise ValueError(f"criterion {criterion!r} is named '{criterion.name}', a built-in "
                             "criterion's name; give it a name of its own.")
        before = registry.register(criterion)
        if before is not None and type(before) is not type(criterion):
            warnings.warn(
                f"tfsynapse: criterion '{criterion.name}' now names a {type(criterion).__name__}"
                f" (it named a {type(before).__name__}). Models keep the object they were built "
                "with; a model saved with either loads with this one.", stacklevel=4)
        return criterion.name, criterion
    base = (getattr(criterion, "__name__", None) if not isinstance(criterion, Criterion)
            else None) or type(criterion).__name__
    name, n = base, 1
    while registry.is_builtin(name) or (
            registry.get(name) is not None and _identity(registry.get(name)) is not criterion):
        n += 1
        name = f"{base}_{n}"
    if isinstance(criterion, Criterion):
        criterion.name = name  # an unnamed object gets the name it is saved under
        found = criterion
    else:
        found = registry.get(name) or FunctionCriterion(name, criterion)
    registry.register(found)
    return name, found


def check_sparsity(value, what="sparsity"):
    """Validates one sparsity ratio.

    Args:
      value: the ratio.
      what: its name in the error message.

    Returns:
      The ratio as a float.

    Raises:
      ValueError: not a real number in [0, 1).
    """
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ValueError(f"{what} must be a float in [0, 1), got {value!r}.")
    if not 0.0 <= float(value) < 1.0:
        raise ValueError(f"{what} must be in [0, 1), got {value!r}.")
    return float(value)


def _unknown_criterion_message(name, granularity):
    """Every criterion with the granularity it needs, and the closest name to a misspelling."""
    valid = registry.names(granularity)
    other = "connection" if granularity == "filter" else "filter"
    if name in registry.names(other):
        return (f"criterion {name!r} scores {other}s, not {granularity}s: use "
                f"granularity='{other}' with it, or for granularity='{granularity}' one of "
                f"{', '.join(valid)}.")
    known = sorted(set(valid) | set(registry.names(other)))
    close = difflib.get_close_matches(str(name), known, n=1)
    hint = f" Did you mean {close[0]!r}?" if close else ""
    return (f"unknown criterion {name!r}.{hint} Filter criteria (granularity='filter'): "
            f"{', '.join(registry.names('filter'))}; connection criteria "
            f"(granularity='connection'): {', '.join(registry.names('connection'))}; or "
            "register your own with tfsynapse.register_criterion.")
