"""The comparison report: one row per model (the source first), as a rich table for the
terminal, a markdown table and a PNG plot (metric vs latency, marker area = size on disk)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ferry.optimize._measure import Measurement


@dataclass(frozen=True)
class Row:
    label: str  # "source", "int8", ...
    version: str | None  # the registered version, when there is one
    how: str
    m: Measurement


def _size(n: int) -> str:
    return f"{n / 1e6:.2f} MB" if n >= 1e6 else f"{n / 1e3:.1f} kB"


def _cells(row: Row, base: Measurement) -> list[str]:
    m = row.m
    if m.value is None:
        metric = "not checked"
    elif row.m is base:
        metric = f"{m.value:.4f}"
    else:
        delta = m.value - base.value if base.value is not None else None
        scale = 100 if m.metric == "test_accuracy" else 1
        unit = " pts" if m.metric == "test_accuracy" else ""
        metric = f"{m.value:.4f} ({delta * scale:+.2f}{unit})" if delta is not None else f"{m.value:.4f}"
    speed = base.p50(32) / m.p50(32) if m.p50(32) else float("nan")
    smaller = base.size_bytes / m.size_bytes if m.size_bytes else float("nan")
    return [
        row.label, row.version or "-", row.how, metric,
        f"{m.p50(1):.3f}", f"{m.p99(1):.3f}", f"{m.p50(32):.3f}", f"{m.p99(32):.3f}", f"{speed:.2f}x",
        f"{m.throughput:,.0f}", f"{_size(m.size_bytes)} ({smaller:.2f}x)", f"{m.parameters:,}", f"{m.sparsity:.1%}",
        "-" if m.max_abs_diff is None else f"{m.max_abs_diff:.2e}",
    ]


HEADERS = ["model", "version", "how made", "metric (vs source)", "p50 b1 ms", "p99 b1 ms", "p50 b32 ms", "p99 b32 ms",
           "speedup b32", "samples/s b32", "size (smaller)", "params", "sparsity", "max abs diff"]


# The terminal table leaves out what the markdown report has room for (how made, p99 at batch 1,
# throughput); its rows stay one line each at ~120 columns.
_TERMINAL = ["model", "version", "metric (vs source)", "p50 b1 ms", "p50 b32 ms", "p99 b32 ms", "speedup b32",
             "size (smaller)", "sparsity", "max abs diff"]


def rich_table(rows: list[Row], title: str) -> Any:
    from rich.table import Table

    keep = [HEADERS.index(h) for h in _TERMINAL]
    caption = "\n".join(f"{row.label}: {row.how}" for row in rows[1:])
    table = Table(title=title, title_justify="left", caption=caption, caption_justify="left")
    for i, header in enumerate(_TERMINAL):
        table.add_column(header, justify="left" if i < 3 else "right", no_wrap=True)
    for row in rows:
        cells = _cells(row, rows[0].m)
        table.add_row(*[cells[i] for i in keep], style="dim" if row is rows[0] else None)
    return table


def markdown(rows: list[Row], title: str, notes: list[str]) -> str:
    lines = [f"# {title}", "", "| " + " | ".join(HEADERS) + " |", "|" + "---|" * len(HEADERS)]
    for row in rows:
        lines.append("| " + " | ".join(c.replace("|", "\\|") for c in _cells(row, rows[0].m)) + " |")
    return "\n".join(lines + [""] + [f"- {n}" for n in notes]) + "\n"


def plot(rows: list[Row], title: str, path: Path) -> Path:
    """Metric (or size, without evaluation data) against p50 latency at batch 32."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    checked = all(r.m.value is not None for r in rows)
    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=110)
    biggest = max(r.m.size_bytes for r in rows) or 1
    for row in rows:
        y = row.m.value if checked else row.m.size_bytes / 1e6
        ax.scatter(row.m.p50(32), y, s=60 + 900 * row.m.size_bytes / biggest, alpha=0.6,
                   edgecolors="black", marker="s" if row is rows[0] else "o")
        ax.annotate(f"{row.label} ({_size(row.m.size_bytes)})", (row.m.p50(32), y), textcoords="offset points",
                    xytext=(8, 6), fontsize=8)
    ax.set_xlabel("p50 latency at batch 32 (ms, lower is better)")
    ax.set_ylabel(rows[0].m.metric if checked else "size on disk (MB)")
    ax.set_title(title, fontsize=10)
    ax.grid(True, alpha=0.3)
    ax.margins(x=0.25, y=0.2)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path
