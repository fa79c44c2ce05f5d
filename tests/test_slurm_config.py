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


def _sweep(*args: str, data_dir=None, env=None) -> subprocess.CompletedProcess:
    env = {**os.environ, "ODELAB_PYTHON": sys.executable, **(env or {})}
    if data_dir is not None:
        env["ODELAB_DATA_DIR"] = str(data_dir)
    return subprocess.run(
        ["slurm/sweep.sh", *args], cwd=ROOT, capture_output=True, text=True, env=env
    )


def test_sweep_sh_dry_run_and_unknown_table(tiny_data):
    # the dry run now runs the preflight, which checks the data: give it data (issue 19)
    p = _sweep("--dry-run", "lm_resnet_sd_table", "trainer.max_epochs=1", data_dir=tiny_data)
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


def test_sweep_sh_dry_run_checks_every_job_and_refuses_a_swept_key(tiny_data, tmp_path):
    p = _sweep("--dry-run", "lm_resnet_sd_table", "seed=5", data_dir=tiny_data)
    assert p.returncode == 2 and "sweep " not in p.stdout  # nothing printed as submitted
    assert "nothing was submitted" in p.stderr
    assert "seed=5 (the table sets seed=0,1,2) would replace a key the table sets" in p.stderr
    p = _sweep("--dry-run", "lm_resnet_sd_table", "trainer.max_epochs=abc", data_dir=tiny_data)
    assert p.returncode == 2 and "jobs 0, 1, 2, 3, 4, 5: trainer.max_epochs='abc'" in p.stderr
    p = _sweep("--dry-run", "lm_resnet_sd_table", data_dir=tmp_path / "nothing")
    assert p.returncode == 2 and "CIFAR-100: 3 data file(s) not usable" in p.stderr
    assert f"{tmp_path / 'nothing'}/cifar10/cifar-10-batches-py/test_batch: missing" in p.stderr


def _fake(bin_dir, name: str, script: str) -> None:
    bin_dir.mkdir(exist_ok=True)
    path = bin_dir / name
    path.write_text("#!/usr/bin/env bash\n" + script)
    path.chmod(0o755)


def test_train_sbatch_checks_then_sizes_cpus_from_config_or_argument(tmp_path):
    """Run directly, train.sbatch runs the preflight, then submits itself with the job shape
    and --cpus-per-task from the argument, else hydra.launcher.cpus_per_task (no hard-coded 8
    that small nodes cannot give). A fake sbatch records the options it was given."""
    fake = tmp_path / "bin"
    _fake(fake, "sbatch", f'echo "$@" > {tmp_path}/sbatch_args\n')
    env = {**os.environ, "ODELAB_PYTHON": sys.executable, "PATH": f"{fake}:{os.environ['PATH']}"}
    env.pop("SLURM_JOB_ID", None)

    def submit(*args):
        return subprocess.run(["bash", "slurm/train.sbatch", *args], cwd=ROOT,
                              capture_output=True, text=True, env=env)  # fmt: skip

    run = ["experiment=lm_resnet_mnist", "trainer=cpu"]
    p = submit(*run)
    assert p.returncode == 0, p.stderr[-2000:]
    args = (tmp_path / "sbatch_args").read_text().split()
    assert "--cpus-per-task=8" in args and "--nodes=1" in args and "--ntasks-per-node=1" in args
    assert not any(a.startswith("--gpus-per-node") for a in args)
    p = submit("--cpus-per-task=2", *run)
    assert p.returncode == 0 and "--cpus-per-task=2" in (tmp_path / "sbatch_args").read_text()
    (tmp_path / "sbatch_args").unlink()
    p = submit(*run, "trainer.max_epochs=abc")
    assert p.returncode == 2 and "trainer.max_epochs='abc' is invalid" in p.stderr
    assert not (tmp_path / "sbatch_args").exists()  # nothing submitted
    assert "#SBATCH --cpus-per-task" not in (ROOT / "slurm" / "train.sbatch").read_text()


def test_auto_accelerator_asks_for_gpus_only_where_the_partition_has_them(tmp_path, monkeypatch):
    from odelab.utils.config import gpus_per_node
    from odelab.utils.slurm import cluster_gpus

    fake = tmp_path / "bin"
    monkeypatch.setenv("PATH", f"{fake}:{os.environ['PATH']}")
    _fake(fake, "sinfo", 'echo "debug*|(null)"; echo "gpu|gpu:a100:4(S:0-1),tmp:1"\n')
    cluster_gpus.cache_clear()
    try:
        assert gpus_per_node("auto", 1) is None  # the default partition: CPUs only
        assert gpus_per_node("auto", 2, "gpu") == 2 and cluster_gpus("gpu") == 4
        assert gpus_per_node("gpu", 1) == 1  # explicit: asked for (the preflight refuses it)
        cpu = launcher(["trainer.accelerator=auto"])
        assert cpu.gpus_per_node is None and cpu.tasks_per_node == 1
        cfg = compose_config(["hydra/launcher=slurm", "trainer=gpu"], return_hydra_config=True)
        from odelab.preflight import check_cluster, hydra_config

        with hydra_config(cfg):
            (problem,) = check_cluster(cfg)
        assert "asks SLURM for 1 GPU(s)" in problem and "add trainer=cpu" in problem
    finally:
        cluster_gpus.cache_clear()


def test_threads_follow_the_slurm_allocation(monkeypatch):
    import torch

    from odelab.utils.slurm import use_allocated_cpus

    n = torch.get_num_threads()
    monkeypatch.delenv("SLURM_JOB_ID", raising=False)
    assert use_allocated_cpus() is None
    monkeypatch.setenv("SLURM_JOB_ID", "12")
    monkeypatch.setenv("SLURM_CPUS_PER_TASK", "1")
    monkeypatch.setenv("OMP_NUM_THREADS", "4")  # the submitting shell's: the allocation wins
    try:
        assert use_allocated_cpus() == 1
        assert torch.get_num_threads() == 1 and os.environ["OMP_NUM_THREADS"] == "1"
    finally:
        torch.set_num_threads(n)
