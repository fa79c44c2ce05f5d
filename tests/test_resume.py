"""Surviving the cluster, in-process on CPU: auto-resume in the same output dir (same metrics, same
W&B run id), a corrupt last.ckpt falls back to the previous checkpoint, atomic checkpoint writes,
SIGTERM saves a checkpoint that a restart resumes."""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import signal
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
from test_train import TINY

from odelab.utils.checkpoint import (
    AtomicCheckpointIO,
    CheckpointError,
    check_checkpoint,
    find_resume_checkpoint,
)
from odelab.utils.config import gpus_per_node, run_id

STOP_AFTER_1 = [
    "+callbacks.stop._target_=odelab.callbacks.StopAfterEpochs",
    "+callbacks.stop.epochs=1",
]
LEARNED = ("train/loss", "train/acc", "val/loss", "val/acc", "test/acc", "test/loss")


def results(out: Path) -> dict:
    return json.loads((out / "results.json").read_text())


def wandb_ids(out: Path) -> list[str]:
    """The run id of every W&B (offline) run started in ``out``, oldest first."""
    runs = sorted((out / "wandb").glob("offline-run-*"))
    # offline-run-<YYYYMMDD_HHMMSS>-<id>, plus "-1", "-2" when two runs start in the same second
    return [re.match(r"offline-run-\d{8}_\d{6}-([^-]+)", r.name).group(1) for r in runs]


def test_restart_in_the_same_dir_resumes_with_the_same_metrics_and_wandb_run(
    run_experiment, caplog
):
    """An interrupted run re-run in its output dir (what a requeued SLURM job does) resumes
    from its checkpoint and ends exactly as the uninterrupted run; a truncated last.ckpt is
    reported and the previous checkpoint is used, with the same end."""
    common = [*[o for o in TINY if o != "logger=csv"], "logger=wandb", "seed=5", "test_ckpt=last"]
    _, full = run_experiment(common, name="full")
    _, cut = run_experiment([*common, *STOP_AFTER_1], name="cut")
    assert results(cut)["epochs"] == 1
    corrupt = cut.with_name("corrupt")
    shutil.copytree(cut, corrupt)  # copy2: keeps mtimes, so last.ckpt stays the newest
    last = corrupt / "checkpoints" / "last.ckpt"
    last.write_bytes(last.read_bytes()[: last.stat().st_size // 2])  # a write killed halfway

    run_experiment(common, name="cut")  # no ckpt_path: auto_resume
    with caplog.at_level(logging.ERROR, logger="odelab.utils.checkpoint"):
        run_experiment(common, name="corrupt")
    assert any(
        str(last) in r.getMessage() and "truncated" in r.getMessage() for r in caplog.records
    )

    a = results(full)
    for out in (cut, corrupt):
        b = results(out)
        assert b["status"] == "finished" and b["epochs"] == a["epochs"] == 2
        assert b["global_step"] == a["global_step"]
        for key in LEARNED:
            assert b["metrics"][key] == a["metrics"][key], (out.name, key)
    fallback = results(corrupt)["config"]
    assert fallback["auto_resume"] is True
    # one W&B run per output dir: the restart continued it (resume="allow", same id)
    assert wandb_ids(cut) == [run_id(str(cut))] * 2
    assert wandb_ids(full) == [run_id(str(full))] and run_id(str(full)) != run_id(str(cut))


class SigtermAt(pl.Callback):
    """Send this process SIGTERM (as SLURM does on preemption) at a given global step."""

    def __init__(self, step: int):
        self.step = step

    def on_train_batch_end(self, trainer, *args) -> None:
        if trainer.global_step == self.step:
            os.kill(os.getpid(), signal.SIGTERM)


@pytest.mark.slow  # mid-epoch SIGTERM; tests/test_slurm.py covers SIGTERM at an epoch end
def test_sigterm_saves_a_checkpoint_that_a_restart_resumes(run_experiment):
    common = [*TINY, "seed=2"]
    with pytest.raises(SystemExit) as stop:  # Lightning's SIGTERMException, after the batch
        run_experiment(
            [*common, "+callbacks.kill._target_=test_resume.SigtermAt", "+callbacks.kill.step=3"],
            name="run",
        )
    assert stop.value.code == 143  # 128 + SIGTERM: shells and sacct see an unfinished run
    out = Path(os.environ["ODELAB_LOG_DIR"]).parent / "run"
    hpc = sorted(out.glob("hpc_ckpt_*.ckpt"))
    assert [p.name for p in hpc] == ["hpc_ckpt_1.ckpt"]
    ckpt = torch.load(hpc[0], map_location="cpu", weights_only=False)
    assert ckpt["global_step"] == 3 and ckpt["epoch"] == 0
    # issue 19 changed this premise: an interrupted run is "interrupted", not "failed", and its
    # record names the checkpoint a restart resumes, with that checkpoint's epoch and step
    cut = results(out)
    assert cut["status"] == "interrupted" and cut["interrupted_by"] == "SIGTERM"
    assert cut["resume_checkpoint"] == {"path": str(hpc[0]), "epoch": 0, "global_step": 3}
    assert cut["epochs"] == 0 and cut["global_step"] == 3
    assert find_resume_checkpoint(out) == str(hpc[0])
    run_experiment(common, name="run")
    res = results(out)
    assert res["status"] == "finished" and res["epochs"] == 2
    assert res["global_step"] == 2 * 8  # 8 batches of 32 per epoch: no batch lost or repeated
    assert res["tested_ckpt"] and "hpc_ckpt" not in res["tested_ckpt"]


def test_atomic_checkpoint_io_never_leaves_a_truncated_file(tmp_path, monkeypatch):
    io = AtomicCheckpointIO()
    path = tmp_path / "checkpoints" / "last.ckpt"
    good = {"state_dict": {"w": torch.ones(3)}, "epoch": 1, "global_step": 10}
    io.save_checkpoint(good, path)
    check_checkpoint(path)

    def killed_save(obj, f, *args, **kwargs):  # half a checkpoint, then the process dies
        f.write(b"PK\x03\x04 half a zip")
        raise KeyboardInterrupt

    monkeypatch.setattr(torch, "save", killed_save)
    with pytest.raises(KeyboardInterrupt):
        io.save_checkpoint({**good, "epoch": 2}, path)
    monkeypatch.undo()
    assert torch.load(path, weights_only=False)["epoch"] == 1  # the previous one, intact
    assert [p.name for p in path.parent.iterdir()] == ["last.ckpt"]  # no temp file left


def test_unreadable_checkpoints_are_clear_errors(tmp_path):
    bad = tmp_path / "checkpoints" / "last.ckpt"
    bad.parent.mkdir()
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match=f"{bad}.*corrupt or truncated.*ckpt_path="):
        check_checkpoint(bad)
    with pytest.raises(CheckpointError, match="does not exist"):
        check_checkpoint(tmp_path / "nope.ckpt")
    torch.save({"weights": torch.ones(1)}, tmp_path / "plain.ckpt")
    with pytest.raises(CheckpointError, match="not a Lightning checkpoint"):
        check_checkpoint(tmp_path / "plain.ckpt")
    with pytest.raises(CheckpointError, match="no readable checkpoint.*auto_resume=false"):
        find_resume_checkpoint(tmp_path)
    assert find_resume_checkpoint(tmp_path / "fresh") is None


def test_explicit_corrupt_ckpt_path_fails_before_training(run_experiment, tmp_path):
    bad = tmp_path / "bad.ckpt"
    bad.write_bytes(b"\x00" * 100)
    with pytest.raises(CheckpointError, match="bad.ckpt is corrupt"):
        run_experiment([*TINY, f"ckpt_path={bad}"])


def test_run_id_and_gpus_per_node():
    assert run_id("/a/b") == run_id("/a/b/") != run_id("/a/c")
    assert len(run_id("x")) == 16 and run_id("x").isalnum() and run_id(None) is None
    assert gpus_per_node("cpu", 2) is None
    assert gpus_per_node("gpu", 4) == 4 and gpus_per_node("cuda", [0, 1]) == 2
    with pytest.raises(ValueError, match="trainer.devices"):
        gpus_per_node("gpu", "auto")


def test_last_ckpt_holds_the_final_epoch_even_without_a_new_best(run_experiment):
    """checkpoints/last.ckpt is what a restart after a SIGKILL resumes: it must be the latest
    epoch, not the latest best (Lightning 2.6's save_last rewrites it only with a new best;
    mode=min on an accuracy that rises keeps the best at epoch 0)."""
    _, out = run_experiment([*TINY, "trainer.max_epochs=3", "mode=min", "test_ckpt=last"])
    rec = results(out)
    last = torch.load(out / "checkpoints" / "last.ckpt", weights_only=False)
    assert last["global_step"] == rec["global_step"] and last["epoch"] == 2
    (best,) = (out / "checkpoints").glob("epoch_*.ckpt")  # the best by the monitor, kept apart
    assert best.name != "epoch_002.ckpt"  # (so a last.ckpt of the best would be stale here)
    assert find_resume_checkpoint(out) in (str(out / "checkpoints" / "last.ckpt"),)
