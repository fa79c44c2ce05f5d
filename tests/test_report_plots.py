"""The papers' own report plots (``odelab.papers.<paper>.report``): each built from real files
(quick runs made here, or the kept run records in ``experiments/<paper>/runs``), the PNG
written, and the data drawn in the figure equal to what the files hold."""

from __future__ import annotations

import json
import re
import shutil
import statistics
from pathlib import Path

import numpy as np
import pytest
import yaml
from test_yopo import SHRINK

from conftest import ROOT, compose

KEPT = ROOT / "experiments"


def no_recipe(experiment):  # every run its own config group: no Hydra compose needed here
    return None


def report(paper: str, *dirs: Path):
    from odelab.report import build, local_runs

    return build(paper, [r for d in dirs for r in local_runs(d)], recipe=no_recipe)


def reference(paper: str) -> dict:
    return yaml.safe_load((KEPT / paper / "reference.yaml").read_text())["settings"]


@pytest.fixture
def drawn(monkeypatch):
    """The figures the plot functions close (kept open here so their artists can be read)."""
    import matplotlib.pyplot as plt

    figs, close = [], plt.close
    monkeypatch.setattr(plt, "close", lambda fig=None: figs.append(fig))
    yield figs
    for f in figs:
        close(f)


def lines(fig) -> dict:
    return {ln.get_label(): ln for ax in fig.axes for ln in ax.get_lines()}


def errorbars(ax) -> dict:
    """label -> (x, y) of every errorbar container of ``ax``."""
    out = {}
    for c in ax.containers:
        if hasattr(c, "lines") and c.lines:
            out[c.get_label()] = (list(c.lines[0].get_xdata()), list(c.lines[0].get_ydata()))
    return out


def is_png(path: Path) -> bool:
    return path.is_file() and path.read_bytes()[:4] == b"\x89PNG"


@pytest.fixture(scope="module")
def quick_runs(tmp_path_factory):
    """Real quick runs through the run path: YOPO-2-2 and PGD-40 on tiny MNIST (2 epochs, the
    training clock's curve), and a 3-stage PDE-Net v1 on an 8x8 grid (its rollout bands)."""
    import torch

    from canonical_data import write_mnist
    from odelab.train import run

    root = tmp_path_factory.mktemp("plot_runs")
    data = root / "data"
    write_mnist(data, n_train=16, n_test=8)
    yopo = ["debug=limit", "logger=csv", f"paths.data_dir={data}", "data.batch_size=4",
            "data.eval_batch_size=4", *SHRINK["mnist"]]  # fmt: skip
    pdenet = ["experiment=pdenet_convdiff_lite", "logger=csv", "data.grid_size=8",
              "data.upsample=2", "data.spectral_size=8", "data.batch_size=2", "data.n_val=2",
              "data.n_test=2", "data.test_steps=3", "data.start_time=0.02", "data.max_dt=0.005",
              f"data.cache_dir={root / 'cache'}", "model.max_iter=2", "data.n_steps=3",
              "model.blocks=[0,1,3]", "model.eval_stages=[0,1]",
              "trainer.max_epochs=3"]  # fmt: skip
    jobs = {
        "yopo": ["experiment=yopo_mnist", *yopo, "model.yopo.m=2", "model.yopo.n=2"],
        "pgd": ["experiment=pgd40_mnist", *yopo, "model.pgd.steps=3"],
        "pdenet": pdenet,
    }
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("ODELAB_LOG_DIR", str(root / "logs"))
        for name, overrides in jobs.items():
            run(compose(overrides, root / "logs" / name))
    torch.set_num_threads(threads)
    return root / "logs"


# -- YOPO: robust accuracy vs training time ----------------------------------------------------
def test_yopo_robust_acc_vs_time_from_real_runs(quick_runs, tmp_path, drawn):
    from odelab.papers.yopo.report import plot_robust_vs_time, time_curves

    rep = report("yopo", quick_runs)
    curves = {c["experiment"]: c for c in time_curves(rep)}
    assert sorted(curves) == ["pgd40_mnist", "yopo_mnist"]  # one curve per method
    for name, run_dir in (("yopo_mnist", "yopo"), ("pgd40_mnist", "pgd")):
        points = json.loads((quick_runs / run_dir / "time_curve.json").read_text())
        assert len(points) == 2  # one per validation (2 epochs)
        assert curves[name]["t"] == [p["train_s"] for p in points]
        assert curves[name]["robust"] == [p["val/robust_acc"] for p in points]
        assert curves[name]["clean"] == [p["val/acc"] for p in points]
    path = plot_robust_vs_time(rep, tmp_path)
    assert path == tmp_path / "results_robust_acc_vs_time.png" and is_png(path)
    (fig,) = drawn
    drawn_lines = lines(fig)
    for c in curves.values():
        ln = drawn_lines[f"{c['label']} seed 0: robust"]
        assert list(ln.get_xdata()) == c["t"] and list(ln.get_ydata()) == c["robust"]
    ref = reference("yopo")["yopo_mnist"]["metrics"]
    cross = drawn_lines["paper yopo_mnist: robust, end (GPU)"]
    assert list(cross.get_xdata()) == [ref["time/train_s"]["value"]]
    assert list(cross.get_ydata()) == [ref["test/robust_acc"]["value"]]
    assert "paper yopo_cifar10: robust, end (GPU)" not in drawn_lines  # no CIFAR run: no panel


def test_yopo_plot_needs_a_time_curve(quick_runs, tmp_path):
    """A run record without its time_curve.json (a kept copy alone) draws no curve."""
    from odelab.papers.yopo.report import plot_robust_vs_time

    (tmp_path / "kept").mkdir()
    rec = (quick_runs / "yopo" / "results.json").read_text()
    (tmp_path / "kept" / "yopo_mnist.json").write_text(rec)
    assert plot_robust_vs_time(report("yopo", tmp_path / "kept"), tmp_path) is None


# -- PDE-Net: rollout error percentile bands ---------------------------------------------------
def test_pdenet_rollout_bands_from_a_real_run(quick_runs, tmp_path, drawn):
    from odelab.papers.pdenet.report import plot_rollout_bands, rollout_bands

    rep = report("pdenet", quick_runs)
    (entry,) = rollout_bands(rep)
    with np.load(quick_runs / "pdenet" / "rollout_bands.npz") as z:
        want = {k: z[k] for k in z.files}
    assert sorted(entry["bands"]) == sorted(k for k in want if k != "t")
    assert "stage0_blocks1" in entry["bands"]
    np.testing.assert_array_equal(entry["t"], want["t"])
    path = plot_rollout_bands(rep, tmp_path)
    assert path == tmp_path / "results_rollout_bands.png" and is_png(path)
    (fig,) = drawn
    (ax,) = fig.axes  # one run: one panel
    for name, ln in lines(fig).items():
        np.testing.assert_array_equal(ln.get_xdata(), want["t"])
        np.testing.assert_array_equal(ln.get_ydata(), want[name][1])  # the median
    assert len(ax.collections) == len(entry["bands"])
    for coll, name in zip(ax.collections, entry["bands"]):  # the 25-75 % band
        y = coll.get_paths()[0].vertices[:, 1]
        assert y.min() == pytest.approx(want[name][0].min())
        assert y.max() == pytest.approx(want[name][2].max())


def test_pdenet_bands_from_the_kept_records(tmp_path, drawn):
    """Kept records in both layouts: a copy ``<record>.json`` + ``<record>_bands.npz``, or a run
    folder ``results.json`` + ``rollout_bands.npz``; the 3-stage Burgers copy kept no bands."""
    from odelab.papers.pdenet.report import plot_rollout_bands, rollout_bands

    kept = KEPT / "pdenet" / "runs"
    rep = report("pdenet", kept)
    entries = rollout_bands(rep)
    apart = {Path(u.run.source).resolve() for u in rep.unusable}  # superseded reruns: not drawn
    with_bands = {
        f.with_name("rollout_bands.npz" if f.name == "results.json" else f"{f.stem}_bands.npz")
        for f in kept.rglob("*.json")
        if f.resolve() not in apart
    }
    with_bands = {f for f in with_bands if f.is_file()}
    assert any(f.name == "rollout_bands.npz" for f in with_bands)  # the run-folder layout
    assert {e["file"] for e in entries} == with_bands
    # the kept-copy layout: a run folder's record copied as <stem>.json + <stem>_bands.npz
    folder = next(f.parent for f in with_bands if f.name == "rollout_bands.npz")
    copies = tmp_path / "copies"
    copies.mkdir()
    shutil.copy(folder / "results.json", copies / "kept_copy.json")
    shutil.copy(folder / "rollout_bands.npz", copies / "kept_copy_bands.npz")
    assert [e["file"] for e in rollout_bands(report("pdenet", copies))] == [
        copies / "kept_copy_bands.npz"
    ]
    assert {e["experiment"] for e in entries} >= {"pdenet_convdiff_lite",
                                                  "pdenet_convdiff_frozen_lite"}  # fmt: skip
    burgers = kept / "lite" / "pdenet2_burgers_lite_3stages.json"
    if burgers.is_file():  # a run whose kept copy has no bands file: in the table, no band
        assert "pdenet2_burgers_lite" in {g.experiment for g in rep.groups}
        assert not burgers.with_name(f"{burgers.stem}_bands.npz").exists()
    plot_rollout_bands(rep, tmp_path)
    (fig,) = drawn
    first = {ln.get_label(): ln for ln in fig.axes[0].get_lines()}  # the final models together
    for e in entries:
        with np.load(e["file"]) as z:
            ln = first[f"{e['label']} s{e['seed']}"]
            np.testing.assert_array_equal(ln.get_ydata(), z["final"][1])
    assert len(fig.axes) == 1 + len(entries)


# -- DURR: PSNR per noise level ----------------------------------------------------------------
def test_durr_psnr_per_sigma_from_kept_records(tmp_path, drawn):
    from odelab.papers.durr.report import plot_psnr_vs_sigma, psnr_per_sigma

    kept = KEPT / "durr" / "runs"
    rep = report("durr", kept)
    files = {}  # experiment -> {sigma: [values of its kept records]}, read here independently
    for f in kept.rglob("*.json"):
        d = json.loads(f.read_text())
        cells = [re.match(r"test/psnr_BSD68_s(\d+)$", k) for k in d["metrics"]]
        for s in sorted(int(m[1]) for m in cells if m):
            files.setdefault(d["experiment"], {}).setdefault(s, []).append(
                d["metrics"][f"test/psnr_BSD68_s{s}"]
            )
    data = psnr_per_sigma(rep)
    assert {d["experiment"] for d in data} == set(files)  # the JPEG records have no sigma cells
    for d in data:  # one config per experiment here: the mean over its seeds
        sig, means, _ = d["curves"]["BSD68"]
        assert sig == sorted(files[d["experiment"]])  # the levels its records tested
        assert means == pytest.approx([statistics.mean(files[d["experiment"]][s]) for s in sig])
    path = plot_psnr_vs_sigma(rep, tmp_path)
    assert path == tmp_path / "results_psnr_vs_sigma.png" and is_png(path)
    (fig,) = drawn
    bars = errorbars(fig.axes[0])
    for d in data:
        assert bars[f"ours {d['label']} (n={d['n']})"] == tuple(d["curves"]["BSD68"][:2])
    ref = reference("durr")["dncnn_denoise"]["metrics"]
    cross = lines(fig)["reference dncnn_denoise"]
    assert list(cross.get_xdata()) == [15, 25, 50]
    assert list(cross.get_ydata()) == [ref[f"test/psnr_BSD68_s{s}"]["value"] for s in (15, 25, 50)]


# -- Macaron: BLEU per setting, Macaron vs Transformer -----------------------------------------
def test_macaron_bleu_per_setting_from_kept_records(tmp_path, drawn):
    from odelab.papers.macaron.report import bars, plot_macaron_vs_transformer

    kept = KEPT / "macaron" / "runs"
    rep = report("macaron", kept)
    bleu = bars(rep, "test/bleu")
    ours = {b["arch"]: b for b in bleu if b["kind"] != "paper"}
    for arch, prefix in (("Macaron", "macaron"), ("Transformer", "transformer")):
        vals = [json.loads(f.read_text())["metrics"]["test/bleu"]
                for f in sorted(kept.rglob(f"{prefix}_multi30k_s*.json"))]  # fmt: skip
        assert len(vals) == 3 and ours[arch]["task"] == "multi30k" and ours[arch]["n"] == 3
        assert ours[arch]["value"] == pytest.approx(statistics.mean(vals))
        assert ours[arch]["std"] == pytest.approx(statistics.stdev(vals))
    ref = reference("macaron")
    paper = {(b["arch"], b["task"]): b["value"] for b in bleu if b["kind"] == "paper"}
    assert paper[("Macaron", "iwslt14")] == ref["macaron_iwslt14"]["metrics"]["test/bleu"]["value"]
    assert (
        paper[("Transformer", "wmt14_big")]
        == (ref["transformer_wmt14_big"]["metrics"]["test/bleu"]["value"])
    )
    path = plot_macaron_vs_transformer(rep, tmp_path)
    assert path == tmp_path / "results_macaron_vs_transformer.png" and is_png(path)
    (fig,) = drawn
    ppl = bars(rep, "test/ppl")
    assert "multi30k" in {b["task"] for b in ppl}
    assert all(b["kind"] != "paper" for b in ppl)  # no paper perplexity
    for ax, bs in zip(fig.axes, (bleu, ppl)):
        heights = sorted(p.get_height() for p in ax.patches if p.get_height() > 0)
        assert heights == pytest.approx(sorted(b["value"] for b in bs))


# -- Mean-field ResNet: test accuracy vs depth -------------------------------------------------
def test_meanfield_acc_vs_depth_from_kept_records(tmp_path, drawn):
    from odelab.papers.meanfield.report import acc_vs_depth, plot_acc_vs_depth

    kept = KEPT / "meanfield" / "runs"
    rep = report("meanfield", kept)
    fams = {f["label"]: f for f in acc_vs_depth(rep)}
    (mf,) = [f for k, f in fams.items() if "scaling=mean_field" in k]
    by_depth: dict[int, list] = {}
    for f in (kept / "A_mean_field").glob("*.json"):
        d = json.loads(f.read_text())
        depth = d["config"]["model"]["net"]["depth"]
        by_depth.setdefault(depth, []).append(d["metrics"]["test/acc"])
    assert mf["depths"] == sorted(by_depth) == [4, 16, 64]
    assert mf["means"] == pytest.approx([statistics.mean(by_depth[k]) for k in (4, 16, 64)])
    assert mf["n"] == [3, 3, 3]
    path = plot_acc_vs_depth(rep, tmp_path)
    assert path == tmp_path / "results_acc_vs_depth.png" and is_png(path)
    (fig,) = drawn
    plotted = errorbars(fig.axes[0])
    assert len(plotted) == len(fams)
    label = next(k for k in plotted if k.startswith(mf["label"] + " (n/L"))
    assert plotted[label] == (mf["depths"], mf["means"])


# -- where a run keeps its files ---------------------------------------------------------------
def test_run_file_finds_the_files_beside_each_kind_of_record(tmp_path):
    from odelab.report.runs import Run

    def run(source):
        return Run("e", "p", 0, "finished", {}, None, source=str(source))

    d = tmp_path / "run"
    (d / "wandb" / "offline-run-x").mkdir(parents=True)
    for name in ("results.json", "time_curve.json", "kept.json", "kept_bands.npz"):
        (d / name).write_text("{}")
    assert run(d / "results.json").file("time_curve.json") == d / "time_curve.json"
    assert run(d / "kept.json").file("rollout_bands.npz", "bands.npz") == d / "kept_bands.npz"
    assert run(d / "kept.json").file("time_curve.json") is None  # not its own file
    assert run(d / "wandb" / "offline-run-x").file("time_curve.json") == d / "time_curve.json"
    assert run("wandb:ent/proj/abc").file("time_curve.json") is None
