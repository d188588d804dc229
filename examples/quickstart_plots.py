"""The quickstart's plots (PNG, matplotlib's Agg backend): strengths, training, channels."""


def plot_strengths(before, after, path):
    """Histograms of |synaptic strength| before pruning and of the non-zero ones after."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    fig, ax = plt.subplots(figsize=(6, 3.5))
    bins = np.linspace(0, max(np.abs(before).max(), 1e-6), 60)
    ax.hist(np.abs(before), bins=bins, alpha=0.6, label="before pruning")
    ax.hist(np.abs(after[after != 0]), bins=bins, alpha=0.6, label="after (non-zero)")
    ax.set_xlabel("|synaptic strength|")
    ax.set_ylabel("connections")
    ax.set_yscale("log")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_training(history, path, unit):
    """The pruned fraction and validation accuracy per fine-tuning epoch (``unit``: what is
    pruned, for the legend)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot(history.epochs, history.sparsity, "o-", label=f"pruned fraction ({unit})")
    ax.plot(history.epochs, history.accuracy, "s-", label="validation accuracy")
    ax.set_xlabel("fine-tuning epoch")
    ax.set_ylim(0, 1.02)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_channels(report, dense, path):
    """Output channels per layer, dense beside shrunk (``report``: shrink's report)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [l.name for l in dense.layers if hasattr(l, "filters") or hasattr(l, "units")]
    before = [getattr(dense.get_layer(n), "filters", None) or dense.get_layer(n).units for n in names]
    after = [report.channels.get(n, (b, b))[1] for n, b in zip(names, before)]
    fig, ax = plt.subplots(figsize=(6, 3.5))
    positions = range(len(names))
    ax.bar([p - 0.2 for p in positions], before, width=0.4, label="dense")
    ax.bar([p + 0.2 for p in positions], after, width=0.4, label="shrunk")
    ax.set_xticks(list(positions), names, rotation=30)
    ax.set_ylabel("output channels")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
