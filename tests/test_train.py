"""The run path: every experiment runs, seeds, resume, results.json, W&B offline, clear errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import CONF, ROOT, compose

# Every file in conf/experiment/ must be listed here (test_every_experiment_is_covered).
# Every conf/experiment file is run with debug=fdr by some test module, which lists it in a
# module-level ``COVERED_EXPERIMENTS`` list literal (this one covers the LM-ResNet family).
COVERED_EXPERIMENTS = EXPERIMENTS = [
    "lm_resnet_mnist",
    "lm_resnet20_cifar10",
    "lm_resnet32_cifar10",
    "lm_resnet44_cifar10",
    "lm_resnet56_cifar10",
    "lm_resnet110_cifar10",
    "lm_resnet164_cifar10",
    "resnet20_cifar10",
    "resnet32_cifar10",
    "resnet44_cifar10",
    "resnet56_cifar10",
    "resnet110_cifar10",
    "lm_resnet56_sd_cifar10",
    "lm_resnet110_sd_cifar10",
    "lm_resnet164_cifar100",
]

# A small but real run of the default experiment: 2 epochs on a slice of MNIST-5k.
TINY = [
    "experiment=lm_resnet_mnist",
    "logger=csv",
    "data.train_subset=256",
    "data.test_subset=128",
    "data.val_size=64",
    "data.batch_size=32",
    "model.net.depth=14",
    "model.net.widths=[4,8,8]",
    "trainer.max_epochs=2",
    "trainer.accelerator=cpu",
]


def results(out: Path) -> dict:
    return json.loads((out / "results.json").read_text())


def _covered_experiments() -> dict[str, str]:
    """experiment -> the test module whose ``COVERED_EXPERIMENTS`` lists it."""
    import ast

    covered: dict[str, str] = {}
    for path in sorted(Path(__file__).parent.glob("test_*.py")):
        for node in ast.parse(path.read_text()).body:
            if isinstance(node, ast.Assign) and any(
                isinstance(t, ast.Name) and t.id == "COVERED_EXPERIMENTS" for t in node.targets
            ):
                for name in ast.literal_eval(node.value):
                    assert name not in covered, f"{name} listed in {covered[name]} and {path.name}"
                    covered[name] = path.name
    return covered


def test_every_experiment_is_covered():
    files = sorted(p.stem for p in (CONF / "experiment").glob("*.yaml"))
    covered = _covered_experiments()
    missing = [f for f in files if f not in covered]
    assert not missing, f"add to a COVERED_EXPERIMENTS list and run them: {missing}"
    stale = [c for c in covered if c not in files]
    assert not stale, f"COVERED_EXPERIMENTS names experiments with no config file: {stale}"


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_experiment_fast_dev_run(experiment, run_experiment, tiny_data):
    overrides = [
        f"experiment={experiment}",
        "debug=fdr",
        "logger=csv",
        f"paths.data_dir={tiny_data}",
        "data.batch_size=4",
    ]
    _, out = run_experiment(overrides)
    res = results(out)
    assert res["status"] == "finished"
    assert res["experiment"] == experiment and res["paper"] == "lm_resnet"
    assert 0.0 <= res["metrics"]["test/acc"] <= 1.0
    assert res["config"]["trainer"]["fast_dev_run"] is True


@pytest.mark.parametrize("debug", sorted(p.stem for p in (CONF / "debug").glob("*.yaml")))
def test_every_debug_mode_runs(debug, run_experiment):
    overrides = [*TINY, f"debug={debug}"]
    if debug == "overfit":
        overrides.append("trainer.max_epochs=3")
    _, out = run_experiment(overrides)
    assert results(out)["status"] == "finished"
    if debug == "profiler":
        assert list(out.glob("*profile*")), list(out.iterdir())


def test_seed_zero_is_honoured_and_deterministic(run_experiment):
    a = results(run_experiment([*TINY, "seed=0"])[1])
    b = results(run_experiment([*TINY, "seed=0"])[1])
    c = results(run_experiment([*TINY, "seed=1"])[1])
    assert a["seed"] == 0 and a["config"]["seed"] == 0

    def learned(r):  # everything but wall-clock timings
        return {k: v for k, v in r["metrics"].items() if not k.startswith("time/")}

    assert learned(a) == learned(b)
    assert a["k"] == b["k"]
    assert a["metrics"]["train/loss"] != c["metrics"]["train/loss"]


def test_resume_reaches_the_uninterrupted_epoch_two_metrics(run_experiment):
    common = [*TINY, "seed=3", "test_ckpt=last"]
    _, full = run_experiment(common, name="full")
    _, first = run_experiment(
        [
            *common,
            "+callbacks.stop._target_=odelab.callbacks.StopAfterEpochs",
            "+callbacks.stop.epochs=1",
        ],
        name="first",
    )
    assert results(first)["epochs"] == 1  # stopped after one epoch of two
    last = first / "checkpoints" / "last.ckpt"
    assert last.is_file()
    _, resumed = run_experiment([*common, f"ckpt_path={last}"], name="resumed")
    a, b = results(full), results(resumed)
    assert b["global_step"] == a["global_step"]
    for key in ("train/loss", "train/acc", "val/loss", "val/acc", "test/acc", "test/loss"):
        assert b["metrics"][key] == a["metrics"][key], key
    assert b["k"] == a["k"]


def test_results_json_contract(run_experiment, tiny_data):
    _, out = run_experiment(
        [
            "experiment=lm_resnet20_cifar10",
            "debug=limit",
            "logger=csv",
            f"paths.data_dir={tiny_data}",
            "data.batch_size=8",
            "model.net.widths=[4,8,8]",
        ]
    )
    res = results(out)
    for key in (
        "experiment",
        "paper",
        "seed",
        "metrics",
        "reference",
        "config",
        "hardware",
        "wall_time_s",
        "git_commit",
        "status",
        "dataset",
    ):
        assert key in res, key
    assert res["status"] == "finished" and res["dataset"] == "cifar10"
    ref = res["reference"]["test/error"]
    assert ref["value"] == pytest.approx(8.33) and ref["flag"] and ref["source"]
    assert res["metrics"]["test/error"] == pytest.approx(100 * (1 - res["metrics"]["test/acc"]))
    assert res["hardware"]["accelerator"] == "cpu"
    assert res["config"]["model"]["net"]["depth"] == 20
    assert (out / "checkpoints" / "last.ckpt").is_file()
    assert set(res["k"]) == {"1", "2", "4", "5", "7", "8"}


def test_wandb_offline_run_and_results_table(run_experiment, monkeypatch):
    monkeypatch.delenv("WANDB_MODE", raising=False)  # no API key -> offline by default
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("HOME", str(Path(os.environ["WANDB_DIR"]).parent))  # no ~/.netrc
    _, out = run_experiment([*[o for o in TINY if o != "logger=csv"], "logger=wandb"])
    runs = list((out / "wandb").glob("offline-run-*"))
    assert len(runs) == 1, list(out.rglob("*"))
    assert list(runs[0].glob("run-*.wandb"))
    tables = list(runs[0].glob("files/media/table/results/*.table.json"))
    assert tables, list(runs[0].rglob("*"))
    table = json.loads(tables[0].read_text())
    assert table["columns"] == ["metric", "ours", "paper", "delta", "flag", "source"]
    res = results(out)
    assert res["status"] == "finished"
    wb = res["config"]["logger"]["wandb"]
    assert wb["group"] == "lm_resnet" and {"lm_resnet_mnist", "mnist5k"} <= set(wb["tags"])


def test_impossible_config_is_a_clear_error(run_experiment):
    with pytest.raises(
        ValueError, match="impossible config.*in_channels=1.*model.net.in_channels"
    ):
        run_experiment([*TINY, "model.net.in_channels=3", "train=true"])
    with pytest.raises(Exception, match="depth=15 is impossible"):
        run_experiment([*TINY, "model.net.depth=15"])


def _cli(*args: str, cwd: Path = ROOT, timeout: int = 300) -> subprocess.CompletedProcess:
    env = {**os.environ, "WANDB_MODE": "offline", "HYDRA_FULL_ERROR": "0"}
    return subprocess.run(
        [sys.executable, "run.py", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
    )


def test_cli_help_lists_the_experiments():
    p = _cli("--help")
    assert p.returncode == 0, p.stderr
    for name in _covered_experiments():
        assert name in p.stdout


@pytest.mark.parametrize(
    "override,needle",
    [
        ("experiment=no_such_experiment", "no_such_experiment"),
        ("trainer=no_such_trainer", "no_such_trainer"),
        ("model.net.no_such_key=1", "no_such_key"),
    ],
)
def test_cli_unknown_names_fail_before_work_and_list_choices(override, needle, tmp_path):
    p = _cli(override, f"hydra.run.dir={tmp_path / 'run'}")
    assert p.returncode != 0
    assert needle in p.stderr
    if override.startswith("model"):  # the valid keys at that level are listed
        assert "valid keys there" in p.stderr and "depth" in p.stderr
    else:  # the valid options of the group are listed
        assert "lm_resnet56_cifar10" in p.stderr or "ddp_cpu" in p.stderr
    assert not (tmp_path / "run").exists()  # failed before any work


def test_cli_sweep_with_seed_zero(tmp_path):
    p = _cli(
        "-m",
        "hydra/launcher=local",
        "experiment=lm_resnet_mnist",
        "seed=0,1",
        "debug=fdr",
        "logger=csv",
        "data.train_subset=64",
        "data.test_subset=32",
        "data.val_size=16",
        f"hydra.sweep.dir={tmp_path}",
    )
    assert p.returncode == 0, p.stderr[-3000:]
    found = sorted(tmp_path.glob("*/results.json"))
    assert len(found) == 2
    assert sorted(json.loads(f.read_text())["seed"] for f in found) == [0, 1]


@pytest.mark.ddp
def test_ddp_cpu_two_processes(tmp_path):
    p = _cli(
        "experiment=lm_resnet_mnist",
        "trainer=ddp_cpu",
        "debug=limit",
        "logger=csv",
        "data.train_subset=256",
        "data.test_subset=64",
        "data.val_size=64",
        "model.net.widths=[4,8,8]",
        f"hydra.run.dir={tmp_path}",
    )
    assert p.returncode == 0, p.stderr[-3000:]
    res = results(tmp_path)
    assert res["hardware"]["world_size"] == 2 and res["status"] == "finished"
    assert res["epochs"] == 2  # debug=limit: two epochs


def test_corrupt_dataset_fails_clearly_and_keeps_earlier_results(tmp_path):
    from canonical_data import write_cifar10
    from odelab.data import DatasetError
    from odelab.train import run

    root = tmp_path / "corrupt"
    write_cifar10(root, n_per_batch=10)
    test_batch = root / "cifar10" / "cifar-10-batches-py" / "test_batch"
    test_batch.write_bytes(test_batch.read_bytes()[:1000])  # truncated download
    out = tmp_path / "same_dir"
    out.mkdir()
    (out / "results.json").write_text('{"status": "finished", "note": "an earlier run"}')
    cfg = compose(
        ["experiment=lm_resnet20_cifar10", "debug=fdr", "logger=csv", f"paths.data_dir={root}"],
        out,
    )
    with pytest.raises(DatasetError) as err:
        run(cfg)
    msg = str(err.value)
    assert str(test_batch) in msg and "40351d587109b95175f43aff81a1287e" in msg
    kept = [p for p in out.glob("results*.json") if "an earlier run" in p.read_text()]
    assert kept, "the earlier results.json was lost"
    assert results(out)["status"] == "failed"


def _readme_run_commands() -> list[str]:
    """Every ``python run.py ...`` line in the code blocks of the READMEs."""
    cmds = []
    for readme in [ROOT / "README.md", *sorted(ROOT.glob("experiments/*/README.md"))]:
        in_code = False
        for line in readme.read_text().splitlines():
            if line.startswith("```"):
                in_code = not in_code
            elif in_code and line.strip().startswith("python run.py"):
                cmds.append(line.split("#")[0].strip())
    return cmds


@pytest.mark.parametrize("command", _readme_run_commands())
def test_readme_commands_compose(command, tmp_path):
    """README commands never rot: each composes (``--cfg job``); the behaviours they promise
    (resume, sweeps, fdr, DDP) are run for real by the tests above."""
    args = [a for a in command.split()[2:] if a not in ("-m", "--multirun")]
    args = [a.replace("<run_dir>", str(tmp_path)) for a in args]
    # a sweep composes like its first job
    args = [a.split(",")[0] if "," in a and "[" not in a else a for a in args]
    assert "<" not in " ".join(args)
    if "--help" in args or any(a.lstrip("+~").startswith("hydra") for a in args):
        p = _cli(*args) if "--help" in args else _cli(*args, "--cfg", "job", "--resolve")
        assert p.returncode == 0, p.stderr[-2000:]
        return
    # in-process: the same compose + full resolution as `--cfg job --resolve`, without a
    # 5-second interpreter start per command
    from omegaconf import OmegaConf

    OmegaConf.to_container(compose(args, tmp_path), resolve=True)


@pytest.mark.slow
def test_default_experiment_reaches_90_percent(tmp_path):
    """`make run` (``python run.py``): LM-ResNet-20 on MNIST-5k, >= 90% test accuracy."""
    p = _cli("logger=csv", f"hydra.run.dir={tmp_path}", timeout=900)
    assert p.returncode == 0, p.stderr[-3000:]
    res = results(tmp_path)
    assert res["experiment"] == "lm_resnet_mnist" and res["status"] == "finished"
    assert res["metrics"]["test/acc"] >= 0.90, res["metrics"]


class UnreachableWandbLogger:
    """Stands in for WandbLogger when the W&B server cannot be reached (online only)."""

    def __init__(self, offline: bool = False, save_dir: str = "."):
        self.offline = offline

    @property
    def experiment(self):
        if not self.offline:
            raise TimeoutError("context deadline exceeded")
        return object()


def test_unreachable_wandb_falls_back_to_offline(monkeypatch, tmp_path):
    from omegaconf import OmegaConf

    from odelab.train import _loggers

    monkeypatch.setenv("WANDB_MODE", "online")
    node = {"_target_": "test_train.UnreachableWandbLogger", "save_dir": str(tmp_path)}
    loggers = _loggers(OmegaConf.create({"logger": {"wandb": node}}))
    assert len(loggers) == 1 and loggers[0].offline
    assert os.environ["WANDB_MODE"] == "offline"
