"""DURR: restoration data, the recurrent restorer and its DQN stopping policy, the comparators."""

from __future__ import annotations

import json
import math
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import SHARED_DATA

COVERED_EXPERIMENTS = [
    "durr_denoise",
    "durr_jpeg",
    "dncnn_denoise",
    "durr_denoise_lite",
    "bm3d_denoise",
    "durr_jpeg_lite",
    "dncnn_denoise_lite",
    "dncnn_jpeg_lite",
    "bm3d_denoise_lite",
]

needs_shared = pytest.mark.skipif(
    not (SHARED_DATA / "bsd" / "Train400").is_dir(),
    reason=f"the local copy of the DnCNN sets is not at {SHARED_DATA}",
)


# ---- tiny data in the canonical layout ---------------------------------------------------------
def _write(path: Path, array: np.ndarray, fmt: str) -> None:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    mode = "RGB" if array.ndim == 3 else "L"
    Image.fromarray(array, mode=mode).save(path, format=fmt)


@pytest.fixture(scope="module")
def tiny_restoration(tmp_path_factory) -> Path:
    """A few small images under the real file names: PNGs (grey) and BMPs (RGB LIVE1, grey
    classic5), enough for train_subset=4 and test/val subsets of 1."""
    from odelab.data.restoration import RESTORATION_SOURCES

    root = tmp_path_factory.mktemp("restoration")
    rng = np.random.default_rng(0)
    smooth = np.add.outer(np.arange(48), np.arange(48)).astype(np.float64) * 2.5
    for name, n, fmt, rgb in [
        ("Train400", 4, "PNG", False),
        ("BSD68", 1, "PNG", False),
        ("Set12", 1, "PNG", False),
        ("LIVE1", 1, "BMP", True),
        ("classic5", 1, "BMP", False),
    ]:
        src = RESTORATION_SOURCES[name]
        for fname in sorted(src.files)[:n]:
            img = np.clip(smooth + rng.normal(0, 20, smooth.shape), 0, 255).astype(np.uint8)
            arr = np.stack([img, img[::-1], img.T], -1) if rgb else img
            _write(root / src.folder / fname, arr, fmt)
    return root


TINY_DATA = [
    "logger=csv",
    "debug=fdr",
    "data.train_subset=4",
    "data.patch_size=16",
    "data.batch_size=4",
    "data.patches_per_epoch=8",
    "data.test_subset=1",
    "data.test_crop=32",
    "data.val_subset=1",
    "data.val_crop=32",
    "data.num_workers=0",
    "data.verify=off",
]
SMALL_DURR = [
    "model.restorer.channels=8",
    "model.policy.channels=8",
    "model.step_cap=6",
    "model.fixed_T=2",
    "model.T_schedule=[[25,2],[100,3]]",
]


def _results(out: Path) -> dict:
    return json.loads((out / "results.json").read_text())


# ---- metrics and degradations (exact answers) --------------------------------------------------
def test_psnr_and_ssim_exact_values():
    from odelab.modules.restoration import psnr, ssim

    x = torch.rand(3, 1, 16, 16, dtype=torch.float64) * 0.5 + 0.25
    # a constant offset of 0.1 gives MSE 0.01 -> PSNR = 10 log10(1 / 0.01) = 20 dB exactly
    assert torch.allclose(psnr(x + 0.1, x), torch.full((3,), 20.0, dtype=torch.float64))
    # clipping: values above 1 count as 1
    one = torch.ones(1, 1, 4, 4, dtype=torch.float64)
    assert math.isinf(float(psnr(one * 3, one))) or float(psnr(one * 3, one)) > 100
    assert torch.allclose(ssim(x, x), torch.ones(3, dtype=torch.float64))
    assert (ssim(x + 0.2 * torch.randn_like(x), x) < 0.9).all()


def test_noise_is_gaussian_with_sigma_over_255_and_not_clipped():
    from odelab.data.restoration import add_noise

    x = torch.full((1, 1, 256, 256), 0.5, dtype=torch.float64)
    y = add_noise(x, torch.tensor(50.0), torch.Generator().manual_seed(0))
    assert abs(float((y - x).std()) - 50 / 255) < 0.005
    assert abs(float((y - x).mean())) < 0.005
    assert y.min() < 0 and y.max() > 1  # not clipped


def test_jpeg_round_trip_and_dihedral_group():
    from odelab.data.restoration import dihedral, jpeg

    img = torch.from_numpy(
        np.add.outer(np.arange(64), 3 * np.arange(64)).astype(np.uint8) % 251
    ).view(1, 64, 64)
    lo, hi = jpeg(img, 10), jpeg(img, 95)
    assert lo.shape == img.shape and lo.dtype == torch.uint8
    err = lambda a: float((a.float() - img.float()).pow(2).mean())  # noqa: E731
    assert err(hi) < err(lo)
    assert torch.equal(jpeg(img, 10), lo)  # deterministic
    with pytest.raises(ValueError, match="quality"):
        jpeg(img, 0)
    a = torch.arange(9).view(1, 3, 3)
    outs = {tuple(dihedral(a, k).flatten().tolist()) for k in range(8)}
    assert len(outs) == 8 and torch.equal(dihedral(a, 0), a)


# ---- data module --------------------------------------------------------------------------------
def test_datamodule_on_tiny_files(tiny_restoration):
    from odelab.data import RestorationDataModule

    dm = RestorationDataModule(
        str(tiny_restoration), train_subset=4, patch_size=16, patches_per_epoch=10,
        batch_size=5, test_subset=1, test_levels=[15, 75], val_subset=1, verify="off",
    )  # fmt: skip
    dm.setup("fit")
    dm.setup("test")
    y, x, level = next(iter(dm.train_dataloader()))
    assert y.shape == x.shape == (5, 1, 16, 16) and level.shape == (5,)
    assert ((level >= 0) & (level <= 55)).all()
    again = dm.data_train[3]
    assert all(torch.equal(a, b) for a, b in zip(again, dm.data_train[3], strict=True))
    groups = [dm.data_test[i]["group"] for i in range(len(dm.data_test))]
    assert groups == ["BSD68_s15", "BSD68_s75", "Set12_s15", "Set12_s75"] == dm.test_groups
    s75 = dm.data_test[1]
    assert abs(float((s75["y"] - s75["x"]).std()) - 75 / 255) < 0.03

    jp = RestorationDataModule(
        str(tiny_restoration), task="jpeg", train_levels=[10, 40], test_sets=["LIVE1", "classic5"],
        test_levels=[10], val_set="classic5", val_subset=1, train_subset=4, patch_size=16,
        patches_per_epoch=4, batch_size=4, test_subset=1, verify="off",
    )  # fmt: skip
    jp.setup("fit")
    jp.setup("test")
    _, _, q = next(iter(jp.train_dataloader()))
    assert q.eq(q.round()).all() and ((q >= 10) & (q <= 40)).all()
    item = jp.data_test[0]
    assert item["group"] == "LIVE1_q10" and item["x"].shape == (1, 48, 48)  # RGB -> one channel


def test_test_noise_does_not_depend_on_the_other_sets_or_levels_listed(tiny_restoration):
    """Set12's noisy images are the same whether BSD68 is listed before it or not, and whatever
    other levels are tested; another eval seed draws other noise."""
    from odelab.data import RestorationDataModule

    def cells(sets, levels, eval_seed=0):
        dm = RestorationDataModule(
            str(tiny_restoration), test_sets=sets, test_levels=levels, test_subset=1,
            eval_seed=eval_seed, verify="off",
        )  # fmt: skip
        dm.setup("test")
        return {it["group"]: it["y"] for it in (dm.data_test[i] for i in range(len(dm.data_test)))}

    both, alone = cells(["BSD68", "Set12"], [15, 50]), cells(["Set12"], [50])
    assert torch.equal(both["Set12_s50"], alone["Set12_s50"])
    assert not torch.equal(cells(["Set12"], [50], eval_seed=1)["Set12_s50"], alone["Set12_s50"])
    assert not torch.equal(both["BSD68_s50"] - both["Set12_s50"], torch.zeros(1, 48, 48))


def test_bad_config_and_missing_or_corrupt_files(tmp_path, tiny_restoration):
    from odelab.data import DatasetError, RestorationDataModule
    from odelab.data.restoration import load_grey_images

    with pytest.raises(ValueError, match="data.task"):
        RestorationDataModule(str(tmp_path), task="deblur")
    with pytest.raises(ValueError, match="unknown restoration set"):
        RestorationDataModule(str(tmp_path), test_sets=["Kodak"])
    with pytest.raises(DatasetError) as err:
        load_grey_images("Set12", tmp_path, limit=2)
    msg = str(err.value)
    assert "01.png" in msg and "data.download=true" in msg and "cszn/DnCNN" in msg
    bad = tmp_path / "bad"
    good = tiny_restoration / "bsd" / "BSD68" / "test001.png"
    (bad / "bsd" / "BSD68").mkdir(parents=True)
    (bad / "bsd" / "BSD68" / "test001.png").write_bytes(good.read_bytes()[:60])  # truncated
    with pytest.raises(DatasetError, match="Pillow cannot decode.*corrupt"):
        load_grey_images("BSD68", bad, verify="off", limit=1)


def test_download_code_fetches_and_verifies(tmp_path, monkeypatch):
    """prepare_data(download=True) through a file:// mirror of the local copy: real md5 table."""
    from odelab.data import restoration
    from odelab.data.restoration import RESTORATION_SOURCES, load_grey_images

    folder = SHARED_DATA / "bsd" / "Set12"
    if not folder.is_dir():
        pytest.skip(f"no local Set12 at {folder}")
    patched = replace(RESTORATION_SOURCES["Set12"], mirrors=(folder.as_uri() + "/",))
    monkeypatch.setitem(restoration.RESTORATION_SOURCES, "Set12", patched)
    dm = restoration.RestorationDataModule(
        str(tmp_path), train_set="Set12", test_sets=["Set12"], val_set=None, download=True
    )
    dm.prepare_data()
    names, images = load_grey_images("Set12", tmp_path, verify="strict")
    assert len(names) == 12 and {tuple(im.shape) for im in images} == {
        (1, 256, 256),
        (1, 512, 512),
    }


@needs_shared
def test_shared_data_shapes_and_md5():
    from odelab.data.restoration import load_grey_images

    _, train = load_grey_images("Train400", SHARED_DATA, verify="strict", limit=3)
    assert all(t.shape == (1, 180, 180) and t.dtype == torch.uint8 for t in train)
    names, bsd = load_grey_images("BSD68", SHARED_DATA, verify="strict", limit=3)
    assert names[0] == "test001.png" and {tuple(t.shape) for t in bsd} <= {
        (1, 321, 481),
        (1, 481, 321),
    }
    _, live = load_grey_images("LIVE1", SHARED_DATA, verify="strict", limit=1)
    assert live[0].shape == (1, 480, 720) or live[0].ndim == 3
    _, c5 = load_grey_images("classic5", SHARED_DATA, verify="strict", limit=1)
    assert c5[0].shape == (1, 512, 512)


# ---- networks and the DQN pieces ---------------------------------------------------------------
def test_parameter_counts_near_the_paper():
    from odelab.papers.durr import DnCNN, PolicyNet, RecurrentRestorer, num_params

    assert num_params(RecurrentRestorer()) == 185_857  # paper: about 1.8e5 [Q]
    assert num_params(PolicyNet()) == 112_706  # paper: about 1.0e5 [Q]
    assert num_params(DnCNN()) == 667_073  # paper quotes about 7.0e5 for DnCNN [Q]


def test_restorer_per_image_steps_match_the_trajectory():
    from odelab.papers.durr import RecurrentRestorer

    torch.manual_seed(0)
    for reinject in (False, True):
        net = RecurrentRestorer(layers=3, channels=4, reinject_input=reinject).double()
        y = torch.rand(3, 1, 8, 8, dtype=torch.float64)
        xs = net.trajectory(y, 4)
        assert torch.equal(xs[0], y)
        out = net(y, torch.tensor([0, 2, 4]))
        for b, t in enumerate([0, 2, 4]):
            assert torch.allclose(out[b], xs[t][b])
        assert torch.allclose(net(y, 3), xs[3])


def test_schedule_and_replay_buffer():
    from odelab.papers.durr import ReplayBuffer, schedule_T

    table = [[10, 2], [20, 4], [30, 6]]
    got = schedule_T(torch.tensor([0.0, 10.0, 10.5, 25.0, 30.0, 80.0]), table)
    assert got.tolist() == [2, 2, 4, 6, 6, 6]
    buf = ReplayBuffer(5)
    for i in range(3):
        buf.push(v=torch.full((2, 1), float(i)), a=torch.tensor([i, i]))
    assert len(buf) == 5 and buf.pos == 1  # wrapped around
    assert buf.data["v"].flatten().tolist() == [2.0, 0.0, 1.0, 1.0, 2.0]  # oldest overwritten
    s = buf.sample(7, torch.Generator().manual_seed(0))
    assert s["v"].shape == (7, 1) and s["a"].shape == (7,)


def _durr(**kw):
    from functools import partial

    from odelab.papers.durr import DURRModule, PolicyNet, RecurrentRestorer

    cap = kw.pop("step_cap", 6)
    return DURRModule(
        RecurrentRestorer(layers=3, channels=4),
        PolicyNet(layers=2, channels=4, step_cap=cap),
        partial(torch.optim.Adam, lr=1e-3),
        step_cap=cap,
        fixed_T=2,
        T_schedule=[[25, 2], [55, 4]],
        **kw,
    )


def test_rollout_rewards_are_the_loss_decrease():
    m = _durr(reward="psnr", eps_start=1.0, eps_end=1.0, replay_capacity=100)
    torch.manual_seed(1)
    x = torch.rand(1, 1, 8, 8)
    y = x + 0.1 * torch.randn_like(x)
    m._rollout(y, x)
    d = {k: v[: len(m.replay)] for k, v in m.replay.data.items()}
    assert d["done"].sum() == 1 and d["a"][d["done"]].item() == 0  # exactly one stop, at the end
    for i in range(len(m.replay)):
        if d["done"][i]:
            assert d["r"][i] == 0
            continue
        x_next = m.restorer.step(d["x"][i : i + 1], y)
        assert torch.allclose(x_next, d["x_next"][i : i + 1], atol=1e-6)
        mse0 = (d["x"][i] - x[0]).pow(2).mean()
        mse1 = (x_next[0] - x[0]).pow(2).mean()
        assert torch.isclose(d["r"][i], 10 * torch.log10(mse0 / mse1), atol=1e-4)


def test_learned_steps_stop_at_the_first_stop_action():
    m = _durr(step_cap=5)

    class Stub(torch.nn.Module):  # says "stop" (index 0) once n >= threshold of the image
        def forward(self, x, y, n):
            thr = x.flatten(1)[:, 0]
            stop = (n.float() >= thr).float()
            return torch.stack([stop, 1 - stop], 1)

    m.policy = Stub()
    y = torch.zeros(3, 1, 4, 4)
    xs = [y.clone() for _ in range(6)]
    for b, thr in enumerate([0.0, 2.0, 99.0]):
        for xn in xs:
            xn[b, 0, 0, 0] = thr
    assert m.learned_steps(xs, y).tolist() == [0, 2, 5]


def test_impossible_durr_configs():
    with pytest.raises(ValueError, match="train_T"):
        _durr(train_T="random")
    with pytest.raises(ValueError, match="exceeds model.step_cap"):
        _durr(step_cap=3)


# ---- every experiment through the one run path ----------------------------------------
_SMALL = {
    "durr_denoise": [*SMALL_DURR, "data.test_levels=[25,75]"],
    "durr_jpeg": [*SMALL_DURR, "data.test_levels=[10,40]", "data.val_levels=[20]"],
    "durr_denoise_lite": ["data.test_levels=[25,55]"],
    "dncnn_denoise": ["model.net.depth=4", "model.net.channels=8"],
    "bm3d_denoise": ["data.test_levels=[25,50]"],
    "durr_jpeg_lite": ["data.test_levels=[5,40]"],
    "dncnn_denoise_lite": ["data.test_levels=[25,55]"],
    "dncnn_jpeg_lite": ["data.test_levels=[5,40]"],
    "bm3d_denoise_lite": ["data.test_levels=[25,55]"],
}


@pytest.mark.parametrize("experiment", COVERED_EXPERIMENTS)
def test_experiment_fast_dev_run(experiment, run_experiment, tiny_restoration):
    _, out = run_experiment(
        [f"experiment={experiment}", f"paths.data_dir={tiny_restoration}", *TINY_DATA]
        + _SMALL[experiment]
    )
    res = _results(out)
    assert res["status"] == "finished" and res["paper"] == "durr"
    cells = res["restoration"]["cells"]
    assert cells and all(0 < c["psnr"] < 100 and -1 <= c["ssim"] <= 1 for c in cells.values())
    assert res["metrics"]["test/psnr"] == pytest.approx(
        np.mean([c["psnr"] for c in cells.values()])
    )
    assert list((out / "images").glob("*.png"))
    if experiment.startswith("durr"):
        assert all(
            len(c["fixed_curve"]) == res["config"]["model"]["step_cap"] + 1 for c in cells.values()
        )


def test_long_evaluations_log_their_progress_per_cell(run_experiment, tiny_restoration, caplog):
    """A test pass logs images done per (set, level) cell as it goes and once at the end."""
    import logging

    from odelab.modules.restoration import RestorationModule

    with (
        pytest.MonkeyPatch.context() as mp,
        caplog.at_level(logging.INFO, logger="odelab.modules.restoration"),
    ):
        mp.setattr(RestorationModule, "progress_every_s", 0.0)
        run_experiment(
            ["experiment=bm3d_denoise", f"paths.data_dir={tiny_restoration}",
             *[o for o in TINY_DATA if o != "debug=fdr"], "data.test_levels=[25,50]"]
        )  # fmt: skip
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("test: ")]
    assert lines[0].startswith("test: 1/4 images done") and "BSD68_s25 1/1" in lines[0]
    assert "Set12_s50 0/1" in lines[0]
    assert lines[-1].startswith("test: 4/4 images done") and "Set12_s50 1/1" in lines[-1]


def test_policy_stage_learned_stopping_and_plot(run_experiment, tiny_restoration):
    """restorer_epochs=0: the DQN stage runs, the policy decides the steps, the plot and the
    image grids are saved and logged to (offline) W&B."""
    tiny = [o for o in TINY_DATA if o not in ("logger=csv", "debug=fdr")]  # fdr mutes loggers
    _, out = run_experiment(
        ["experiment=durr_denoise_lite", f"paths.data_dir={tiny_restoration}", *tiny,
         "logger=wandb", "trainer.max_epochs=1", "model.restorer_epochs=0", "model.dqn_batch=4",
         "data.test_levels=[25,55]"]
    )  # fmt: skip
    res = _results(out)
    media = list((out / "wandb").glob("offline-run-*/files/media/images/**/*.png"))
    assert len(media) >= 3, list((out / "wandb").rglob("*"))  # 2 grids + the steps plot
    assert res["restoration"]["main_mode"] == "learned"
    for cell in res["restoration"]["cells"].values():
        assert 0 <= cell["steps"] <= 12 and "psnr_oracle" in cell and "psnr_bestT" in cell
    assert "train/episode_len" in res["metrics"]
    assert (out / "steps_vs_level.png").is_file()


def test_two_stages_through_restorer_ckpt(run_experiment, tiny_restoration):
    """Stage 1 in one run, stage 2 in another that loads its checkpoint by config."""
    base = [
        "experiment=durr_denoise_lite", f"paths.data_dir={tiny_restoration}",
        *[o for o in TINY_DATA if o != "debug=fdr"], "data.test_levels=[25]",
        "trainer.max_epochs=1",
    ]  # fmt: skip
    _, first = run_experiment([*base, "model.restorer_epochs=1"], name="stage1")
    ckpt = first / "checkpoints" / "last.ckpt"
    assert ckpt.is_file() and _results(first)["restoration"]["main_mode"] == "schedule"
    _, second = run_experiment([*base, f"model.restorer_ckpt={ckpt}", "model.dqn_batch=4"])
    res = _results(second)
    assert res["restoration"]["main_mode"] == "learned"
    s1 = torch.load(ckpt, weights_only=True)["state_dict"]
    s2 = torch.load(second / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
    restorer_keys = [k for k in s1 if k.startswith("restorer.")]
    assert restorer_keys and all(torch.equal(s1[k], s2[k]) for k in restorer_keys)  # frozen
    assert any(not torch.equal(s1[k], s2[k]) for k in s1 if k.startswith("policy."))


# ---- the CPU-scale studies (odelab.papers.durr.study, the lite_study view, kept records) -----
def _lite_table():
    from odelab.papers.durr import study

    return study


def _record(role: str, task: str, seed: int, cells: dict, train=(10, 35)) -> dict:
    target = {
        "durr": "odelab.papers.durr.DURRModule",
        "dncnn": "odelab.modules.FeedForwardRestorer",
        "bm3d": "odelab.papers.durr.BM3DBaseline",
    }[role]
    config = {"model": {"_target_": target}, "data": {"task": task, "train_levels": list(train)}}
    return {"experiment": role, "seed": seed, "config": config, "restoration": {"cells": cells}}


def test_lite_table_claims_on_known_cells():
    """Claims (a), (b), (c) on hand-made cells whose answers are known, and mean ± std rows."""
    lt = _lite_table()

    def cell(psnr, steps, best, oracle):
        return {"psnr": psnr, "steps": steps, "psnr_sched": psnr, "psnr_bestT": best,
                "psnr_oracle": oracle, "oracle_T": 3, "best_T_ref": 5,
                "fixed_curve": [psnr - 5, psnr]}  # fmt: skip

    # denoise: train sigma in [10, 35]; 45 unseen
    good = {"S_s15": cell(30.0, 3, 29.0, 30.1), "S_s25": cell(28.0, 5, 28.0, 28.2),
            "S_s45": cell(24.0, 9, 22.0, 24.0)}  # fmt: skip
    bad = {"S_s15": cell(30.0, 6, 29.0, 30.5), "S_s25": cell(28.0, 5, 28.0, 28.2),
           "S_s45": cell(21.0, 9, 22.0, 24.0)}  # fmt: skip
    dn = {k: {"psnr": v["psnr"] - 1} for k, v in good.items()}
    recs = [_record("durr", "denoise", 0, good), _record("durr", "denoise", 1, bad),
            _record("dncnn", "denoise", 0, dn)]  # fmt: skip
    c0, c1 = lt.claims(recs, "denoise")
    assert (c0["a"], c0["b"], c0["b_dncnn"], c0["c"]) == (True, True, True, True)
    assert c0["steps"] == [3, 5, 9] and c0["b_margin"] == [2.0] and c0["unseen"] == [45.0]
    assert (c1["a"], c1["b"], c1["b_dncnn"], c1["c"]) == (False, False, None, False)
    assert c1["c_gap"] == pytest.approx([0.5, 0.2])
    rows = lt.study_rows(recs, "denoise")
    assert [r["level"] for r in rows] == [15.0, 25.0, 45.0]
    assert [r["seen"] for r in rows] == [True, True, False]
    mean, std, n = rows[2]["psnr"]
    assert (mean, n) == (22.5, 2) and std == pytest.approx(math.sqrt(4.5))
    assert rows[2]["dncnn"] == (23.0, 0.0, 1) and rows[2]["bm3d"] is None
    assert rows[2]["psnr_input"][0] == 17.5  # T = 0 of the fixed-T curves: (19 + 16) / 2
    # JPEG: degradation grows as the quality falls, so steps must grow towards QF 5
    q = {"S_q40": cell(32.0, 3, 32.0, 32.0), "S_q10": cell(27.0, 6, 27.0, 27.1),
         "S_q5": cell(25.0, 8, 24.9, 25.1)}  # fmt: skip
    jrec = [_record("durr", "jpeg", 0, q, train=(10, 40))]
    (cq,) = lt.claims(jrec, "jpeg")
    assert cq["steps"] == [3, 6, 8] and cq["a"] and cq["b"] and cq["c"]
    assert [r["level"] for r in lt.study_rows(jrec, "jpeg")] == [40.0, 10.0, 5.0]
    alien = {**recs[0], "config": {"model": {"_target_": "x.Y"}, "data": {"task": "denoise"}}}
    with pytest.raises(ValueError, match="not DURR, DnCNN or BM3D"):
        lt.claims([alien], "denoise")


def test_lite_comparators_share_the_durr_lite_data():
    """dncnn_*_lite (and bm3d_denoise_lite) train on the same patches and test on the same cells
    as their DURR lite run; the JPEG study has the denoise study's scale."""
    from omegaconf import OmegaConf

    from odelab.utils.config import compose_config

    def data(exp):
        cfg = compose_config([f"experiment={exp}"])
        return OmegaConf.to_container(cfg.data, resolve=False), cfg

    for task in ("denoise", "jpeg"):
        (durr, dcfg), (dncnn, ncfg) = data(f"durr_{task}_lite"), data(f"dncnn_{task}_lite")
        assert durr == dncnn, task
        assert ncfg.trainer.max_epochs == dcfg.model.restorer_epochs  # 400 batches each
        assert ncfg.model.optimizer.lr == dcfg.model.optimizer.lr
        assert list(ncfg.model.scheduler.milestones) == list(dcfg.model.scheduler.milestones)
    test_keys = ["task", "test_sets", "test_levels", "test_subset", "test_crop", "eval_seed"]
    bm3d, _ = data("bm3d_denoise_lite")
    den, _ = data("durr_denoise_lite")
    assert {k: bm3d[k] for k in test_keys} == {k: den[k] for k in test_keys}
    (jp, jcfg), (_, dn) = data("durr_jpeg_lite"), data("durr_denoise_lite")
    for key in ("restorer", "policy", "step_cap", "dqn_batch", "dqn_updates", "restorer_epochs"):
        assert jcfg.model[key] == dn.model[key], key
    assert jcfg.trainer.max_epochs == dn.trainer.max_epochs and jp["test_crop"] % 8 == 0
    from odelab.papers.durr import schedule_T

    t = schedule_T(torch.tensor([5.0, 10.0, 20.0, 30.0, 40.0]), jcfg.model.T_schedule)
    assert t.tolist() == sorted(t.tolist(), reverse=True) and t[0] > t[-1]  # low QF: more steps


def test_gpu_estimate_counts_the_flops_it_times(tmp_path, monkeypatch):
    """experiments/durr/gpu_estimate.py on a tiny batch: every row timed and counted; one
    DnCNN-B pass over an H x W image is 2 x (1*64 + 18*64*64 + 64*1) x 9 x H x W FLOPs."""
    import runpy
    import sys

    from conftest import ROOT

    out = tmp_path / "cost.json"
    argv = ["gpu_estimate.py", "--batch", "2", "--image", "40", "56", "--ref-cpu-ms", "600",
            "--out", str(out)]  # fmt: skip
    monkeypatch.setattr(sys, "argv", argv)
    runpy.run_path(str(ROOT / "experiments" / "durr" / "gpu_estimate.py"), run_name="__main__")
    res = json.loads(out.read_text())
    assert set(res["rows"]) == {
        "durr_stage1_batch", "durr_stage2_batch", "dncnn_batch", "durr_test_image",
        "dncnn_test_image",
    }  # fmt: skip
    assert res["ratio"] == pytest.approx(600 / 6.1) and all(
        r["s"] > 0 and r["gflop"] > 0 for r in res["rows"].values()
    )
    macs = (64 + 18 * 64 * 64 + 64) * 9
    assert res["rows"]["dncnn_test_image"]["gflop"] == pytest.approx(2 * macs * 40 * 56 / 1e9)


def test_report_plots_of_the_kept_lite_records(tmp_path):
    """The report's DURR plots from experiments/durr/runs: PSNR per quality factor (JPEG cells)
    and learned steps / oracle T per level, each the mean over the kept seeds' records."""
    import statistics

    from conftest import ROOT
    from odelab.papers.durr.report import plots, psnr_per_sigma, steps_per_level
    from odelab.report import build, local_runs

    kept = ROOT / "experiments" / "durr" / "runs"
    runs = local_runs(kept)
    if not any(r.experiment == "durr_jpeg_lite" for r in runs):
        pytest.skip("no kept durr_jpeg_lite records")
    rep = build("durr", runs, recipe=lambda experiment: None)
    files = [json.loads(f.read_text()) for f in (kept / "lite_seeds").rglob("*.json")]
    jpeg = [f for f in files if f["experiment"] == "durr_jpeg_lite"]  # the 3 seeds, one config
    (q,) = [
        d for d in psnr_per_sigma(rep, "q") if d["experiment"] == "durr_jpeg_lite" and d["n"] == 3
    ]
    levels, means, _ = q["curves"]["LIVE1"]
    assert levels == [5, 10, 20, 30, 40] and q["n"] == len(jpeg)
    assert means[0] == pytest.approx(
        statistics.mean(f["metrics"]["test/psnr_LIVE1_q5"] for f in jpeg)
    )
    (st,) = [
        d for d in steps_per_level(rep) if d["experiment"] == "durr_jpeg_lite" and d["n"] == 3
    ]
    lv, steps, _, oracle, _ = st["curves"]["classic5"]
    assert st["kind"] == "q" and lv == levels
    cells = [f["restoration"]["cells"]["classic5_q10"] for f in jpeg]
    assert steps[1] == pytest.approx(statistics.mean(c["steps"] for c in cells))
    assert oracle[1] == pytest.approx(statistics.mean(c["oracle_T"] for c in cells))
    names = sorted(p.name for p in plots(rep, tmp_path))
    assert "results_psnr_vs_quality.png" in names and "results_steps_vs_level.png" in names


def test_kept_lite_records_rebuild_the_readme_tables():
    """The three-seed records in experiments/durr/runs/lite_seeds give the README's tables and
    claim lines verbatim; the superseded single-seed records still give the numbers the README
    quotes for them (old noise draws)."""
    from conftest import ROOT

    lt = _lite_table()
    durr = ROOT / "experiments" / "durr"
    readme = (durr / "README.md").read_text()
    recs = lt.load_records(durr / "runs" / "lite_seeds")
    for task, n_rows in (("denoise", 5), ("jpeg", 10)):
        rows = lt.study_rows(recs, task)
        assert len(rows) == n_rows and all(r["psnr"][2] == 3 for r in rows), task  # 3 seeds
        for line in lt.markdown_table(rows, task) + lt.markdown_claims(
            lt.claims(recs, task), task
        ):
            assert line in readme, line
    den = {c["seed"]: c for c in lt.claims(recs, "denoise")}
    assert all(c["a"] and c["b"] and not c["c"] for c in den.values())  # as the README says
    jp = lt.claims(recs, "jpeg")
    assert len(jp) == 6 and not any(c["a"] or c["b"] for c in jp) and all(c["c"] for c in jp)
    old = lt.load_records(durr / "superseded_old_noise" / "cpu_study_v1_no_explore_starts")
    (v1,) = lt.claims(old, "denoise")
    assert [round(s, 1) for s in v1["steps"]] == [5.0, 5.0, 5.8, 6.0, 6.0]
    assert [round(r["psnr"][0], 2) for r in lt.study_rows(old, "denoise")] == [
        27.90, 26.62, 24.43, 21.84, 19.22
    ]  # fmt: skip
    assert [round(g, 2) for g in v1["c_gap"]] == [1.17, 0.0, 0.67]
    abl = durr / "runs" / "jpeg_policy_ablation"
    held = {}
    for name in ("durr_jpeg_lite_dqn3x_s0", "durr_jpeg_lite_policy64_s0"):
        cl = lt.claims(lt.load_records(abl / name), "jpeg")
        held[name] = {c["set"]: (c["a"], c["b"], c["c"]) for c in cl}
        steps = {c["set"]: ", ".join(f"{s:.1f}" for s in c["steps"]) for c in cl}
        assert all(v in readme for v in steps.values() if len(set(v.split(", "))) > 1), steps
    assert held["durr_jpeg_lite_dqn3x_s0"] == {"LIVE1": (False, False, True),
                                               "classic5": (False, False, True)}  # fmt: skip
    assert held["durr_jpeg_lite_policy64_s0"] == {"LIVE1": (False, False, True),
                                                  "classic5": (True, False, True)}  # fmt: skip
