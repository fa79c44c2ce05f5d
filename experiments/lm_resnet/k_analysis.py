"""The paper's analysis at CPU scale, from kept results.json records: learned k_n per block, and
accuracy against parameters for LM-ResNet vs ResNet at several depths (parameter compression).

Usage:
    python experiments/lm_resnet/k_analysis.py [RECORD_DIR ...] [--out DIR]

RECORD_DIRs hold results.json records (a sweep directory ``<n>_<exp>/results.json`` or a folder
of copies ``*.json``); default: the kept ``runs/cpu_study`` and ``runs/compression``. Writes
``k_per_block.png``, ``compression.png`` and ``compression.md`` into ``--out`` (default: this
folder) and prints the markdown tables. Runs that differ in training images, epochs or test
images form separate "scales" and are never compared with each other.
"""

from __future__ import annotations

import argparse
import json
import statistics
from collections import defaultdict
from pathlib import Path

from odelab.papers.lm_resnet import LMResNet
from odelab.papers.lm_resnet.analysis import plot_k

HERE = Path(__file__).resolve().parent


def load(dirs: list[Path]) -> list[dict]:
    runs = []
    for d in dirs:
        for f in sorted([*d.glob("*/results.json"), *d.glob("*.json")]):
            r = json.loads(f.read_text())
            if r.get("status") == "finished":
                runs.append(r)
    return runs


def scale_of(r: dict) -> str:
    """The training scale: training files / subset, epochs, test subset."""
    d, t = r["config"]["data"], r["config"]["trainer"]
    files = d.get("train_files") or ["all"]
    n_train = d.get("train_subset") or f"{10_000 * len(files)} ({len(files)} CIFAR batch files)"
    n_test = d.get("test_subset") or "all 10k"
    return f"train {n_train}, {t['max_epochs']} epochs, test {n_test}"


def net_of(r: dict) -> LMResNet:
    kw = {k: v for k, v in r["config"]["model"]["net"].items() if not k.startswith("_")}
    return LMResNet(**kw)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("dirs", nargs="*", type=Path)
    ap.add_argument("--out", type=Path, default=HERE)
    args = ap.parse_args()
    dirs = args.dirs or [HERE / "runs" / "cpu_study", HERE / "runs" / "compression"]
    runs = load(dirs)
    if not runs:
        raise SystemExit(f"no finished results.json records under {[str(d) for d in dirs]}")

    # accuracy vs parameters, per scale, depth and arm
    groups: dict[tuple, list[dict]] = defaultdict(list)
    for r in runs:
        net = r["config"]["model"]["net"]
        groups[(scale_of(r), net["depth"], bool(net["lm"]))].append(r)
    lines = [
        "| scale | depth | network | params | LM blocks | seeds | test acc (%) mean ± std |",
        "|---|---|---|---|---|---|---|",
    ]
    points: dict[tuple[str, bool], list[tuple[int, float]]] = defaultdict(list)
    for (scale, depth, lm), rs in sorted(groups.items()):
        net = net_of(rs[0])
        params = sum(p.numel() for p in net.parameters())
        accs = [100 * r["metrics"]["test/acc"] for r in rs]
        spread = f" ± {statistics.stdev(accs):.2f}" if len(accs) > 1 else " (one seed)"
        name = f"{'LM-ResNet' if lm else 'ResNet'}-{depth}"
        mean = statistics.mean(accs)
        lines.append(
            f"| {scale} | {depth} | {name} | {params:,} | {len(net.ks)} | {len(rs)} | "
            f"{mean:.2f}{spread} |"
        )
        points[(scale, lm)].append((params, mean))
    table = "\n".join(lines)

    # learned k_n, every LM run
    k_runs = {}
    for r in runs:
        if r.get("k"):
            epochs = r["config"]["trainer"]["max_epochs"]
            k_runs[f"d{r['config']['model']['net']['depth']} s{r['seed']} {epochs} ep"] = r["k"]
    k_lines = ["| run | " + " | ".join(["k_n by block (paper convention)"]) + " |", "|---|---|"]
    for label, ks in k_runs.items():
        by_block = sorted(ks.items(), key=lambda t: int(t[0]))
        vals = ", ".join(f"{int(b)}: {statistics.mean(v):+.3f}" for b, v in by_block)
        k_lines.append(f"| {label} | {vals} |")
    allk = [v for ks in k_runs.values() for vs in ks.values() for v in vs]
    k_range = f"All learned k_n lie in [{min(allk):+.3f}, {max(allk):+.3f}]." if allk else ""

    args.out.mkdir(parents=True, exist_ok=True)
    plot_k(k_runs, args.out / "k_per_block.png", title="learned k_n per block, CPU-scale runs")
    _plot_compression(points, args.out / "compression.png")
    md = f"{table}\n\n" + "\n".join(k_lines) + f"\n\n{k_range}\n"
    (args.out / "compression.md").write_text(md)
    print(md)


def _plot_compression(points, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.0, 3.4), dpi=100)
    for (scale, lm), pts in sorted(points.items()):
        pts = sorted(pts)
        label = f"{'LM-ResNet' if lm else 'ResNet'} ({scale})"
        ax.plot(*zip(*pts), marker="o" if lm else "s", ls="-" if lm else "--", label=label)
    ax.set_xlabel("parameters")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title("accuracy vs parameters, CPU scale (widths 8/16/32)", fontsize=9)
    ax.legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


if __name__ == "__main__":
    main()
