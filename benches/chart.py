"""The chart of ``benches/e2e.py``'s workload runs: MB/s per workload for (a) the Kafka
ceiling, (b) the S3 ceiling, (c) ours and (d) OpenMSIStream 1.8.8, medians with min-max
bars, from the newest ``e2e-<workload>-*.json`` of each named workload in a results
directory. e2e.py redraws it after every workload; by hand:

    .venv/bin/python benches/chart.py                      # benches/results/workloads.png
    .venv/bin/python benches/chart.py --results benches/results/scaled

Needs matplotlib (in the ``dev`` extra: ``pip install -e '.[dev]'``; ``./run install``
installs it).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

BENCHES = Path(__file__).resolve().parent
RESULTS = BENCHES / "results"
WORKLOADS = ("small", "typical", "large", "mixed")
PROGRAMS = ("kafka", "s3", "ours", "theirs")
LABELS = {
    "kafka": "(a) Kafka ceiling: 1 plain consumer",
    "s3": "(b) S3 ceiling: same bytes from memory",
    "ours": "(c) ours",
    "theirs": "(d) OpenMSIStream 1.8.8",
}
COLORS = {"kafka": "#9e9e9e", "s3": "#5f7f9f", "ours": "#d9822b", "theirs": "#6a9f58"}
PNG_NAME = "workloads.png"


def latest_results(results_dir: Path) -> dict[str, dict[str, Any]]:
    """The newest result (by its ``finished`` time) of each named workload, among
    those that measured all four programs if there is one (a run with
    ``--skip_theirs`` or ``--only`` does not hide the comparison)."""
    best: dict[str, dict[str, Any]] = {}

    def rank(data: dict[str, Any]) -> tuple[bool, str]:
        summary = data.get("summary") or {}
        return all(summary.get(p) for p in PROGRAMS), str(data.get("finished", ""))

    for path in sorted(results_dir.glob("e2e-*.json")):
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        w = data.get("workload")
        if w not in WORKLOADS or not data.get("summary"):
            continue
        if w not in best or rank(data) > rank(best[w]):
            best[w] = {**data, "_path": path.name}
    return best


def _subtitle(results: dict[str, dict[str, Any]]) -> str:
    dates = sorted({r.get("finished", "?")[:10] for r in results.values()})
    commits = sorted(
        {str(r.get("measured_package", {}).get("commit", "?")) for r in results.values()}
    )
    scales = sorted({r.get("scale", 1.0) for r in results.values()})
    machine = next(iter(results.values())).get("machine", {})
    lines = [
        f"measured {', '.join(dates)}, commit {', '.join(commits)}; "
        f"{machine.get('nproc', '?')} vCPUs, broker and S3 server on the same machine",
    ]
    if scales != [1.0]:
        lines.append(
            f"SCALE {', '.join(f'{s:g}' for s in scales)}: a quick check, not a measurement"
        )
    return "\n".join(lines)


def draw(results_dir: Path = RESULTS, out: Path | None = None) -> Path | None:
    """Draws the chart of ``results_dir``; returns its path (None if there is nothing)."""
    results = latest_results(results_dir)
    if not results:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    workloads = [w for w in WORKLOADS if w in results]
    fig, ax = plt.subplots(figsize=(max(8.0, 2.6 * len(workloads) + 2.5), 6.0))
    width = 0.2
    top = 0.0
    for k, program in enumerate(PROGRAMS):
        for i, w in enumerate(workloads):
            s = results[w]["summary"].get(program, {}).get("throughput_MBps")
            x = i + (k - 1.5) * width
            if not s:
                ax.text(x, 1.05, "not run", rotation=90, ha="center", va="bottom", fontsize=7)
                continue
            med, lo, hi = s["median"], s["min"], s["max"]
            top = max(top, hi)
            ax.bar(
                x,
                med,
                width,
                color=COLORS[program],
                yerr=[[med - lo], [hi - med]],
                capsize=3,
                ecolor="#333333",
                error_kw={"linewidth": 0.8},
            )
            ax.text(x, hi * 1.08, f"{med:.3g}", ha="center", va="bottom", fontsize=7.5)
    # One legend entry per program, whether or not it ran on every workload.
    handles = [plt.Rectangle((0, 0), 1, 1, color=COLORS[p]) for p in PROGRAMS]
    ax.legend(handles, [LABELS[p] for p in PROGRAMS], fontsize=8, loc="upper left", ncols=2)
    ticks = []
    for w in workloads:
        r = results[w]
        ds = r.get("dataset", {})
        ratios = r["summary"].get("ratios", {})
        lines = [w, f"{ds.get('files', '?')} files, {ds.get('bytes', 0) / 1e6:,.0f} MB"]
        cd = ratios.get("c/d throughput (ours / OpenMSIStream)")
        cab = ratios.get("c/min(a,b) throughput (ours / the lower ceiling)")
        lines.append(f"c/d {cd:g}x" if cd else "c/d -")
        lines.append(f"c/min(a,b) {cab:g}" if cab else "c/min(a,b) -")
        n = {p: r["summary"].get(p, {}).get("runs_ok", 0) for p in PROGRAMS}
        lines.append("runs a/b/c/d " + "/".join(str(n[p]) for p in PROGRAMS))
        ticks.append("\n".join(lines))
    ax.set_xticks(range(len(workloads)), ticks, fontsize=8)
    ax.set_yscale("log")
    ax.set_ylim(1, max(top, 10) * 4)
    ax.set_ylabel("MB/s (10^6 B/s of file data), log scale\nmedian; bars: min-max")
    ax.set_title(
        "s3transfer-stream: end to end per workload (benches/e2e.py)\n" + _subtitle(results),
        fontsize=9,
    )
    ax.grid(axis="y", which="both", alpha=0.25)
    fig.tight_layout()
    out = out or results_dir / PNG_NAME
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--results", type=Path, default=RESULTS, help="directory of e2e-*.json")
    ap.add_argument("--out", type=Path, default=None, help=f"PNG (default <results>/{PNG_NAME})")
    args = ap.parse_args(argv)
    png = draw(args.results, args.out)
    if png is None:
        print(f"no e2e workload results in {args.results}", file=sys.stderr)
        return 1
    print(png)
    return 0


if __name__ == "__main__":
    sys.exit(main())
