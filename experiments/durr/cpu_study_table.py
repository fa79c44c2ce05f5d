"""The CPU study's table and claim checks, rebuilt from the kept results.json records.

Usage: python experiments/durr/cpu_study_table.py [experiments/durr/runs/cpu_study]
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

SEEN = (15.0, 25.0, 35.0)  # inside the training range [10, 35]
UNSEEN = (45.0, 55.0)


def _cells(path: Path) -> dict[float, dict]:
    res = json.loads(path.read_text())
    cells = res["restoration"]["cells"]
    return {float(g.rsplit("_s", 1)[1]): row for g, row in cells.items()}


def main(folder: str | Path = Path(__file__).parent / "runs" / "cpu_study") -> dict:
    folder = Path(folder)
    durr = _cells(folder / "durr_denoise_lite.json")
    dncnn = _cells(folder / "dncnn_denoise_small.json")
    bm3d_path = folder / "bm3d_denoise.json"
    bm3d = _cells(bm3d_path) if bm3d_path.is_file() else {}
    levels = sorted(durr)
    best_t = next(iter(durr.values())).get("best_T_ref")
    print(
        "| sigma | DURR learned: PSNR / steps | hand-set T(sigma) | best fixed T "
        f"(T={best_t}, chosen at 25) | oracle T: PSNR (T) | DnCNN 7.3k | BM3D |"
    )
    print("|---|---|---|---|---|---|---|")
    for s in levels:
        d = durr[s]
        bm = f"{bm3d[s]['psnr']:.2f}" if s in bm3d else "-"
        print(
            f"| {s:g}{'' if s in SEEN else ' (unseen)'} | {d['psnr']:.2f} / "
            f"{d['steps']:.2f} ± {d['steps_std']:.2f} | {d['psnr_sched']:.2f} | "
            f"{d['psnr_bestT']:.2f} | {d['psnr_oracle']:.2f} ({d['oracle_T']}) | "
            f"{dncnn[s]['psnr']:.2f} | {bm} |"
        )
    steps = [durr[s]["steps"] for s in levels]
    claims = {
        "a_steps_grow": all(b >= a for a, b in zip(steps, steps[1:], strict=False))
        and steps[-1] > steps[0],
        "b_unseen_beats_bestT": all(durr[s]["psnr"] > durr[s]["psnr_bestT"] for s in UNSEEN),
        "b_unseen_beats_dncnn": all(durr[s]["psnr"] > dncnn[s]["psnr"] for s in UNSEEN),
        "c_seen_within_0.3dB_of_oracle": all(
            durr[s]["psnr_oracle"] - durr[s]["psnr"] <= 0.3 for s in SEEN
        ),
    }
    gaps = ", ".join(f"{s:g}: {durr[s]['psnr_oracle'] - durr[s]['psnr']:.2f}" for s in SEEN)
    print(f"\nsteps by sigma: {[round(v, 2) for v in steps]}")
    print(f"oracle minus learned at seen sigma (dB): {gaps}")
    for k, v in claims.items():
        print(f"claim {k}: {'holds' if v else 'does not hold'}")
    return claims


if __name__ == "__main__":
    main(*sys.argv[1:2])
