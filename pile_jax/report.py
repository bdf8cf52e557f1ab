"""Markdown table and PNG plot of an end-to-end run (``results.md``, ``results.png``)."""

from __future__ import annotations

import io
from typing import Mapping, Sequence

import numpy as np

from pile_jax import io as pio

COLUMNS = (("ndcg_cut_10", "NDCG@10"), ("recip_rank", "MRR"), ("map", "MAP"), ("pnr", "PNR (mean of lists)"),
           ("pnr_pooled", "PNR (pooled pairs)"))


def _cell(stats: Mapping[str, float]) -> str:
    if stats["n"] > 1:
        return f"{stats['mean']:.4f} ± {stats['std']:.4f}"
    return f"{stats['mean']:.4f}"


def _p(value) -> str:
    return "" if value is None else (f"{value:.2g}" if value < 0.001 else f"{value:.3f}")


def markdown_table(systems: Mapping[str, Mapping[str, Mapping[str, float]]],
                   significance: Mapping[str, Mapping] | None = None) -> str:
    """One row per system: mean ± std over seeds (std: sample std, ddof=1); with
    ``significance`` (system -> ``{p, p_holm, reference}``), the paired test's p and Holm p
    against the reference ("ref" on the reference's row, empty for untested systems)."""
    sig = significance or {}
    extra = " p | Holm p |" if sig else ""
    lines = ["| system | seeds | " + " | ".join(t for _, t in COLUMNS) + " |" + extra,
             "|---|---|" + "---|" * len(COLUMNS) + ("---|---|" if sig else "")]
    for name, stats in systems.items():
        n = next(iter(stats.values()))["n"]
        row = f"| {name} | {n} | " + " | ".join(_cell(stats[m]) for m, _ in COLUMNS) + " |"
        if sig:
            s = sig.get(name)
            if s is None:
                row += " | |"
            elif s.get("p") is None:
                row += " ref | ref |"
            else:
                row += f" {_p(s['p'])} | {_p(s['p_holm'])} |"
        lines.append(row)
    return "\n".join(lines)


def save_figure(fig, path) -> None:
    """Saves a matplotlib figure as PNG to a local path or URL (atomically) and closes it."""
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    pio.write_bytes(path, buf.getvalue())


def write_report(results: Mapping, curves: Mapping[str, Sequence[Sequence[tuple[int, float]]]], out: str,
                 dev_curves: Mapping[str, Sequence[Sequence[tuple[int, float]]]] | None = None,
                 dev_metric: str = "ndcg_cut_10") -> None:
    """Writes ``results.md`` and ``results.png`` (training curves, the dev metric during training
    when ``dev_curves`` has points, NDCG@10 per system) into ``out`` (local or URL).
    ``curves`` / ``dev_curves``: per run name, one ``[(step, value), ...]`` per seed."""
    md = [f"# pile_jax run: {results['collection']} ({results['eval_split']}, {results['eval_queries']} queries)",
          "", markdown_table(results["systems"], results.get("significance")), "",
          f"Teachers: {', '.join(results['teachers'])}; best single teacher on dev: {results['best_teacher']}.",
          f"Student seeds: {results['seeds']}. Timings (s): {results['timings_s']}.",
          "Metrics are trec_eval's (`ndcg_cut_10` with linear gains, `recip_rank`, `map`) plus PNR; "
          "run files are in `runs/`."]
    setup = results.get("significance_setup")
    if setup:
        md.append(f"p: {setup['test']} over the {results['eval_queries']} eval queries ({setup['metric']} per query, "
                  f"mean over seeds) against {setup['reference']}; Holm p: Holm's correction across "
                  f"{', '.join(setup['family'])}.")
    pio.write_text(pio.as_path(out) / "results.md", "\n".join(md) + "\n")

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    dev_curves = {k: v for k, v in (dev_curves or {}).items() if any(v)}
    if dev_curves:
        fig, (ax1, ax3, ax2) = plt.subplots(1, 3, figsize=(19, 5))
        _plot_seed_curves(ax3, dev_curves)
        ax3.set_xlabel("step")
        ax3.set_ylabel(f"dev {dev_metric}")
        ax3.set_title(f"students: dev {dev_metric} during training (the selection metric)")
        ax3.legend(fontsize=7)
    else:
        fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(13, 5))
    _plot_seed_curves(ax1, curves)
    ax1.set_xlabel("step")
    ax1.set_ylabel("training loss (the run's objective)")
    ax1.set_title("students: learning curves")
    if curves:
        ax1.legend(fontsize=7)
    names = list(results["systems"])
    means = np.array([results["systems"][s]["ndcg_cut_10"]["mean"] for s in names])
    stds = np.array([results["systems"][s]["ndcg_cut_10"]["std"] for s in names])
    y = np.arange(len(names))
    ax2.barh(y, means, xerr=stds, color=["C1" if s == "student_init" else "C0" if s.startswith("student") else "C7" for s in names])
    ax2.set_yticks(y, names, fontsize=7)
    ax2.invert_yaxis()
    ax2.set_xlabel("NDCG@10 (mean ± std over seeds)")
    ax2.set_title(f"{results['collection']} {results['eval_split']}")
    fig.tight_layout()
    save_figure(fig, pio.as_path(out) / "results.png")


def _plot_seed_curves(ax, curves: Mapping[str, Sequence[Sequence[tuple[int, float]]]]) -> None:
    """One faint line per seed and the mean over seeds (bold) per run name."""
    for k, (name, runs) in enumerate(curves.items()):
        color = f"C{k % 10}"
        for curve in runs:
            if curve:
                steps, values = zip(*curve)
                ax.plot(steps, values, color=color, alpha=0.3, lw=0.8)
        full = [c for c in runs if c]
        if full:
            n = min(len(c) for c in full)
            steps = [s for s, _ in full[0][:n]]
            mean = np.mean([[v for _, v in c[:n]] for c in full], axis=0)
            ax.plot(steps, mean, color=color, lw=2, marker="o" if n <= 12 else None, ms=3,
                    label=f"{name} (mean of {len(full)} seeds)")


def jsonable(obj):
    """``obj`` with NumPy arrays / scalars turned into lists / Python numbers (for ``json.dump``)."""
    if isinstance(obj, dict):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return jsonable(obj.tolist())
    if isinstance(obj, (np.floating, np.integer)):
        return obj.item()
    return obj
