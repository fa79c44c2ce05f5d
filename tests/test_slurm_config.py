"""The SLURM launcher config, the sweep tables and the sbatch template, without a cluster (the
runs themselves: tests/test_slurm.py, marked ``slurm``)."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest
import yaml

from conftest import CONF, ROOT
from odelab.utils.config import compose_config
from odelab.utils.slurm import SWEEPS_DIR, job_shape, load_sweep, sweep_file

TABLES = sorted(p.stem for p in SWEEPS_DIR.glob("*.yaml"))


def launcher(overrides: list[str]):
    cfg = compose_config(["hydra/launcher=slurm", *overrides], return_hydra_config=True)
    return cfg.hydra.launcher


def test_slurm_launcher_ties_tasks_and_gpus_to_the_trainer():
    cpu = launcher(["trainer=ddp_cpu"])
    assert cpu._target_.endswith("SlurmLauncher")
    assert (cpu.tasks_per_node, cpu.nodes, cpu.gpus_per_node) == (2, 1, None)
    gpu = launcher(["trainer=ddp", "trainer.devices=8", "trainer.num_nodes=2"])
    assert (gpu.tasks_per_node, gpu.nodes, gpu.gpus_per_node) == (8, 2, 8)
    assert gpu.max_num_timeout > 0 and gpu.signal_delay_s > 0  # requeue on time limit
    assert job_shape(["trainer=ddp", "trainer.devices=4", "trainer.num_nodes=2"]) == (
        2,
        4,
        4,
        "lm_resnet_mnist",
    )


@pytest.mark.skipif(
    (CONF / "local" / "slurm.yaml").exists(),
    reason="this checkout has its own conf/local/slurm.yaml",
)
def test_cluster_values_come_from_the_local_file(tmp_path):
    """conf/local/slurm.yaml (git-ignored) overrides the launcher; the committed example is a
    valid such file. Found here through a search path, as it would be in conf/local/."""
    assert (CONF / "local" / "slurm.example.yaml").is_file()
    (tmp_path / "local").mkdir()
    example = yaml.safe_load((CONF / "local" / "slurm.example.yaml").read_text())
    (tmp_path / "local" / "slurm.yaml").write_text(yaml.safe_dump(example))
    got = launcher(["trainer=gpu", f"hydra.searchpath=[file://{tmp_path}]"])
    assert got.partition == example["partition"] and got.mem_gb == example["mem_gb"]
    assert got.tasks_per_node == 1 and got.gpus_per_node == 1  # still tied to the trainer
    ignored = subprocess.run(
        ["git", "check-ignore", "-q", "conf/local/slurm.yaml"], cwd=ROOT, check=False
    )
    assert ignored.returncode == 0, "conf/local/slurm.yaml must be git-ignored"


@pytest.mark.parametrize("table", TABLES)
def test_sweep_tables_name_existing_experiments_and_compose(table):
    sweep = load_sweep(table)
    experiments = {p.stem for p in (CONF / "experiment").glob("*.yaml")}
    assert (ROOT / "experiments" / sweep["paper"]).is_dir(), sweep["paper"]
    for run in sweep["runs"]:
        overrides = run.split()
        named = [o.split("=", 1)[1].split(",") for o in overrides if o.startswith("experiment=")]
        assert named and set(named[0]) <= experiments, set(named[0]) - experiments
        first = [o.split(",")[0] if "," in o and "[" not in o else o for o in overrides]
        cfg = compose_config(["hydra/launcher=slurm", *first], return_hydra_config=True)
        assert cfg.paper == sweep["paper"]
        assert cfg.hydra.launcher.tasks_per_node == cfg.trainer.devices


def test_sweep_sh_dry_run_and_unknown_table():
    p = subprocess.run(
        ["slurm/sweep.sh", "--dry-run", "lm_resnet_sd_table", "trainer.max_epochs=1"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env={**os.environ, "ODELAB_PYTHON": sys.executable},
    )
    assert p.returncode == 0, p.stderr
    cmds = [line for line in p.stdout.splitlines() if line.startswith("sweep ")]
    assert len(cmds) == len(load_sweep("lm_resnet_sd_table")["runs"]) == 2
    assert all("-m hydra/launcher=slurm" in c and c.endswith("trainer.max_epochs=1") for c in cmds)
    with pytest.raises(ValueError, match="no sweep 'nope'.*lm_resnet_cifar10_table"):
        sweep_file("nope")


def test_train_sbatch_refuses_an_allocation_of_the_wrong_shape(tmp_path):
    """Inside a job sized for 1 task, a run that needs 2 (trainer=ddp_cpu) stops with the
    sbatch options that fit (no cluster needed: the SLURM variables are set by hand)."""
    env = {
        **os.environ,
        "ODELAB_PYTHON": sys.executable,
        "SLURM_JOB_ID": "77",
        "SLURM_NTASKS": "1",
        "SLURM_JOB_NUM_NODES": "1",
    }
    p = subprocess.run(
        ["bash", "slurm/train.sbatch", "experiment=lm_resnet_mnist", "trainer=ddp_cpu"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env=env,
    )
    assert p.returncode == 2
    assert re.search(r"sbatch --nodes=1 --ntasks-per-node=2 slurm/train.sbatch", p.stderr)


def test_sbatch_template_survives_the_cluster():
    text = (ROOT / "slurm" / "train.sbatch").read_text()
    for directive in ("--signal=USR1@90", "--requeue", "--open-mode=append"):
        assert f"#SBATCH {directive}" in text
    assert "srun" in text and "hydra.run.dir=" in text


def _readme_commands() -> list[list[str]]:
    """Overrides of each ``python run.py`` / ``slurm/train.sbatch`` line in slurm/README.md."""
    cmds, in_code = [], False
    for line in (ROOT / "slurm" / "README.md").read_text().splitlines():
        if line.startswith("```"):
            in_code = not in_code
        elif in_code and line.startswith(("python run.py", "slurm/train.sbatch")):
            args = line.split("#")[0].split()
            cmds.append([a for a in args[1:] if a not in ("run.py", "-m")])
    return cmds


@pytest.mark.parametrize("overrides", _readme_commands(), ids=lambda o: " ".join(o)[:60])
def test_slurm_readme_commands_compose(overrides):
    first = [o.split(",")[0] if "," in o and "[" not in o else o for o in overrides]
    cfg = compose_config(first, return_hydra_config=True)
    if "hydra/launcher=slurm" in overrides:
        assert cfg.hydra.launcher.tasks_per_node == cfg.trainer.devices


def test_slurm_scripts_parse_and_print_usage():
    for script in ("local_cluster.sh", "sweep.sh", "train.sbatch"):
        assert subprocess.run(["bash", "-n", f"slurm/{script}"], cwd=ROOT).returncode == 0
    p = subprocess.run(["slurm/local_cluster.sh"], cwd=ROOT, capture_output=True, text=True)
    assert p.returncode == 2 and "start|stop|status" in p.stderr
