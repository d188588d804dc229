"""The ``Keep`` value: which units of each dependency group a plan keeps.

``{group name: bool array}`` (True = kept), one entry per planned group, keyed by the group's
name (its first producer's layer name), which is the same in the pruned model's graph and in
the stripped model's. It flows plan -> pruned model (``keep()``) -> ``strip_pruning`` (which
attaches it to the stripped model) -> ``shrink``, which removes exactly those units (checking
that their weights are zero) instead of re-deriving them from zeros. A model without it (one
pruned by anything else, or loaded from a file) shrinks by the zeros contract.
"""

ATTRIBUTE = "_tfsynapse_keep"


def attach(model, keep):
    """Attaches ``keep`` to ``model`` (not tracked by Keras, not saved with the model)."""
    object.__setattr__(model, ATTRIBUTE, {name: kept.copy() for name, kept in keep.items()})
    return model


def attached(model):
    """The ``Keep`` value attached to ``model`` by ``strip_pruning``, or None."""
    return getattr(model, ATTRIBUTE, None)
