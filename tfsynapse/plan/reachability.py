"""How much of a target sparsity a ``MaskPlan``'s caps and ``round_to`` let it reach (numpy).

Read before any mask is computed, so that an unreachable target is an error with both
numbers (``prune_synaptic``, ``prune_once``) instead of a silent shortfall.
"""

from tfsynapse.plan import rounding


def reachability(plan, sparsity):
    """How much of ``sparsity`` the caps and ``round_to`` let this plan reach.

    Units are filters of the planned groups (filter granularity) or connections of the
    pruned convolutions (connection granularity); frozen groups are not counted.

    Args:
      plan: a ``MaskPlan``.
      sparsity: the target (a float in [0, 1)).

    Returns:
      A dict: ``requested`` and ``reachable`` unit counts, ``total`` units, ``capped``
      (``[(name, wanted, cap)]`` of the groups/layers a cap stops, or the pool for global
      scope), ``rounded`` (units lost to ``round_to``, layer scope only),
      ``frozen_units`` (units in frozen groups) and ``one_unit_bound`` (True when every
      binding cap is the one unit a group/layer always keeps, not max_pruning_ratio),
      ``global_rounding_bound`` (the most units ``round_to`` can cost the global pool).
    """
    units = plan.connection_layers if plan.options.granularity == "connection" else plan.groups
    total = sum(u.n for u in units)
    pooled = [u for u in units if plan.options.scope == "global" and u.factor is None]
    requested = reachable = rounded = 0
    capped = []
    one_unit_bound = True  # every cap that stops the target is the one-unit floor
    rounding_bound = 0
    for u in units:
        if u in pooled:
            continue
        s = sparsity * u.factor if u.factor is not None else sparsity
        want = rounding.pruned_count(s, u.n)
        got = min(want, u.cap)
        if got < want:
            capped.append((_unit_name(u), want, u.cap))
            one_unit_bound = one_unit_bound and u.cap == u.n - 1
        kept = rounding.kept_after(got, u.n, u.round_to)
        rounded += got - (u.n - kept)
        requested += want
        reachable += u.n - kept
    if pooled:
        n = sum(u.n for u in pooled)
        want = rounding.pruned_count(sparsity, n)
        cap = sum(u.cap for u in pooled)
        if cap < want:
            capped.append(("all pooled units (scope='global')", want, cap))
            one_unit_bound = one_unit_bound and cap == n - len(pooled)
        requested += want
        reachable += min(want, cap)
        # Each pooled unit count is rounded after the global selection, which depends on
        # the scores: only a bound is known before the masks are computed.
        rounding_bound = min(min(want, cap), sum(u.round_to - 1 for u in pooled))
    frozen_units = sum(g.size for g in plan.graph.groups
                       if g.name in plan.frozen and plan.options.granularity == "filter")
    return {"requested": requested, "reachable": reachable, "total": total,
            "capped": capped, "rounded": rounded, "frozen_units": frozen_units,
            "one_unit_bound": bool(capped) and one_unit_bound,
            "global_rounding_bound": rounding_bound}


def _unit_name(unit):
    return unit.group.name if hasattr(unit, "group") else unit.layer.name
