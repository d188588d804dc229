"""Channel alignment for a latency budget, chosen from measurements (``round_to=None``).

LiteRT's XNNPACK kernels compute channels in tiles (their width depends on the precision and
the CPU), so a layer of 61 channels can cost what one of 64 costs, and the best multiple on one
machine and precision is not the best on another. Instead of a fixed ``round_to=8``,
``choose_round_to`` prunes the model once per candidate multiple (1, 4, 8, 16) at the uniform
ratio the budget suggests, shrinks, converts in the budget's precision and times the candidates
interleaved (LiteRT here, or the device's ``measure_latency``); the multiple with the lowest
measured milliseconds per remaining MAC wins, going up the list: a larger multiple replaces
the one chosen so far only when it is at least ``margin`` (3%) better per MAC, since a finer
multiple meets a budget more tightly. Only multiples that can reach the budget compete: a
multiple whose most pruned configuration (every group at its cap) keeps more MACs than the
budget allows (estimated as dense MACs x budget / dense ms) is left out, since it would make
the budget unreachable (a 16-channel layer cannot be pruned at ``round_to=16``). The
measurements are cached with the latencies (key: the dense file's SHA-256, which fixes the
model and precision, and the threads), so later searches on the same model, precision and
machine do not measure again, whatever their budget; the choice among the reachable
multiples is made per budget. The candidates are pruned with the caller's frozen layers and
cap.
"""

import statistics

from tfsynapse.graph import count_macs

CANDIDATES = (1, 4, 8, 16)
MARGIN = 0.03


def choose_round_to(shaped, ratio, convert, time_files, cache, dense_key, say,
                    candidates=CANDIDATES, margin=MARGIN, reachable=None):
    """The channel multiple with the lowest measured ms per MAC at ``ratio``.

    Args:
      shaped: ``shaped(ratio, multiple) -> shrunk model``: the dense model pruned at one
        ratio keeping multiples of ``multiple`` (with the caller's frozen layers and cap).
      ratio: the uniform ratio every candidate is pruned at (the budget's estimate).
      convert: ``convert(model) -> tflite bytes`` in the budget's precision.
      time_files: ``time_files({name: tflite bytes}) -> {name: ms}`` (interleaved timing).
      cache: a ``LatencyCache`` (the measurements are stored in it) or None.
      dense_key: the dense file's cache key (``LatencyCache.key``): one measurement per
        model file (model and precision), thread count and machine.
      say: a print function for progress.
      candidates: the multiples to try (the first is always eligible).
      margin: how much faster per MAC than the multiple chosen so far a larger one must be.
      reachable: ``reachable(multiple) -> (bool, reason)`` or None (every multiple competes).

    Returns:
      ``(round_to, table)``: the chosen multiple and ``{multiple: (MACs, ms, ms per MAC)}``
      (MACs and ms are None when the measurements came from the cache).
    """
    key = f"alignment:{dense_key}"
    known = cache.get_values(key) if cache is not None else None
    if known is not None and len(known) == 2 * len(candidates):
        table = {int(m): (None, None, v) for m, v in zip(known[::2], known[1::2])}
        say(f"prune_to_budget: alignment measured before (cache {cache.path})")
    else:
        files, macs = {}, {}
        for multiple in candidates:
            small = shaped(ratio, multiple)
            macs[multiple] = count_macs(small)
            files[multiple] = convert(small)
        times = time_files(files)
        table = {m: (macs[m], times[m], times[m] / max(macs[m], 1)) for m in candidates}
        say("prune_to_budget: alignment at ratio {:.2f}: {}".format(ratio, ", ".join(
            f"{m}: {t[1]:.4g} ms / {t[0] / 1e6:.4g} MMACs" for m, t in table.items())))
        if cache is not None:
            cache.put(key, [v for m in candidates for v in (m, table[m][2])])
    chosen = candidates[0]
    for multiple in candidates[1:]:
        if multiple not in table:
            continue
        ok, reason = reachable(multiple) if reachable is not None else (True, "")
        if not ok:
            say(f"prune_to_budget: round_to={multiple} left out: {reason}")
            continue
        if table[multiple][2] < (1.0 - margin) * table[chosen][2]:
            chosen = multiple
    say(f"prune_to_budget: round_to={chosen}")
    return chosen, table


def interleaved(measure_file, rounds=3):
    """``time_files`` from ``measure_file(tflite) -> ms``: every file once per round, rounds
    interleaved (slow drifts of a shared machine hit every candidate alike), median per file."""
    def time_files(files):
        times = {name: [] for name in files}
        for _ in range(rounds):
            for name, flatbuffer in files.items():
                times[name].append(measure_file(flatbuffer))
        return {name: statistics.median(values) for name, values in times.items()}

    return time_files
