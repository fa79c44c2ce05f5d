"""What a run prints: every log line once (Lightning's console handler and Hydra's both see
Lightning's records), and no FLOPs column or total that Lightning did not count."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import torch
from test_train import TINY

from conftest import ROOT


def test_default_job_prints_each_line_once_and_no_zero_flops(tmp_path):
    env = {**os.environ, "WANDB_MODE": "offline", "PYTHONPATH": str(ROOT / "src")}
    p = subprocess.run(
        [sys.executable, "run.py", *TINY, "trainer.max_epochs=1", f"hydra.run.dir={tmp_path}"],
        cwd=ROOT, capture_output=True, text=True, timeout=300, env=env,
    )  # fmt: skip
    assert p.returncode == 0, p.stderr[-3000:]
    out = p.stdout + p.stderr
    # the message of every log line, in either format ("INFO: m", "[..][..][INFO] - m")
    messages = [
        m.group(1)
        for line in out.splitlines()
        if (m := re.match(r"^(?:\[[^]]*\]\[[^]]*\]\[[A-Z]+\] - |[A-Z]+: )(.*)$", line))
    ]
    assert any("Seed set to 0" in m for m in messages), out[-3000:]
    twice = sorted({m for m in messages if messages.count(m) > 1})
    assert not twice, twice
    assert "FLOPs" not in out and "Params: " in out, out[-3000:]
    log = (tmp_path / "run.log").read_text()  # the file keeps Lightning's lines, once
    assert log.count("Seed set to 0") == 1 and "odelab.train" in log


def test_model_summary_shows_flops_when_counted(capsys):
    """With an ``example_input_array`` Lightning counts FLOPs: then the summary shows them."""
    import lightning.pytorch as pl

    from odelab.callbacks import ModelSummary

    class Net(pl.LightningModule):
        def __init__(self):
            super().__init__()
            self.lin = torch.nn.Linear(4, 3, bias=False)
            self.example_input_array = torch.zeros(2, 4)

        def forward(self, x):
            return self.lin(x)

    trainer = pl.Trainer(logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, max_steps=0)  # fmt: skip
    trainer.strategy.connect(Net())
    ModelSummary().on_fit_start(trainer, trainer.lightning_module)
    out = capsys.readouterr().out
    assert "Total FLOPs" in out and "FLOPs" in out.splitlines()[1]  # 2 x 4 x 3 MACs = 48 FLOPs
    assert "48" in out
