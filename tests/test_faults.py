"""Fault injection: what a user sees when a run is killed (-9), stopped (SIGTERM, Ctrl-C), started
twice in one dir, resumed from a copied dir with a truncated checkpoint, pointed at a read-only
dir or a full disk, and re-run once finished. Each: a true record, a clear line, a dir that
resumes."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from test_train import TINY

from conftest import ROOT, run_cli
from odelab.utils.checkpoint import (
    AtomicCheckpointIO,
    checkpoint_position,
    find_resume_checkpoint,
    next_hpc_checkpoint,
)
from odelab.utils.errors import RunLockedError, StorageError, writable_dir_problem
from odelab.utils.runlock import LOCK_NAME, run_lock

TESTS = Path(__file__).resolve().parent
STOP_AFTER_1 = [
    "+callbacks.stop._target_=odelab.callbacks.StopAfterEpochs",
    "+callbacks.stop.epochs=1",
]


def results(out: Path) -> dict:
    return json.loads((out / "results.json").read_text())


def _cli(*args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    path = os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")])  # fault_callbacks
    return run_cli(*args, env={"OMP_NUM_THREADS": "1", "PYTHONPATH": path}, timeout=timeout)


def _signal_at(step: int, sig: str) -> list[str]:
    return [
        "+callbacks.fault._target_=fault_callbacks.SignalAt",
        f"+callbacks.fault.step={step}",
        f"+callbacks.fault.signal={sig}",
    ]


def _mtimes(d: Path) -> dict[str, int]:
    return {str(p): p.stat().st_mtime_ns for p in sorted(d.rglob("*.ckpt"))}


@pytest.fixture
def mount(tmp_path):
    """``mount(size, read_only=False)``: a fresh tmpfs (a tiny disk) under ``tmp_path``; skips
    with the reason where it cannot be mounted (not root, no mount permission)."""
    done: list[Path] = []

    def _mount(size: str, read_only: bool = False) -> Path:
        d = tmp_path / f"disk{len(done)}"
        d.mkdir()
        if os.geteuid() != 0:
            pytest.skip("mounting a tmpfs (a tiny or read-only disk) needs root")
        p = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(d)],
            capture_output=True,
            text=True,
        )
        if p.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here: {p.stderr.strip()}")
        done.append(d)
        if read_only:
            (d / "existing_run").mkdir()
            subprocess.run(["mount", "-o", "remount,ro", str(d)], check=True)
        return d

    yield _mount
    for d in reversed(done):
        subprocess.run(["umount", "-l", str(d)], check=False)


def test_sigterm_sigint_kill9_then_finish_then_rerun_in_one_dir(tmp_path):
    """One output dir through a run's bad days (8 steps per epoch, 3 epochs): SIGTERM mid-epoch
    (exit 143, a checkpoint saved and named in the record), Ctrl-C (exit 130), SIGKILL (a stale
    lock left behind), then a clean restart that takes the lock over and finishes with the
    record of all four attempts; a re-run of the finished run trains and tests nothing and
    keeps the record; retest=true tests the same weights again."""
    run = tmp_path / "run"
    common = [*TINY, "trainer.max_epochs=3", "seed=7", f"hydra.run.dir={run}"]

    p = _cli(*common, *_signal_at(3, "TERM"))
    assert p.returncode == 143, p.stderr[-3000:]
    assert "Traceback" not in p.stderr
    rec = results(run)
    assert rec["status"] == "interrupted" and rec["interrupted_by"] == "SIGTERM"
    hpc = run / "hpc_ckpt_1.ckpt"
    assert rec["resume_checkpoint"] == {"path": str(hpc), "epoch": 0, "global_step": 3}
    assert checkpoint_position(hpc)["global_step"] == rec["global_step"] == 3
    assert not (run / LOCK_NAME).exists()

    p = _cli(*common, *_signal_at(12, "INT"))
    assert p.returncode == 130, p.stderr[-3000:]
    rec = results(run)
    assert rec["status"] == "interrupted" and rec["interrupted_by"] == "SIGINT"
    assert rec["resume_checkpoint"]["path"] == str(run / "checkpoints" / "last.ckpt")
    assert rec["resume_checkpoint"]["global_step"] == 8  # the end of epoch 0
    assert rec["epochs"] == 1 and rec["global_step"] == 12

    p = _cli(*common, *_signal_at(20, "KILL"))
    assert p.returncode == -signal.SIGKILL
    holder = json.loads((run / LOCK_NAME).read_text())  # left behind by the killed run
    assert holder["host"] == socket.gethostname() and holder["pid"] != os.getpid()
    assert results(run)["status"] == "interrupted"  # the last true record, intact

    resume = find_resume_checkpoint(run)
    carried = torch.load(resume, weights_only=False)["callbacks"]["ResultsWriter"]
    p = _cli(*common)
    assert p.returncode == 0, p.stderr[-3000:]
    log = p.stdout + p.stderr
    assert "taking over the lock" in log and f"pid {holder['pid']} on this host is gone" in log
    done = results(run)
    assert done["status"] == "finished" and done["epochs"] == 3 and done["global_step"] == 24
    # the attempts and training time the resumed checkpoint carried, plus this attempt's
    assert done["attempts"] == carried["attempts"] + 1 >= 3
    assert done["train_time_s"] > carried["train_time_s"] > 0
    assert "val/acc" in done["metrics"] and "train/loss" in done["metrics"]
    assert "interrupted_by" not in done and "resume_checkpoint" not in done
    assert not (run / LOCK_NAME).exists()

    text, ckpts = (run / "results.json").read_text(), _mtimes(run)
    p = _cli(*common)
    assert p.returncode == 0 and "holds a finished run of this config" in p.stdout + p.stderr
    assert (run / "results.json").read_text() == text and _mtimes(run) == ckpts

    p = _cli(*common, "retest=true")
    assert p.returncode == 0, p.stderr[-3000:]
    again = results(run)
    assert again["status"] == "finished" and again["retested"] == 1
    for key in ("epochs", "global_step", "attempts", "train_time_s", "best_model_path"):
        assert again[key] == done[key], key
    for key in ("test/acc", "test/loss", "val/acc", "train/loss"):
        assert again["metrics"][key] == done["metrics"][key], key
    assert _mtimes(run) == ckpts  # tested, not trained
    assert len(list(run.glob("results.*.json"))) >= 1  # the earlier record kept beside it


def test_a_changed_config_in_a_finished_dir_continues_with_the_time_so_far(run_experiment):
    """Not a re-run: more epochs resume from the checkpoint; the record's training time covers
    both attempts (stored in the checkpoint)."""
    _, out = run_experiment([*TINY, "seed=1"], name="grow")
    first = results(out)
    stored = torch.load(out / "checkpoints" / "last.ckpt", weights_only=False)["callbacks"]
    stored_s = stored["ResultsWriter"]["train_time_s"]
    assert 0 < stored_s <= first["train_time_s"]
    run_experiment([*TINY, "seed=1", "trainer.max_epochs=3"], name="grow")
    grown = results(out)
    assert grown["status"] == "finished" and grown["epochs"] == 3 and grown["attempts"] == 2
    assert grown["train_time_s"] > stored_s


def test_two_runs_in_one_dir(run_experiment, tmp_path):
    out = tmp_path / "busy"
    out.mkdir()
    live = pytest.raises(RunLockedError, match=f"in use by the run of pid {os.getpid()} on")
    with run_lock(out), live:  # a live run on this host holds it (this process)
        run_experiment(TINY, name="busy")
    assert not (out / LOCK_NAME).exists()  # released

    other = {"pid": 1, "host": "elsewhere", "start": None, "slurm_job": None, "since": "x"}
    (out / LOCK_NAME).write_text(json.dumps(other))
    with pytest.raises(RunLockedError, match=f"on elsewhere .*delete {out / LOCK_NAME}"):
        run_experiment(TINY, name="busy")
    other["slurm_job"] = "4242"  # the same job's earlier attempt (a requeue to another node)
    (out / LOCK_NAME).write_text(json.dumps(other))
    os.environ["SLURM_JOB_ID"] = "4242"
    try:
        with run_lock(out) as path:
            assert json.loads(path.read_text())["pid"] == os.getpid()
    finally:
        del os.environ["SLURM_JOB_ID"]

    # the command line: refused before any work, in one message
    holder = subprocess.Popen(
        [sys.executable, "-c", "import time; time.sleep(120)"], stdout=subprocess.DEVNULL
    )
    try:
        (out / LOCK_NAME).write_text(
            json.dumps({"pid": holder.pid, "host": socket.gethostname(), "since": "now"})
        )
        p = _cli(*TINY, f"hydra.run.dir={out}")
    finally:
        holder.kill()
        holder.wait()
    assert p.returncode == 2 and "Traceback" not in p.stderr
    assert f"is in use by the run of pid {holder.pid}" in p.stderr
    assert not (out / "results.json").exists()


def test_copied_run_dir_with_a_truncated_last_ckpt_stays_in_its_own_dir(run_experiment):
    _, orig = run_experiment([*TINY, "seed=3", *STOP_AFTER_1], name="orig")
    copy = orig.with_name("copy")
    shutil.copytree(orig, copy)
    last = copy / "checkpoints" / "last.ckpt"
    last.write_bytes(last.read_bytes()[: last.stat().st_size // 2])
    before = _mtimes(orig)
    run_experiment([*TINY, "seed=3"], name="copy")  # resumes copy/checkpoints/epoch_000.ckpt
    rec = results(copy)
    assert rec["status"] == "finished" and rec["epochs"] == 2
    for key in ("best_model_path", "tested_ckpt"):
        assert Path(rec[key]).parent == copy / "checkpoints", (key, rec[key])
    assert _mtimes(orig) == before  # the other directory untouched


def test_checkpoint_paths_from_another_dir_are_rebased_or_dropped(tmp_path):
    from types import SimpleNamespace

    from odelab.callbacks import ResultsWriter

    here, there = tmp_path / "here", tmp_path / "there"
    here.mkdir()
    (here / "epoch_003.ckpt").write_bytes(b"x")
    state = {
        "dirpath": str(there),
        "best_model_path": str(there / "epoch_003.ckpt"),
        "best_model_score": torch.tensor(0.9),
        "last_model_path": str(there / "last.ckpt"),  # not copied
        "best_k_models": {str(there / "epoch_003.ckpt"): 0.9, str(there / "gone.ckpt"): 0.1},
    }
    cb = SimpleNamespace(state_key="MC", dirpath=str(here))
    trainer = SimpleNamespace(checkpoint_callbacks=[cb], state=SimpleNamespace(fn="fit"))
    writer = ResultsWriter(str(tmp_path), "p", "e", 0)
    writer.on_load_checkpoint(trainer, None, {"callbacks": {"MC": state}})
    assert state["dirpath"] == str(here) and state["last_model_path"] == ""
    assert state["best_model_path"] == str(here / "epoch_003.ckpt")
    assert state["best_k_models"] == {str(here / "epoch_003.ckpt"): 0.9}
    state.update(dirpath=str(there), best_model_path=str(there / "gone.ckpt"))
    writer.on_load_checkpoint(trainer, None, {"callbacks": {"MC": state}})
    assert state["best_model_path"] == "" and state["best_model_score"] is None


def test_checkpoints_respect_the_umask(tmp_path):
    io = AtomicCheckpointIO()
    ckpt = {"state_dict": {"w": torch.ones(2)}, "epoch": 0, "global_step": 1}
    old = os.umask(0o027)
    try:
        io.save_checkpoint(ckpt, tmp_path / "a.ckpt")
        os.umask(0o002)
        io.save_checkpoint(ckpt, tmp_path / "b.ckpt")
    finally:
        os.umask(old)
    assert (tmp_path / "a.ckpt").stat().st_mode & 0o777 == 0o640
    assert (tmp_path / "b.ckpt").stat().st_mode & 0o777 == 0o664  # group-readable, like others


def test_a_full_disk_is_one_line_naming_the_file(mount, run_experiment):
    disk = mount("96k")  # the logs fit, the first checkpoint (about 100 KB) does not
    ckpt = {"state_dict": {"w": torch.zeros(50_000)}, "epoch": 0, "global_step": 1}
    with pytest.raises(StorageError) as err:
        AtomicCheckpointIO().save_checkpoint(ckpt, disk / "checkpoints" / "last.ckpt")
    msg = str(err.value)
    assert "\n" not in msg and f"no space left on the device writing {disk}/checkpoints" in msg
    assert "inline_container" not in msg and not list((disk / "checkpoints").iterdir())

    p = _cli(*TINY, f"hydra.run.dir={disk / 'run'}")
    assert p.returncode == 1, p.stderr[-3000:]
    assert "Traceback" not in p.stderr
    line = next(x for x in p.stderr.splitlines() if x.startswith("error: "))
    assert f"error: no space left on the device writing {disk / 'run'}" in line
    assert "MiB free" in line and "paths.log_dir" in line


def test_a_read_only_dir_is_refused_before_any_work(mount, tmp_path):
    if os.geteuid() == 0:
        ro = mount("1m", read_only=True)
    else:
        ro = tmp_path / "ro"
        ro.mkdir()
        ro.chmod(0o555)
    assert "read-only" in writable_dir_problem(ro / "new") or "not writable" in (
        writable_dir_problem(ro / "new")
    )
    with pytest.raises(StorageError, match=f"cannot write {ro}/x.ckpt: "):
        AtomicCheckpointIO().save_checkpoint({"epoch": 0}, ro / "x.ckpt")
    p = _cli(*TINY, f"hydra.run.dir={ro / 'existing_run'}")
    assert p.returncode == 2 and "Traceback" not in p.stderr, p.stderr[-2000:]
    assert p.stderr.startswith("preflight: 1 problem") and str(ro) in p.stderr


def test_the_sigterm_checkpoint_names_without_private_lightning_api(tmp_path):
    assert next_hpc_checkpoint(tmp_path).name == "hpc_ckpt_1.ckpt"
    (tmp_path / "hpc_ckpt_1.ckpt").touch()
    (tmp_path / "hpc_ckpt_7.ckpt").touch()
    assert next_hpc_checkpoint(tmp_path).name == "hpc_ckpt_8.ckpt"
    src = (ROOT / "src" / "odelab" / "callbacks" / "control.py").read_text()
    assert "_checkpoint_connector" not in src


def test_glue_and_bert_orders_are_functions_of_seed_and_epoch(tmp_path):
    """A resumed run (a new datamodule, Lightning setting the epoch) sees the uninterrupted
    run's order and BERT's next-sentence pairs of that epoch."""
    from test_macaron import write_bert_corpus, write_glue

    from odelab.data.glue import BertCorpusDataModule, GlueDataModule

    write_bert_corpus(tmp_path)
    write_glue(tmp_path)

    def glue():
        return GlueDataModule(task="rte", data_dir=str(tmp_path), cache_dir=str(tmp_path / "c"))

    def bert():
        return BertCorpusDataModule(data_dir=str(tmp_path), cache_dir=str(tmp_path / "c"),
                                    bpe_merges=50, max_len=64)  # fmt: skip

    def epoch(dm, e):
        loader = dm.train_dataloader()
        loader.sampler.set_epoch(e)  # what Lightning does at every epoch start
        return [tuple(map(tuple, b[0].tolist())) for b in loader]

    for make in (glue, bert):
        dm = make()
        uninterrupted = [epoch(dm, 0), epoch(dm, 1), epoch(dm, 2)]
        assert uninterrupted[1] != uninterrupted[0]  # reshuffled
        assert epoch(make(), 2) == uninterrupted[2]  # resumed at epoch 2: the same batches
