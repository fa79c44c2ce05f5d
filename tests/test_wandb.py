"""odelab.utils.wandb: W&B start, offline fallback and finish never turn a run into a crash or a
wall of tracebacks."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import ROOT


def _descendants(pid: int) -> list[int]:
    """Every process below ``pid`` (the W&B service and its monitor), from /proc."""
    parents: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        parents.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    out, todo = [], [pid]
    while todo:
        kids = parents.get(todo.pop(), [])
        out += kids
        todo += kids
    return out


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs Linux /proc")
def test_sigterm_of_a_run_and_its_wandb_service_prints_one_line(tmp_path):
    """SLURM's SIGTERM reaches every process of the job, the W&B service included: the run saves
    its checkpoint and W&B says so in one warning line, not an atexit traceback of the lost
    connection."""
    out = tmp_path / "run"
    # its own W&B service, as a job has (an in-process W&B run of an earlier test leaves
    # WANDB_SERVICE in this environment, which would make the run reuse that test's service)
    env = {k: v for k, v in os.environ.items() if k != "WANDB_SERVICE"}
    env.update(WANDB_MODE="offline", PYTHONPATH=str(ROOT / "src"))
    args = ["experiment=lm_resnet_mnist", "logger=wandb", "data.train_subset=256",
            "data.test_subset=64", "data.val_size=32", "data.batch_size=32",
            "model.net.depth=8", "model.net.widths=[4,4,4]", "trainer.max_epochs=1000",
            "trainer.accelerator=cpu", f"hydra.run.dir={out}"]  # fmt: skip
    with open(tmp_path / "out.txt", "w") as log:
        p = subprocess.Popen([sys.executable, "run.py", *args], cwd=ROOT, env=env, stdout=log,
                             stderr=subprocess.STDOUT)  # fmt: skip
        try:
            deadline = time.monotonic() + 240
            while not list((out / "checkpoints").glob("*.ckpt")):  # training is under way
                assert p.poll() is None, (tmp_path / "out.txt").read_text()[-3000:]
                assert time.monotonic() < deadline, "no checkpoint within 240 s"
                time.sleep(0.5)
            service = _descendants(p.pid)
            assert service, "no W&B service process below the run"
            for pid in [p.pid, *service]:
                os.kill(pid, signal.SIGTERM)
            p.wait(timeout=120)
        finally:
            if p.poll() is None:
                p.kill()
    text = (tmp_path / "out.txt").read_text()
    assert "SIGTERM: saved" in text, text[-3000:]
    assert "Traceback" not in text and "Exception ignored" not in text, text[-3000:]
    wandb_lines = [line for line in text.splitlines() if "W&B could not finish" in line]
    assert len(wandb_lines) == 1, text[-3000:]
