"""ImageNet worker cost per image: our one-call crop vs the naive two-step transform.

Ours (odelab.data.imagenet.ImageFileDataset): evaluation decodes the JPEG at a reduced scale
(``Image.draft``) and resizes + centre-crops in one ``Image.resize(box=...)``; training crops and
resizes in one call. Naive: full-size decode, then resize, then crop (the torchvision recipe done
as separate PIL steps). Synthetic 500x375 JPEGs (ImageNet's typical size), one process.

Usage: python benchmarks/imagenet_decode.py [--images 48] [--repeats 3]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from odelab.data.imagenet import ImageFileDataset, center_box, random_resized_box


def naive_eval(path: str, resize: int = 256, size: int = 224) -> np.ndarray:
    img = Image.open(path).convert("RGB")
    w, h = img.size
    s = resize / min(w, h)
    img = img.resize((round(w * s), round(h * s)), Image.Resampling.BILINEAR)
    w, h = img.size
    left, top = (w - size) // 2, (h - size) // 2
    return np.asarray(img.crop((left, top, left + size, top + size)))


def naive_train(path: str, rng: np.random.Generator, size: int = 224) -> np.ndarray:
    img = Image.open(path).convert("RGB")
    box = random_resized_box(*img.size, rng, (0.08, 1.0), (3 / 4, 4 / 3))
    return np.asarray(img.crop(box).resize((size, size), Image.Resampling.BILINEAR))


def paired_ms(fa, fb, n: int, repeats: int) -> tuple[float, float]:
    """Mean ms/image of ``fa`` and ``fb``, interleaved image by image (load drift hits both);
    the best of ``repeats`` passes for each."""
    best_a = best_b = float("inf")
    for _ in range(repeats):
        ta = tb = 0.0
        for i in range(n):
            t0 = time.perf_counter()
            fa(i)
            t1 = time.perf_counter()
            fb(i)
            ta, tb = ta + t1 - t0, tb + time.perf_counter() - t1
        best_a, best_b = min(best_a, ta / n * 1e3), min(best_b, tb / n * 1e3)
    return best_a, best_b


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--images", type=int, default=48)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as d:
        paths = []
        for i in range(args.images):
            # smooth random image (compresses like a photo, unlike white noise)
            small = rng.integers(0, 256, (24, 32, 3), dtype=np.uint8)
            img = Image.fromarray(small).resize((500, 375), Image.Resampling.BICUBIC)
            p = Path(d) / f"{i}.JPEG"
            img.save(p, "JPEG", quality=90)
            paths.append((str(p), 0))
        ev = ImageFileDataset(paths, 224, train=False)
        tr = ImageFileDataset(paths, 224, train=True)
        n = len(paths)
        r = args.repeats
        ev_ours, ev_naive = paired_ms(lambda i: ev[i], lambda i: naive_eval(paths[i][0]), n, r)
        tr_ours, tr_naive = paired_ms(
            lambda i: tr[(i, i)],
            lambda i: naive_train(paths[i][0], np.random.default_rng(i)),
            n,
            r,
        )
        rows = [
            ("eval: ours (draft + one resize)", ev_ours),
            ("eval: naive (decode, resize, crop)", ev_naive),
            ("train: ours (one crop-resize)", tr_ours),
            ("train: naive (decode, crop, resize)", tr_naive),
        ]
        assert center_box(500, 375, 256, 224)[2] <= 500
    for name, ms in rows:
        print(f"{name:40s} {ms:7.2f} ms/image")
    print(f"eval speed-up  (naive / ours): {rows[1][1] / rows[0][1]:.2f}")
    print(f"train speed-up (naive / ours): {rows[3][1] / rows[2][1]:.2f}")


if __name__ == "__main__":
    main()
