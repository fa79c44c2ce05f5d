"""The preflight (``odelab.preflight``): every bad input found before any work, in one message
naming the key, the value, what is allowed and the fix; unknown names with the closest first;
the ``experiment=yopo_cifar`` alias; datamodules that refuse unknown keys; report warnings."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
import torch

from conftest import CONF, SHARED_DATA, compose, run_cli
from odelab.preflight import (
    PreflightError,
    accepted_keys,
    check_run,
    check_targets,
    check_values,
    hydra_config,
    preflight,
)
from odelab.utils.config import compose_config
from odelab.utils.hints import unknown_choice_message

# the alias is run with debug=fdr below (test_train.test_every_experiment_is_covered)
COVERED_EXPERIMENTS = ["yopo_cifar"]

TINY = ["experiment=lm_resnet_mnist", "logger=csv", "trainer.accelerator=cpu"]


def problems(overrides: list[str], tmp_path: Path, **kwargs) -> list[str]:
    cfg = compose_config(overrides, return_hydra_config=True)
    with hydra_config(cfg):
        return check_run(cfg, local=False, **kwargs)


_cli = run_cli


@pytest.fixture(scope="module")
def cifar(tmp_path_factory):
    from canonical_data import write_cifar10

    root = tmp_path_factory.mktemp("cifar")
    write_cifar10(root, n_per_batch=10)
    return root


@pytest.fixture
def bad_ckpt(tmp_path):
    from odelab.utils.checkpoint import AtomicCheckpointIO

    path = tmp_path / "cut.ckpt"
    AtomicCheckpointIO().save_checkpoint(
        {"state_dict": {"w": torch.ones(1000)}, "epoch": 1, "global_step": 8}, path
    )
    path.write_bytes(path.read_bytes()[:2000])  # a copy cut short
    return path


@pytest.mark.parametrize(
    "override,needles",
    [
        ("trainer.max_epochs=abc", ["trainer.max_epochs='abc' is invalid", "integer >= -1"]),
        ("seed=", ["seed='' is invalid", "integer >= 0", "seed=0 is a seed"]),
        ("seed=-1", ["seed=-1 is invalid"]),
        ("trainer.devices=0", ["trainer.devices=0 is invalid", "number of devices >= 1"]),
        ("trainer.accelerator=gpux", ["trainer.accelerator='gpux'", "cpu, gpu"]),
        ("trainer.precision=8", ["trainer.precision=8", "bf16-mixed"]),
        ("+trainer.limit_train_batches=1.5", ["limit_train_batches=1.5", "fraction in [0, 1]"]),
        ("trainer.deterministic=maybe", ["trainer.deterministic='maybe'", "warn"]),
        ("data.batch_size=0", ["data.batch_size=0 is invalid", "integer >= 1"]),
        ("data.val_size=-3", ["data.val_size=-3 is invalid"]),
        ("data.num_workers=two", ["data.num_workers='two'"]),
        ("mode=maximum", ["mode='maximum'", "min, max"]),
        ("train=yes", ["train='yes'", "true or false"]),
        (
            "+data.batch_sise=4",
            [
                "data.batch_sise=4",
                "MNIST5kDataModule takes no argument",
                "did you mean batch_size",
            ],
        ),  # fmt: skip
        ("+model.net.widht=3", ["model.net.widht=3", "no argument 'widht'", "widths"]),
        ("data.val_size=0", ["test_ckpt=best with data.val_size=0", "test_ckpt=last"]),
        ("test_ckpt=/no/such.ckpt", ["test_ckpt=/no/such.ckpt", "does not exist"]),
        ("ckpt_path=/no/such.ckpt", ["ckpt_path=/no/such.ckpt", "does not exist"]),
    ],
)
def test_every_preflight_error_names_the_key_the_value_and_the_fix(override, needles, tmp_path):
    found = problems([*TINY, override], tmp_path)
    assert len(found) == 1, found
    for needle in needles:
        assert needle in found[0], (needle, found[0])


def test_a_truncated_ckpt_path_and_all_problems_in_one_message(tmp_path, bad_ckpt):
    cfg = compose_config(
        [*TINY, f"ckpt_path={bad_ckpt}", "trainer.max_epochs=abc", "seed=x"],
        return_hydra_config=True,
    )
    with hydra_config(cfg), pytest.raises(PreflightError) as err:
        preflight(cfg, local=False)
    msg = str(err.value)
    assert msg.startswith("preflight: 3 problems, nothing was run:")
    assert f"ckpt_path={bad_ckpt}" in msg and "corrupt or truncated" in msg
    assert "trainer.max_epochs='abc'" in msg and "seed='x'" in msg


def test_missing_and_truncated_data_found_without_reading_it(tmp_path, cifar):
    over = [
        "experiment=lm_resnet20_cifar10",
        "logger=csv",
        "trainer.accelerator=cpu",
    ]
    (found,) = problems([*over, f"paths.data_dir={tmp_path / 'empty'}"], tmp_path)
    assert "CIFAR-10: 7 data file(s) not usable" in found and "test_batch: missing" in found
    assert "data.download=true" in found  # how to get it
    assert problems([*over, f"paths.data_dir={cifar}"], tmp_path) == []
    cut = tmp_path / "cut"
    import shutil

    shutil.copytree(cifar, cut)
    batch = cut / "cifar10" / "cifar-10-batches-py" / "test_batch"
    batch.write_bytes(batch.read_bytes()[:1000])
    (found,) = problems([*over, f"paths.data_dir={cut}"], tmp_path)
    assert f"{batch}: truncated pickle (1000 bytes" in found
    # the real shared copy passes in milliseconds (no md5)
    if (SHARED_DATA / "cifar10").is_dir():
        assert problems([*over, f"paths.data_dir={SHARED_DATA}"], tmp_path) == []


def test_file_sniffing_catches_each_format_cut_short(tmp_path):
    import gzip
    import pickle

    from odelab.data.check import file_problem

    good = {
        "a.pkl": pickle.dumps({"x": list(range(100))}, protocol=2),
        "b.pt": None,
        "c.idx": bytes([0, 0, 8, 1]) + (10).to_bytes(4, "big") + bytes(10),
        "d.bmp": b"BM" + (60).to_bytes(4, "little") + bytes(54),
        "e.gz": gzip.compress(b"hello" * 100),
    }
    torch.save({"w": torch.ones(10)}, tmp_path / "b.pt")
    for name, blob in good.items():
        if blob is not None:
            (tmp_path / name).write_bytes(blob)
        assert file_problem(tmp_path / name) is None, name
        data = (tmp_path / name).read_bytes()
        (tmp_path / f"cut_{name}").write_bytes(data[: len(data) // 2 if name != "e.gz" else 10])
        assert "truncated" in file_problem(tmp_path / f"cut_{name}"), name
    (tmp_path / "empty").write_bytes(b"")
    assert file_problem(tmp_path / "empty") == "empty (0 bytes)"
    assert file_problem(tmp_path / "nope") == "missing"


def test_every_experiment_passes_the_config_checks():
    """No false alarm: every shipped experiment's values and keys pass as composed (so every
    experiment with data.val_size: 0 tests `last`, not `best`)."""
    bad = {}
    for p in sorted((CONF / "experiment").glob("*.yaml")):
        cfg = compose_config([f"experiment={p.stem}"], return_hydra_config=True)
        with hydra_config(cfg):
            found = check_values(cfg) + check_targets(cfg)
        if found:
            bad[p.stem] = found
    assert not bad


def test_accepted_keys_follow_odelab_kwargs_to_the_base_class():
    cifar = accepted_keys("odelab.data.CIFAR10DataModule")
    assert {"train_files", "batch_size", "val_size", "data_dir"} <= cifar
    assert accepted_keys("odelab.data.translation.TranslationDataModule") >= {"pin_memory"}
    assert accepted_keys("lightning.pytorch.loggers.WandbLogger") is None  # **kwargs to wandb


@pytest.mark.parametrize(
    "target,key",
    [
        ("odelab.data.translation.TranslationDataModule", "max_tokns"),
        ("odelab.data.glue.GlueDataModule", "tsk"),
        ("odelab.data.glue.BertCorpusDataModule", "max_length"),
    ],
)
def test_text_datamodules_refuse_unknown_keys(target, key):
    """No more ``**_ignored``: a typo is a TypeError when built, and the preflight names it."""
    from hydra.utils import get_class

    with pytest.raises(TypeError, match=key):
        get_class(target)(**{key: 1})
    assert key not in accepted_keys(target)


def test_debug_keys_reach_every_datamodule(tmp_path):
    """debug=fdr writes num_workers/pin_memory into every datamodule: each takes and uses them
    (PDE-Net's loaders included)."""
    from odelab.data.pde_data import PDETrajectoryDataModule

    for exp in ("macaron_multi30k", "glue_rte", "bert_base", "pdenet_convdiff_lite"):
        cfg = compose_config([f"experiment={exp}", "debug=fdr"], return_hydra_config=True)
        with hydra_config(cfg):
            assert check_targets(cfg) == [], exp
    dm = PDETrajectoryDataModule(num_workers=1, pin_memory=True)
    loader = dm._loader(torch.zeros(4, 2, 3, 3), 2)
    assert loader.num_workers == 1 and loader.pin_memory


def test_cli_preflight_fails_before_any_work_in_one_message(tmp_path, bad_ckpt):
    run_dir = tmp_path / "run"
    args = ["trainer.max_epochs=abc", "seed=", f"ckpt_path={bad_ckpt}", "+data.foo=1"]
    p = _cli(*args, f"hydra.run.dir={run_dir}")
    assert p.returncode == 2, p.stderr[-2000:]
    assert p.stderr.startswith("preflight: 4 problems, nothing was run:")
    assert "Traceback" not in p.stderr and "data.foo=1" in p.stderr
    assert not run_dir.exists()  # nothing was made: no dir, no W&B, no data loaded
    full = _cli(*args, f"hydra.run.dir={run_dir}", env={"HYDRA_FULL_ERROR": "1"})
    assert full.returncode == 2 and "Traceback" in full.stderr  # the trace, on request


def test_cli_sweep_checks_every_point_before_the_first_job(tmp_path):
    sweep = tmp_path / "sweep"
    p = _cli(
        "-m",
        "hydra/launcher=local",
        *TINY,
        "seed=0,-1",
        "trainer.max_epochs=1,x",
        f"hydra.sweep.dir={sweep}",
    )
    assert p.returncode == 2, p.stderr[-2000:]
    assert p.stderr.startswith("sweep preflight (4 jobs): 2 problems")  # each named once
    assert "jobs 2, 3: seed=-1 is invalid" in p.stderr
    assert "jobs 1, 3: trainer.max_epochs='x' is invalid" in p.stderr
    assert "job 0" not in p.stderr
    assert not sweep.exists()  # no job ran, nothing was written


def test_unknown_experiment_lists_the_closest_names_first():
    msg = unknown_choice_message(["experiment=yopo_cifx", "seed=1"])
    first, rest = msg.split("\n", 1)
    assert first.startswith("Unknown experiment 'yopo_cifx'") and "Closest: yopo_cifar" in first
    assert rest.startswith("All experiment options: bert_base")
    assert unknown_choice_message(["experiment=yopo_cifar", "trainer=cpu"]) is None
    assert "Unknown trainer 'cpux'" in unknown_choice_message(["trainer=cpux"])
    assert "Unknown experiment 'nope'" in unknown_choice_message(["experiment=yopo_mnist,nope"])
    p = _cli("experiment=yopo_cifx")
    assert p.returncode == 2 and p.stderr.startswith("Unknown experiment 'yopo_cifx'")


def test_yopo_cifar_is_yopo_cifar10(tmp_path):
    """The project brief's command runs YOPO-5-3 on CIFAR-10 and is recorded as yopo_cifar10,
    so the results table counts it in that row."""
    from omegaconf import OmegaConf

    a = OmegaConf.to_container(compose(["experiment=yopo_cifar"], tmp_path), resolve=True)
    b = OmegaConf.to_container(compose(["experiment=yopo_cifar10"], tmp_path), resolve=True)
    assert a == b and a["experiment_name"] == "yopo_cifar10" and a["paper"] == "yopo"


def test_yopo_cifar_fast_dev_run(run_experiment, cifar):
    _, out = run_experiment(
        [
            "experiment=yopo_cifar",
            "debug=fdr",
            "logger=csv",
            f"paths.data_dir={cifar}",
            "data.batch_size=4",
            "data.eval_batch_size=4",
            "model.net.width=0.125",
        ]
    )
    res = json.loads((out / "results.json").read_text())
    assert res["status"] == "finished" and res["experiment"] == "yopo_cifar10"
    assert res["config"]["model"]["method"] == "yopo" and res["dataset"] == "cifar10"


def test_report_warns_on_empty_and_malformed_sources(tmp_path, caplog):
    from odelab.report.__main__ import main

    empty = tmp_path / "empty"
    empty.mkdir()
    args = ["yopo", "--no-wandb", "--quiet", "--no-plots", "--out", str(tmp_path / "out")]
    with caplog.at_level(logging.WARNING):
        assert main([*args, "--from", str(empty)]) == 0
    assert any("no run records of this paper in" in r.getMessage() for r in caplog.records)
    caplog.clear()
    bad = tmp_path / "bad" / "run0"
    bad.mkdir(parents=True)
    (bad / "results.json").write_text(json.dumps([{"experiment": "yopo_mnist"}]))
    (bad / "time_curve.json").write_text("[]")  # other JSON lists are not run records: no word
    with caplog.at_level(logging.WARNING):
        main([*args, "--from", str(bad.parent)])
    msgs = [r.getMessage() for r in caplog.records]
    assert any(f"skipping {bad / 'results.json'}: a JSON list" in m for m in msgs), msgs
    assert not any("time_curve" in m for m in msgs)
