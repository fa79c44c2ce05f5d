"""The campaign runner (odelab.campaign) on CPU: plan validation, the schedule, concurrent
starts by GPU share, the budget's SIGTERM, packing what comes back, carrying checkpoints to a
fresh machine, and a real run cut by the budget and finished by the next call."""

from __future__ import annotations

import json
import tarfile
import threading
import time
from pathlib import Path

import pytest
import yaml
from test_train import TINY

from conftest import ROOT
from odelab import campaign as C
from odelab.report import local_runs

CIFAR = "cifar10/cifar-10-batches-py"


def write_plan(path: Path, runs: list[dict], **top) -> Path:
    path.write_text(yaml.safe_dump({"name": path.stem, **top, "runs": runs}, sort_keys=False))
    return path


# -- the plan -----------------------------------------------------------------------------------
def test_a_bad_plan_lists_every_problem_at_once(tmp_path):
    plan = write_plan(tmp_path / "bad.yaml", [
        {"id": "a", "experiment": "lm_resnet20_cifar10", "gpu_share": 1.5},
        {"id": "a", "command": "true"},
        {"id": "b", "experiment": "x", "command": "true"},
        {"id": "c", "experiment": "lm_resnet20_cifar10", "prio": 1},
        {"id": "d e", "command": "true", "expected_min": "five"},
        {"id": "f", "command": "true", "partial": 1},
    ])  # fmt: skip
    with pytest.raises(C.PlanError) as err:
        C.load_plan(plan)
    msg = str(err.value)
    for needle in ("gpu_share=1.5 must be in (0, 1]", "id 'a' is used twice",
                   "exactly one of 'experiment' or 'command'", "unknown key 'prio'",
                   "letters, digits", "'expected_min' must be int or float, got 'five'",
                   "'partial' must be bool, got 1"):  # fmt: skip
        assert needle in msg, needle
    with pytest.raises(C.PlanError, match="experiments/campaign"):
        C.load_plan(tmp_path / "nowhere.yaml")


def test_check_composes_every_entry_and_finds_missing_data_before_any_run(tmp_path):
    plan = C.load_plan(write_plan(tmp_path / "p.yaml", [
        {"id": "ok", "experiment": "lm_resnet20_cifar10", "needs": [CIFAR]},
        {"id": "typo", "experiment": "lm_resnet20_cifar"},
        {"id": "bad-key", "experiment": "resnet20_cifar10", "overrides": ["model.nett.depth=3"]},
    ]))  # fmt: skip
    with pytest.raises(C.PlanError) as err:
        C.check_plan(plan, tmp_path / "data")
    msg = str(err.value)
    assert "typo: unknown experiment 'lm_resnet20_cifar'; closest: lm_resnet20_cifar10" in msg
    assert "bad-key: the overrides do not compose" in msg and "nett" in msg
    assert f"ok: data missing under {tmp_path / 'data'}: {CIFAR}" in msg
    (tmp_path / "data" / "cifar10" / "cifar-10-batches-py").mkdir(parents=True)
    (tmp_path / "data" / "cifar10" / "cifar-10-batches-py" / "test_batch").write_bytes(b"x")
    assert C.check_plan(plan, tmp_path / "data", plan.entries[:1]) == {"ok": "lm_resnet"}
    # the CLI refuses to start anything while a selected entry lacks its data
    rc = C.main(["run", str(plan.path), "--only", "ok", "typo",
                 "--data-dir", str(tmp_path / "nothing"),
                 "--runs-dir", str(tmp_path / "runs")])  # fmt: skip
    assert rc == 2 and not (tmp_path / "runs").exists()


def test_the_repository_plans_are_valid_and_compose():
    plans = sorted((ROOT / "experiments" / "campaign").glob("*.yaml"))
    assert plans
    for path in plans:
        plan = C.load_plan(path)
        papers = C.check_plan(plan, Path("/nonexistent"), [e for e in plan.entries if not e.needs])
        with (
            pytest.raises(C.PlanError, match="data missing")
            if any(e.needs for e in plan.entries)
            else _nothing()
        ):
            C.check_plan(plan, Path("/nonexistent"))
        assert all(p for p in papers.values())


class _nothing:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def test_simulated_schedule_packs_shares_in_priority_order():
    e = lambda i, share, minutes, prio: C.Entry(id=i, command="true", gpu_share=share,  # noqa: E731
                                                expected_min=minutes, priority=prio)  # fmt: skip
    entries = [e("a", 0.5, 6, 1), e("b", 0.5, 4, 1), e("c", 1.0, 3, 2), e("d", 0.5, 2, 3)]
    plan = C.Plan(name="x", path=Path("x.yaml"), entries=entries)
    sim = C.simulate(plan, 9.0, plan.ordered())
    # a and b share the GPU from 0; c needs all of it: after a ends at 6; d after c at 9 (none)
    assert sim == {"a": (0, 6), "b": (0, 4), "c": (6, 9)}  # d: the budget is used at 9


# -- the runner with commands (fast) -----------------------------------------------------------
def test_runner_shares_the_gpu_waits_for_room_and_stops_at_the_budget(tmp_path):
    marker = "date +%s.%N > {run_dir}/t_start; sleep 1; date +%s.%N > {run_dir}/t_end"
    runs = [
        {"id": "half1", "command": marker, "gpu_share": 0.5, "priority": 1},
        {"id": "half2", "command": marker, "gpu_share": 0.5, "priority": 1},
        {"id": "whole", "command": marker, "gpu_share": 1.0, "priority": 2},
        {"id": "endless", "command": "trap 'echo got-term; exit 143' TERM; sleep 600 & wait",
         "gpu_share": 1.0, "priority": 3, "expected_min": 60},
        {"id": "never", "command": "true", "priority": 4},
        {"id": "flaky", "priority": 0, "gpu_share": 0.25, "retry_overrides": ["x=1"],
         "command": "test -f {run_dir}/tried || (touch {run_dir}/tried; exit 1)"},
    ]  # fmt: skip
    plan = C.load_plan(write_plan(tmp_path / "cmds.yaml", runs, min_start_min=0.01))
    runner = C.Runner(plan, tmp_path / "runs", tmp_path / "data", budget_min=1.0, grace_s=5,
                      poll_s=0.2)  # fmt: skip
    runner.reserve_s = 0
    t0 = time.monotonic()
    thread = threading.Thread(target=runner.run, args=(plan.ordered(),))
    thread.start()
    endless = tmp_path / "runs" / "endless.out"
    while not endless.is_file() and time.monotonic() - t0 < 30:
        time.sleep(0.2)
    runner.budget_s = runner.elapsed() + 1.0 + runner.grace_s  # the budget ends in a second
    thread.join(60)
    assert not thread.is_alive()
    t = {r: [float((tmp_path / "runs" / r / f).read_text()) for f in ("t_start", "t_end")]
         for r in ("half1", "half2", "whole")}  # fmt: skip
    assert abs(t["half1"][0] - t["half2"][0]) < 0.9  # started together: shares 0.5 + 0.5
    assert t["whole"][0] >= max(t["half1"][1], t["half2"][1])  # waited for the whole GPU
    assert "got-term" in endless.read_text()
    events = [(ev["id"], ev["event"]) for ev in runner.events]
    assert ("endless", "budget reached: SIGTERM") in events
    assert ("never", "not started: budget used") in events
    # a failed entry with retry_overrides is queued once more (e.g. without compile)
    assert [ev["rc"] for ev in runner.events if ev["id"] == "flaky" and ev["event"] == "end"] == [
        1, 0]  # fmt: skip
    assert ("flaky", "failed: queued again") in events
    assert all((tmp_path / "runs" / r / "command.done").is_file() for r in t)
    assert not (tmp_path / "runs" / "endless" / "command.done").exists()


# -- packing, carrying checkpoints, keeping records --------------------------------------------
def _fake_run(run_dir: Path, status: str, ckpt: bytes | None, paper: str = "lm_resnet") -> None:
    run_dir.mkdir(parents=True)
    rec = {"experiment": "lm_resnet_mnist", "paper": paper, "seed": 0, "status": status,
           "metrics": {"test/acc": 0.5}, "config": {}, "epochs": 1}  # fmt: skip
    (run_dir / "results.json").write_text(json.dumps(rec))
    (run_dir / "time_curve.json").write_text("[]")
    if ckpt is not None:
        (run_dir / "checkpoints").mkdir()
        (run_dir / "checkpoints" / "last.ckpt").write_bytes(ckpt)


def test_pack_splits_checkpoints_into_parts_and_restore_puts_them_back(tmp_path, monkeypatch):
    runs = tmp_path / "runs"
    big = bytes(range(256)) * 4000  # ~1 MB
    _fake_run(runs / "done", "finished", b"never-packed")
    _fake_run(runs / "cut", "interrupted", big)
    plan = C.Plan(name="p", path=Path("p.yaml"), entries=[
        C.Entry(id="done", experiment="x", keep=["time_curve.json"]),
        C.Entry(id="cut", experiment="x"),
    ])  # fmt: skip
    monkeypatch.setattr(C, "OUT_FILE_MAX", 400_000)
    files = C.pack(plan, [], runs, tmp_path / "out", {"done": "lm_resnet", "cut": "lm_resnet"})
    names = sorted(f.name for f in files)
    assert names == ["records.tar.gz", "resume.tar.part00", "resume.tar.part01",
                     "resume.tar.part02", "summary.json"]  # fmt: skip
    assert all(f.stat().st_size <= 400_000 for f in files)
    with tarfile.open(tmp_path / "out" / "records.tar.gz") as tar:
        got = sorted(tar.getnames())
    assert got == ["cut/results.json", "done/results.json", "done/time_curve.json"]
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["runs"]["cut"]["status"] == "interrupted"
    # a fresh machine: the checkpoint comes back byte for byte; a newer local one is kept
    fresh = tmp_path / "fresh"
    assert C.restore(tmp_path / "out", fresh) == ["cut/checkpoints/last.ckpt"]
    assert (fresh / "cut" / "checkpoints" / "last.ckpt").read_bytes() == big
    newer = fresh / "cut" / "checkpoints" / "last.ckpt"
    newer.write_bytes(b"newer")
    assert C.restore(tmp_path / "out", fresh) == [] and newer.read_bytes() == b"newer"
    # keep: records land where the report looks; a second keep keeps the first as superseded
    exp = tmp_path / "experiments"
    kept = C.keep(tmp_path / "out", exp)
    assert sorted(p.relative_to(exp).as_posix() for p in kept) == [
        "lm_resnet/runs/gpu/p/cut/results.json",
        "lm_resnet/runs/gpu/p/done/results.json"]  # fmt: skip
    assert (exp / "lm_resnet/runs/gpu/p/done/time_curve.json").is_file()
    C.keep(tmp_path / "out", exp)
    assert len(list((exp / "lm_resnet/runs/gpu/p/done").glob("results.*.json"))) == 1
    assert {r.status for r in local_runs(exp / "lm_resnet" / "runs")} == {
        "finished",
        "interrupted",
    }


def test_prepare_packs_data_in_parts_and_unpack_restores_it(tmp_path, monkeypatch):
    data = tmp_path / "data"
    (data / "set" / "sub").mkdir(parents=True)
    rng = __import__("random").Random(0)
    blobs = {f"set/f{i}.bin": bytes(rng.getrandbits(8) for _ in range(30_000)) for i in range(3)}
    blobs["set/sub/small.txt"] = b"hello" * 100
    for rel, b in blobs.items():
        (data / rel).write_bytes(b)
    plan = C.Plan(name="p", path=Path("p.yaml"),
                  entries=[C.Entry(id="a", command="true", needs=["set"])])  # fmt: skip
    monkeypatch.setattr(C, "PART_MAX", 70_000)  # random bytes do not compress: 2 files a part
    m = C.prepare(plan, data, tmp_path / ".device" / "p", wheels=False)
    assert m["parts"] == ["part01", "part02"] and set(m["files"]) == set(blobs)
    dest = tmp_path / "device-data"
    # part 2 not carried yet: only part 1's files arrive
    part2 = tmp_path / ".device" / "p" / "part02"
    part2.rename(tmp_path / "later")
    first = C.unpack(tmp_path / ".device", dest)
    assert first and all(m["files"][r]["part"] == "part01" for r in first)
    (tmp_path / "later").rename(part2)
    second = C.unpack(tmp_path / ".device", dest)
    assert sorted(first + second) == sorted(blobs)
    assert all((dest / r).read_bytes() == b for r, b in blobs.items())
    assert C.unpack(tmp_path / ".device", dest) == []  # idempotent
    (part2 / "set" / "sub" / "small.txt.xz").write_bytes(__import__("lzma").compress(b"tampered"))
    (dest / "set" / "sub" / "small.txt").unlink()
    with pytest.raises(ValueError, match="md5"):
        C.unpack(tmp_path / ".device", dest)


# -- a real run.py run: cut by the budget on one "machine", finished on another ------------------
def test_a_run_cut_by_the_budget_continues_on_a_fresh_machine(tmp_path):
    """Call 1 stops the run once it has checkpoints (the budget), packs its record and its
    checkpoint; call 2 starts from an empty runs dir with the returned files, resumes from the
    checkpoint and finishes; keep puts the finished record where the report reads it."""
    tiny = [o for o in TINY if not o.startswith(("experiment=", "trainer.max_epochs"))]
    plan_path = write_plan(tmp_path / "cpu.yaml", [
        {"id": "mnist-cut", "experiment": "lm_resnet_mnist",
         "overrides": [*tiny, "trainer.max_epochs=6"], "expected_min": 1.0},
    ], overrides=["logger=csv"])  # fmt: skip
    plan = C.load_plan(plan_path)
    runs1 = tmp_path / "machine1"
    runner = C.Runner(plan, runs1, tmp_path / "data", budget_min=20, grace_s=60, poll_s=0.5)
    runner.reserve_s = 0
    thread = threading.Thread(target=runner.run, args=(plan.entries,))
    thread.start()
    last = runs1 / "mnist-cut" / "checkpoints" / "last.ckpt"
    t0 = time.monotonic()
    while not last.is_file() and time.monotonic() - t0 < 240:
        time.sleep(0.2)
    assert last.is_file(), (runs1 / "mnist-cut.out").read_text()[-3000:]
    runner.budget_s = runner.elapsed() + runner.grace_s  # the budget ends now
    thread.join(120)
    first = C.read_status(runs1 / "mnist-cut")
    assert first["status"] in ("interrupted", "failed") and first["epochs"] < 6, first
    out1 = tmp_path / "out1"
    files = C.pack(plan, runner.events, runs1, out1, {"mnist-cut": "lm_resnet"})
    assert any(f.name == "resume.tar" for f in files)

    out2, runs2 = tmp_path / "out2", tmp_path / "machine2"
    rc = C.main(["run", str(plan_path), "--runs-dir", str(runs2), "--out", str(out2),
                 "--resume-from", str(out1), "--data-dir", str(tmp_path / "data")])  # fmt: skip
    assert rc == 0
    log = (runs2 / "mnist-cut" / "run.log").read_text()
    assert "auto_resume: resuming from" in log
    done = C.read_status(runs2 / "mnist-cut")
    assert done["status"] == "finished" and done["epochs"] == 6
    assert sorted(f.name for f in out2.iterdir()) == ["campaign.log", "records.tar.gz",
                                                      "summary.json"]  # fmt: skip
    kept = C.keep(out2, tmp_path / "experiments")
    (run,) = local_runs(tmp_path / "experiments" / "lm_resnet" / "runs")
    assert run.status == "finished" and kept[0].parent.name == "mnist-cut"


def test_every_campaign_command_in_the_docs_parses():
    """``python -m odelab.campaign ...`` lines of the READMEs and the device script: valid
    command lines naming plans that exist."""
    docs = [ROOT / "README.md", ROOT / "benchmarks" / "README.md",
            *sorted((ROOT / "experiments").glob("*/README.md"))]  # fmt: skip
    lines = []
    for doc in docs:
        for line in doc.read_text().splitlines():
            line = line.strip().split("#")[0]
            if line.startswith(
                ("python -m odelab.campaign", ".venv/bin/python -m odelab.campaign")
            ):
                words = line[line.index("-m odelab.campaign") :].split()[2:]
                lines.append([w.strip("`") for w in words if w.strip("`")])
    assert len(lines) >= 4
    parser = C.build_parser()
    for words in lines:
        args = parser.parse_args(words)
        if getattr(args, "plan", None):
            assert (ROOT / args.plan).is_file(), words
