"""The sensitivity table (one metric per group and pruning ratio) and its plot.

``SensitivityTable`` is what ``sensitivity_analysis`` returns: JSON and CSV round trips for
spreadsheets and for resuming a long analysis; ``plot_sensitivity`` draws the paper's curves.
"""

import csv
import dataclasses
import json

import numpy as np

from tfsynapse.fileio import atomic_write

CSV_COLUMNS = ("group", "producers", "channels", "ratio", "pruned_channels", "metric", "baseline",
               "macs")
_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


# ----------------------------------------------------------------------------- the table
@dataclasses.dataclass
class SensitivityTable:
    """The result of ``sensitivity_analysis``: one row per (group, ratio).

    Attributes:
      baseline: ``evaluate(model)`` on the unpruned model.
      rows: a list of dicts ``{group, producers, channels, ratio, pruned_channels, metric,
        macs}``: the group's name, its producer layer names, its channel count, the requested
        ratio, the channels actually pruned, the metric with that group alone pruned, and the
        model's MACs with that group alone pruned (as ``count_macs`` counts them after shrink).
      baseline_macs: the unpruned model's MACs (None for hand-made tables).
      settings: how the table was made (criterion, step, max_ratio, round_to, residual).
    """

    baseline: float
    rows: list
    baseline_macs: int = None
    settings: dict = dataclasses.field(default_factory=dict)

    def groups(self):
        """The group names, in the order of their first row.

        Returns:
          A list of group names.
        """
        return list(dict.fromkeys(row["group"] for row in self.rows))

    def curves(self):
        """Each group's sensitivity curve.

        Returns:
          ``{group name: (ratios, metrics)}``, two float numpy arrays sorted by ratio (the
          unpruned point, ratio 0 with ``baseline``, is not included).
        """
        result = {}
        for name in self.groups():
            points = sorted((float(r["ratio"]), float(r["metric"])) for r in self.rows
                            if r["group"] == name)
            result[name] = (np.array([p[0] for p in points], dtype=np.float64),
                            np.array([p[1] for p in points], dtype=np.float64))
        return result

    def to_dict(self):
        """A JSON-ready dict of the table.

        Returns:
          ``{"baseline", "baseline_macs", "settings", "rows"}``.
        """
        return {"baseline": float(self.baseline), "baseline_macs": self.baseline_macs,
                "settings": dict(self.settings), "rows": [_clean_row(r) for r in self.rows]}

    @classmethod
    def from_dict(cls, data):
        """Builds a table from ``to_dict``'s output.

        Args:
          data: the dict.

        Returns:
          A ``SensitivityTable``.

        Raises:
          ValueError: ``data`` lacks ``baseline`` or ``rows``, or a row lacks a field.
        """
        if not isinstance(data, dict) or "baseline" not in data or "rows" not in data:
            raise ValueError("a sensitivity table needs 'baseline' and 'rows' entries; was it "
                             "written by SensitivityTable.to_json?")
        return cls(baseline=float(data["baseline"]), rows=[_clean_row(r) for r in data["rows"]],
                   baseline_macs=data.get("baseline_macs"),
                   settings=dict(data.get("settings") or {}))

    def to_json(self, path):
        """Writes the table as JSON, atomically (a temporary file, then ``os.replace``).

        Args:
          path: the file to write (its folder is created if needed).

        Returns:
          ``path``.
        """
        text = json.dumps(self.to_dict(), indent=1)
        atomic_write(path, lambda f: f.write(text.encode("utf-8")))
        return path

    @classmethod
    def from_json(cls, path):
        """Reads a table written by ``to_json``.

        Args:
          path: the JSON file.

        Returns:
          A ``SensitivityTable``.

        Raises:
          OSError: the file cannot be read.
          ValueError: the file is not a sensitivity table.
        """
        with open(path, encoding="utf-8") as f:
            return cls.from_dict(json.load(f))

    def to_csv(self, path):
        """Writes one CSV line per row, atomically, for spreadsheets and pandas.

        Columns: ``group, producers, channels, ratio, pruned_channels, metric, baseline, macs``;
        ``producers`` are joined with ``;`` and ``macs`` is empty when unknown.

        Args:
          path: the file to write (its folder is created if needed).

        Returns:
          ``path``.
        """
        def write(f):
            import io  # noqa: PLC0415

            text = io.StringIO()
            writer = csv.writer(text, lineterminator="\n")
            writer.writerow(CSV_COLUMNS)
            for row in self.rows:
                writer.writerow([row["group"], ";".join(row["producers"]), row["channels"],
                                 repr(float(row["ratio"])), row["pruned_channels"],
                                 repr(float(row["metric"])), repr(float(self.baseline)),
                                 "" if row.get("macs") is None else row["macs"]])
            f.write(text.getvalue().encode("utf-8"))

        atomic_write(path, write)
        return path


def _clean_row(row):
    missing = [k for k in ("group", "channels", "ratio", "metric") if k not in row]
    if missing:
        raise ValueError(f"sensitivity row {row!r} lacks {missing}.")
    producers = row.get("producers") or [row["group"]]
    if isinstance(producers, str):
        producers = [producers]
    pruned = row.get("pruned_channels")
    return {
        "group": str(row["group"]),
        "producers": [str(p) for p in producers],
        "channels": int(row["channels"]),
        "ratio": float(row["ratio"]),
        "pruned_channels": None if pruned is None else int(pruned),
        "metric": float(row["metric"]),
        "macs": None if row.get("macs") is None else int(row["macs"]),
    }


# ------------------------------------------------------------------------------ plotting
def plot_sensitivity(table, path, title=None):
    """Plots metric versus pruning ratio, one curve per group, as a PNG.

    Each curve starts at ratio 0 with the baseline, which is also drawn as a dashed line. With
    more than 8 groups the legend goes outside the axes. Uses matplotlib's Agg canvas directly
    (no display, no change to pyplot's backend).

    Args:
      table: a ``SensitivityTable``.
      path: the PNG file to write (atomically; its folder is created if needed).
      title: the plot title (default: "Sensitivity (<criterion>)").

    Returns:
      ``path``.

    Raises:
      ImportError: matplotlib is not installed.
      TypeError: ``table`` is not a ``SensitivityTable``.
      ValueError: the table has no rows.
    """
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg  # noqa: PLC0415
        from matplotlib.figure import Figure  # noqa: PLC0415
    except ImportError as err:
        raise ImportError("plot_sensitivity needs matplotlib: pip install tfsynapse[examples] "
                          "(or pip install matplotlib).") from err
    if not isinstance(table, SensitivityTable):
        raise TypeError(f"table must be a SensitivityTable, got {type(table).__name__}.")
    curves = table.curves()
    if not curves:
        raise ValueError("the sensitivity table has no rows to plot.")
    many = len(curves) > 8
    fig = Figure(figsize=(9.5 if many else 7, 4.8), dpi=110)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    import matplotlib  # noqa: PLC0415

    cmap = matplotlib.colormaps["tab20" if len(curves) > 10 else "tab10"]
    styles = ("-", "--", "-.", ":")
    for i, (name, (ratios, metrics)) in enumerate(curves.items()):
        ax.plot(np.concatenate([[0.0], ratios]), np.concatenate([[table.baseline], metrics]),
                marker="o", markersize=3, linewidth=1.2, color=cmap(i % cmap.N),
                linestyle=styles[(i // cmap.N) % len(styles)], label=name)
    ax.axhline(table.baseline, color="black", linestyle="--", linewidth=1.0,
               label=f"baseline ({table.baseline:.4g})")
    ax.set_xlabel("pruning ratio (fraction of the group's filters)")
    ax.set_ylabel("metric (no retraining)")
    ax.set_xlim(left=0.0)
    ax.grid(True, alpha=0.3)
    criterion = table.settings.get("criterion")
    ax.set_title(title if title is not None else
                 "Sensitivity" + (f" ({criterion})" if criterion else ""))
    if many:
        ax.legend(loc="upper left", bbox_to_anchor=(1.02, 1.0), fontsize="x-small",
                  ncol=1 + len(curves) // 25, frameon=False)
    else:
        ax.legend(loc="best", fontsize="small")
    atomic_write(path, lambda f: fig.savefig(f, format="png", bbox_inches="tight"))
    return path
