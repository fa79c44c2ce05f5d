"""A campaign: a plan of runs executed on one (lent) GPU within a wall budget.

A plan (``experiments/campaign/<name>.yaml``) lists entries; each is one ordinary ``run.py`` run
(``experiment`` + ``overrides``: same results.json, same resume) or a benchmark ``command``.
The runner starts entries in priority order while their ``gpu_share`` fits (several small runs
share the GPU), stops the ones still running at the budget with SIGTERM (the run saves a
checkpoint and says ``interrupted``/``failed`` in its results.json) and packs what the report
needs (results.json + the small files the plots read, never checkpoints) into a few files
under ``--out``; checkpoints of unfinished runs go apart so that a later call, even on a new
machine, continues them. Back here, ``keep`` puts the records under
``experiments/<paper>/runs/gpu/<plan>/<id>/`` where ``python -m odelab.report`` finds them.

    python -m odelab.campaign check PLAN                 # validate, compose, find the data
    python -m odelab.campaign run PLAN --out DIR [--budget-min M] [--dry-run]
    python -m odelab.campaign prepare PLAN --data-dir ../shared/data   # .device/<plan>: parts
    python -m odelab.campaign unpack .device             # on the GPU machine: parts -> data/
    python -m odelab.campaign keep DIR                   # the returned records -> experiments/

``experiments/campaign/README.md`` has the device recipe.
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import hashlib
import io
import json
import logging
import lzma
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import time
from contextlib import suppress
from pathlib import Path
from typing import Any

import yaml

from odelab.utils.config import CONFIG_DIR, REPO_ROOT

log = logging.getLogger("odelab.campaign")

ENTRY_KEYS = {
    "id": str,
    "experiment": str,
    "command": str,
    "overrides": list,
    "priority": (int, float),
    "expected_min": (int, float),
    "gpu_share": (int, float),
    "needs": list,
    "keep": list,
    "partial": bool,
    "retry_overrides": list,
    "note": str,
}
PLAN_KEYS = {"name", "description", "budget_min", "overrides", "runs", "min_start_min"}
OUT_FILES = 8  # what comes back from a device call: at most 8 files ...
OUT_FILE_MAX = 16 * 2**20  # ... of 16 MiB each
PACK_RESERVE_S = 20.0  # budget kept for packing the records


class PlanError(ValueError):
    """A plan that cannot run: every problem in one message, each naming the fix."""


@dataclasses.dataclass
class Entry:
    id: str
    experiment: str | None = None
    command: str | None = None
    overrides: list[str] = dataclasses.field(default_factory=list)
    priority: float = 50.0
    expected_min: float = 1.0
    gpu_share: float = 1.0
    needs: list[str] = dataclasses.field(default_factory=list)
    keep: list[str] = dataclasses.field(default_factory=list)
    partial: bool = False
    retry_overrides: list[str] = dataclasses.field(default_factory=list)
    note: str = ""


@dataclasses.dataclass
class Plan:
    name: str
    path: Path
    entries: list[Entry]
    budget_min: float = 9.0
    overrides: list[str] = dataclasses.field(default_factory=list)
    min_start_min: float = 1.0
    description: str = ""

    def ordered(self) -> list[Entry]:
        """Entries by priority (lower first), file order among equals."""
        return sorted(self.entries, key=lambda e: e.priority)


# -- plan -------------------------------------------------------------------------------------
def experiments() -> list[str]:
    return sorted(p.stem for p in (CONFIG_DIR / "experiment").glob("*.yaml"))


def load_plan(path: str | os.PathLike) -> Plan:
    """Read and validate a plan file (schema only: :func:`check_plan` composes and looks for
    the data)."""
    path = Path(path)
    if not path.is_file():
        known = sorted(p.name for p in (REPO_ROOT / "experiments" / "campaign").glob("*.yaml"))
        raise PlanError(f"no plan file {path}; plans in experiments/campaign: {known}")
    raw = yaml.safe_load(path.read_text()) or {}
    problems = []
    if not isinstance(raw, dict) or not isinstance(raw.get("runs"), list) or not raw["runs"]:
        raise PlanError(f"{path}: a plan is a mapping with a non-empty 'runs' list")
    for k in sorted(set(raw) - PLAN_KEYS):
        problems.append(f"unknown plan key '{k}' (known: {sorted(PLAN_KEYS)})")
    entries, seen = [], set()
    for i, r in enumerate(raw["runs"]):
        where = f"runs[{i}]" + (f" ({r.get('id')})" if isinstance(r, dict) and "id" in r else "")
        before = len(problems)
        problems += _entry_problems(where, r, seen)
        if len(problems) == before:
            entries.append(Entry(**r))
    if problems:
        raise PlanError(f"{path}: " + "; ".join(problems))
    return Plan(
        name=str(raw.get("name") or path.stem),
        path=path,
        entries=entries,
        budget_min=float(raw.get("budget_min", 9.0)),
        overrides=list(raw.get("overrides") or []),
        min_start_min=float(raw.get("min_start_min", 1.0)),
        description=str(raw.get("description", "")),
    )


def _entry_problems(where: str, r: Any, seen: set) -> list[str]:
    """What is wrong with one plan entry (empty: nothing)."""
    if not isinstance(r, dict):
        return [f"{where}: each run is a mapping"]
    problems = []
    for k, v in r.items():
        want = ENTRY_KEYS.get(k)
        if want is None:
            problems.append(f"{where}: unknown key '{k}' (known: {sorted(ENTRY_KEYS)})")
        elif not isinstance(v, want) or (isinstance(v, bool) and want is not bool):
            problems.append(f"{where}: '{k}' must be {_type_name(want)}, got {v!r}")
    rid = r.get("id")
    if not rid:
        problems.append(f"{where}: 'id' is required (the run dir and record name)")
    elif not all(c.isalnum() or c in "._-" for c in str(rid)):
        problems.append(f"{where}: id may hold letters, digits, '.', '_' and '-' only")
    elif rid in seen:
        problems.append(f"{where}: id '{rid}' is used twice")
    seen.add(rid)
    if bool(r.get("experiment")) == bool(r.get("command")):
        problems.append(f"{where}: give exactly one of 'experiment' or 'command'")
    share, minutes = r.get("gpu_share", 1.0), r.get("expected_min", 1.0)
    if isinstance(share, int | float) and not 0 < share <= 1:
        problems.append(f"{where}: gpu_share={share} must be in (0, 1]")
    if isinstance(minutes, int | float) and minutes <= 0:
        problems.append(f"{where}: expected_min must be > 0 (GPU minutes, alone)")
    return problems


def _type_name(t) -> str:
    return " or ".join(x.__name__ for x in t) if isinstance(t, tuple) else t.__name__


def run_overrides(
    plan: Plan, entry: Entry, data_dir: Path, run_dir: Path | None = None
) -> list[str]:
    """The Hydra overrides of one entry's run: the plan's common ones, the entry's, then where
    it runs (the data dir and, for ``run.py``, the run dir: run-local, the report ignores them);
    without ``run_dir`` what the compose API takes."""
    where = [f"hydra.run.dir={run_dir}"] if run_dir is not None else []
    return [f"experiment={entry.experiment}", *plan.overrides, *entry.overrides,
            f"paths.data_dir={data_dir}", *where]  # fmt: skip


def check_plan(plan: Plan, data_dir: Path, entries: list[Entry] | None = None) -> dict[str, str]:
    """Compose every experiment entry as ``run.py`` would and look for the data it needs;
    returns ``{id: paper}``; raises :class:`PlanError` listing every problem."""
    from odelab.utils.config import compose_config

    problems, papers = [], {}
    names = experiments()
    for e in entries if entries is not None else plan.entries:
        if e.experiment is not None:
            if e.experiment not in names:
                close = difflib.get_close_matches(e.experiment, names, n=3, cutoff=0.5)
                hint = f"; closest: {', '.join(close)}" if close else ""
                problems.append(f"{e.id}: unknown experiment '{e.experiment}'{hint}")
                continue
            try:
                cfg = compose_config(run_overrides(plan, e, data_dir))
                papers[e.id] = str(cfg.paper)
            except Exception as err:  # Hydra's message names the bad override
                problems.append(f"{e.id}: the overrides do not compose: {err}")
        missing = [n for n in e.needs if not _present(data_dir / n)]
        if missing:
            problems.append(
                f"{e.id}: data missing under {data_dir}: {', '.join(missing)} (copy it there, "
                "or on a GPU machine carry the .device parts: experiments/campaign/README.md)"
            )
    if problems:
        raise PlanError("the plan cannot run:\n  " + "\n  ".join(problems))
    return papers


def _present(path: Path) -> bool:
    return path.is_file() and path.stat().st_size > 0 or path.is_dir() and any(path.iterdir())


# -- run state ----------------------------------------------------------------------------------
def read_status(run_dir: Path) -> dict[str, Any]:
    """What a run dir holds: ``status`` (finished | interrupted | failed | fit_done | done |
    new) with epochs, step and the newest checkpoint."""
    res = run_dir / "results.json"
    info: dict[str, Any] = {"status": "new"}
    if res.is_file():
        try:
            data = json.loads(res.read_text())
            info.update(
                status=data.get("status"),
                paper=data.get("paper"),
                epochs=data.get("epochs"),
                global_step=data.get("global_step"),
                metrics=data.get("metrics", {}),
            )
        except (OSError, ValueError):
            info["status"] = "unreadable"
    elif (run_dir / "command.done").is_file():
        info["status"] = "done"
    from odelab.utils.checkpoint import resume_candidates

    newest = resume_candidates(run_dir)
    if newest:
        info["checkpoint"] = str(newest[0])
    return info


def is_done(info: dict[str, Any]) -> bool:
    return info["status"] in ("finished", "done")


def simulate(plan: Plan, budget_min: float, runnable: list[Entry]) -> dict[str, tuple]:
    """Expected ``(start, end)`` minutes of each runnable entry under the runner's rule (priority
    order, start while shares fit) from the plans' ``expected_min``; ``end`` past the budget
    means the run is cut there and continues in a later call."""
    t, free, running, out = 0.0, 1.0, [], {}
    queue = list(runnable)
    while queue or running:
        while queue and queue[0].gpu_share <= free + 1e-9 and t < budget_min:
            e = queue.pop(0)
            running.append((t + e.expected_min, e))
            free -= e.gpu_share
            out[e.id] = (t, t + e.expected_min)
        if not running:
            break
        running.sort(key=lambda x: x[0])
        t, e = running.pop(0)
        free += e.gpu_share
    return out


# -- the runner -----------------------------------------------------------------------------
class Runner:
    """Start, watch and stop the entries of one call (see the module docstring)."""

    def __init__(
        self,
        plan: Plan,
        runs_dir: Path,
        data_dir: Path,
        budget_min: float,
        grace_s: float = 30.0,
        poll_s: float = 2.0,
    ):
        self.plan, self.runs_dir, self.data_dir = plan, runs_dir, data_dir
        self.budget_s, self.grace_s, self.poll_s = budget_min * 60, grace_s, poll_s
        self.reserve_s = PACK_RESERVE_S
        self.python = sys.executable
        self.running: dict[str, tuple[subprocess.Popen, Entry, float]] = {}
        self.queue: list[Entry] = []
        self.retried: set[str] = set()
        self.stopping = False
        self.events: list[dict[str, Any]] = []
        self.t0 = time.monotonic()

    def elapsed(self) -> float:
        return time.monotonic() - self.t0

    def note(self, entry: Entry | None, what: str, **info: Any) -> None:
        ev = {"t_s": round(self.elapsed(), 1), "id": entry.id if entry else None, "event": what}
        ev.update(info)
        self.events.append(ev)
        log.info("[%7.1f s] %s%s %s", ev["t_s"], f"{ev['id']}: " if ev["id"] else "", what,
                 " ".join(f"{k}={v}" for k, v in info.items()))  # fmt: skip

    def command(self, e: Entry, run_dir: Path) -> list[str]:
        if e.command is not None:
            return ["bash", "-c", e.command.format(run_dir=run_dir, data_dir=self.data_dir,
                                                   python=self.python)]  # fmt: skip
        return [self.python, str(REPO_ROOT / "run.py"),
                *run_overrides(self.plan, e, self.data_dir, run_dir)]  # fmt: skip

    def start(self, e: Entry) -> None:
        run_dir = self.runs_dir / e.id
        run_dir.mkdir(parents=True, exist_ok=True)
        ncpu = os.cpu_count() or 1
        threads = str(max(1, int(ncpu * e.gpu_share) - 1))
        env = {**os.environ, "OMP_NUM_THREADS": threads, "PYTHONUNBUFFERED": "1"}
        env.setdefault("WANDB_MODE", "offline")
        stdout = open(self.runs_dir / f"{e.id}.out", "ab")  # noqa: SIM115 - closed by the child's end
        p = subprocess.Popen(self.command(e, run_dir), cwd=REPO_ROOT, env=env, stdout=stdout,
                             stderr=subprocess.STDOUT, start_new_session=True)  # fmt: skip
        stdout.close()
        self.running[e.id] = (p, e, time.monotonic())
        self.note(e, "start", share=e.gpu_share, expected_min=e.expected_min, threads=threads)

    def reap(self) -> None:
        for rid, (p, e, t) in list(self.running.items()):
            rc = p.poll()
            if rc is None:
                continue
            del self.running[rid]
            if e.command is not None and rc == 0:
                (self.runs_dir / e.id / "command.done").write_text(f"{time.time()}\n")
            info = read_status(self.runs_dir / e.id)
            minutes = round((time.monotonic() - t) / 60, 2)
            self.note(e, "end", rc=rc, status=info["status"], minutes=minutes)
            if rc != 0 and not self.stopping and e.retry_overrides and e.id not in self.retried:
                self.retried.add(e.id)  # e.g. a compiler failure: once more without compile
                retry = dataclasses.replace(e, overrides=[*e.overrides, *e.retry_overrides])
                self.note(e, "failed: queued again", overrides=" ".join(e.retry_overrides))
                self.queue.insert(0, retry)

    def stop_all(self) -> None:
        """SIGTERM every run (Lightning stops after the batch, PreemptionCheckpoint saves), then
        SIGKILL what is left after ``grace_s``."""
        self.stopping = True
        for p, e, _ in self.running.values():
            self.note(e, "budget reached: SIGTERM")
            with suppress(ProcessLookupError, PermissionError):
                os.killpg(p.pid, signal.SIGTERM)
        end = time.monotonic() + self.grace_s
        while self.running and time.monotonic() < end:
            time.sleep(self.poll_s)
            self.reap()
        for p, e, _ in self.running.values():
            self.note(e, "no exit after SIGTERM: SIGKILL")
            with suppress(ProcessLookupError, PermissionError):
                os.killpg(p.pid, signal.SIGKILL)
            p.wait()
        self.reap()

    def deadline(self) -> float:
        """Seconds after the start when running entries get SIGTERM: the budget less the time
        to stop them (``grace_s``) and to pack (``reserve_s``)."""
        return self.budget_s - self.reserve_s - self.grace_s

    def run(self, entries: list[Entry]) -> None:
        self.queue = queue = list(entries)  # reap() puts retries at its front
        while queue or self.running:
            self.reap()
            deadline = self.deadline()
            left_min = (deadline - self.elapsed()) / 60
            free = 1.0 - sum(e.gpu_share for _, e, _ in self.running.values())
            while queue and queue[0].gpu_share <= free + 1e-9:
                e = queue[0]
                if left_min < min(e.expected_min, self.plan.min_start_min):
                    self.note(
                        e, "not started: too little budget left", left_min=round(left_min, 2)
                    )
                    queue.pop(0)
                    continue
                queue.pop(0)
                self.start(e)
                free -= e.gpu_share
            if self.running and self.elapsed() >= deadline:
                self.stop_all()
                for e in queue:
                    self.note(e, "not started: budget used")
                break
            if not self.running and queue and left_min <= 0:
                break
            time.sleep(self.poll_s)
        self.reap()


# -- packing ----------------------------------------------------------------------------------
def record_files(run_dir: Path, keep: list[str]) -> list[Path]:
    """What travels back for one run: results.json, the hydra config, the run log and the
    entry's ``keep`` files (globs relative to the run dir); never checkpoints."""
    names = ["results.json", "run.log", ".hydra/config.yaml", ".hydra/overrides.yaml", *keep]
    out: list[Path] = []
    for n in names:
        for f in sorted(run_dir.glob(n)):
            if f.is_file() and f.suffix != ".ckpt" and f not in out:
                out.append(f)
    return out


def _add(tar: tarfile.TarFile, path: Path, arcname: str, limit: int | None = None) -> None:
    data = path.read_bytes()
    if limit is not None and len(data) > limit:
        data = b"...[truncated]...\n" + data[-limit:]
    info = tarfile.TarInfo(arcname)
    info.size, info.mtime, info.mode = len(data), int(path.stat().st_mtime), 0o644
    tar.addfile(info, io.BytesIO(data))


def pack(plan: Plan, runner_events: list[dict], runs_dir: Path, out: Path,
         papers: dict[str, str]) -> list[Path]:  # fmt: skip
    """Write at most 8 files to ``out``: records.tar.gz, summary.json, campaign.log (by the
    caller), and the checkpoints of unfinished runs as resume.tar[.partNN] (16 MiB each)."""
    out.mkdir(parents=True, exist_ok=True)
    summary = {"plan": plan.name, "plan_file": str(plan.path), "events": runner_events, "runs": {}}
    resume: list[tuple[Path, str]] = []
    with tarfile.open(out / "records.tar.gz", "w:gz") as tar:
        for e in plan.entries:
            run_dir = runs_dir / e.id
            if not run_dir.is_dir():
                continue
            info = read_status(run_dir)
            info["paper"] = info.get("paper") or papers.get(e.id)
            info["partial"] = e.partial
            summary["runs"][e.id] = info
            for f in record_files(run_dir, e.keep):
                _add(tar, f, f"{e.id}/{f.relative_to(run_dir)}")
            stdout = runs_dir / f"{e.id}.out"
            if stdout.is_file():
                _add(tar, stdout, f"{e.id}/stdout.log", limit=2**20)
            if not is_done(info) and info.get("checkpoint"):
                ck = Path(info["checkpoint"])
                resume.append((ck, f"{e.id}/{ck.relative_to(run_dir)}"))
    (out / "summary.json").write_text(json.dumps(summary, indent=2, default=str) + "\n")
    written = [out / "records.tar.gz", out / "summary.json"]
    if resume:
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w") as tar:
            for ck, arc in resume:
                tar.add(ck, arcname=arc)
        data = buf.getvalue()
        room = OUT_FILES - len(written) - 1  # one file is left for campaign.log
        n = -(-len(data) // (OUT_FILE_MAX - 4096))
        if n > room:
            log.warning("checkpoints of unfinished runs (%.1f MiB) exceed what comes back "
                        "(%d files of 16 MiB): not packed; they stay on this machine only",
                        len(data) / 2**20, room)  # fmt: skip
        else:
            size = -(-len(data) // n)
            for i in range(n):
                p = out / (f"resume.tar.part{i:02d}" if n > 1 else "resume.tar")
                p.write_bytes(data[i * size : (i + 1) * size])
                written.append(p)
    return written


def restore(resume_dir: Path, runs_dir: Path) -> list[str]:
    """Put checkpoints carried back from an earlier call (``resume.tar[.partNN]`` in
    ``resume_dir``) into their run dirs, unless the run dir already has a newer one."""
    if not resume_dir.is_dir():
        return []
    parts = sorted(resume_dir.glob("resume.tar.part*")) or sorted(resume_dir.glob("resume.tar"))
    if not parts:
        return []
    data = b"".join(p.read_bytes() for p in parts)
    done = []
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        for m in tar.getmembers():
            if not m.isfile() or ".." in Path(m.name).parts or Path(m.name).is_absolute():
                continue
            dest = runs_dir / m.name
            run_dir = runs_dir / Path(m.name).parts[0]
            newer = read_status(run_dir).get("checkpoint")
            if newer and Path(newer).stat().st_mtime >= m.mtime:
                continue
            dest.parent.mkdir(parents=True, exist_ok=True)
            with tar.extractfile(m) as src, open(dest, "wb") as f:
                shutil.copyfileobj(src, f)
            os.utime(dest, (m.mtime, m.mtime))
            done.append(m.name)
    return done


# -- keep (back on this machine) ---------------------------------------------------------------
def keep(from_dir: Path, experiments_dir: Path = REPO_ROOT / "experiments") -> list[Path]:
    """Unpack ``records.tar.gz`` (+ ``summary.json``) returned by a device call into
    ``experiments/<paper>/runs/gpu/<plan>/<id>/``; a record already there is kept as
    ``results.<stamp>.json`` (the report skips those)."""
    from odelab.utils.record import keep_previous

    summary = json.loads((from_dir / "summary.json").read_text())
    plan = summary["plan"]
    kept = []
    with tarfile.open(from_dir / "records.tar.gz") as tar:
        members = [m for m in tar.getmembers() if m.isfile()]
        for rid, info in summary["runs"].items():
            paper = info.get("paper")
            if paper is None:  # a benchmark command: its outputs go beside the benchmarks
                dest = REPO_ROOT / "benchmarks" / "results" / plan / rid
            else:
                dest = experiments_dir / paper / "runs" / "gpu" / plan / rid
            for m in members:
                parts = Path(m.name).parts
                if parts[0] != rid or ".." in parts:
                    continue
                target = dest.joinpath(*parts[1:])
                target.parent.mkdir(parents=True, exist_ok=True)
                if target.name == "results.json":
                    keep_previous(target)
                with tar.extractfile(m) as src, open(target, "wb") as f:
                    shutil.copyfileobj(src, f)
                if target.name == "results.json":
                    kept.append(target)
            log.info("%s: %s (%s) -> %s", rid, info.get("status"), info.get("epochs"), dest)
    return kept


# -- prepare (this machine) / unpack (device) --------------------------------------------------
DEVICE_WHEELS = [
    "hydra-core==1.3.8",
    "omegaconf==2.3.1",
    "antlr4-python3-runtime==4.9.3",
    "sacremoses==0.1.1",
    "subword-nmt==0.3.8",
    "mock",  # subword-nmt imports it
]
PART_MAX = 50 * 2**20  # one carried part; the tree (~6 MiB) and the wheels ride beside it


def data_files(plan: Plan, data_dir: Path) -> list[Path]:
    """Every file under the plan's ``needs`` (relative to ``data_dir``), the smallest dataset
    first: small sets arrive whole in the first part, so their runs can start while the large
    ones are still on their way."""
    groups: dict[str, list[Path]] = {}
    for e in plan.ordered():
        for n in e.needs:
            p = data_dir / n
            groups.setdefault(n, [f for f in sorted(p.rglob("*")) if f.is_file()] if p.is_dir()
                              else [p] if p.is_file() else [])  # fmt: skip
    files: dict[Path, None] = {}  # ordered, each file once
    for fs in sorted(groups.values(), key=lambda fs: sum(f.stat().st_size for f in fs)):
        files.update(dict.fromkeys(fs))
    return list(files)


def prepare(plan: Plan, data_dir: Path, dest: Path, wheels: bool = True) -> dict:
    """Build ``dest`` (git-ignored ``.device/``): ``part01``, ``part02``, ... each at most 50 MiB
    of xz-compressed data files (``<path relative to data_dir>.xz``), prepared caches under
    ``cache/`` (e.g. the BPE-encoded Multi30k) and ``wheels/`` for the GPU image; a
    ``manifest.json`` with md5s. Returns the manifest."""
    from odelab.utils.config import compose_config

    dest.mkdir(parents=True, exist_ok=True)
    manifest: dict[str, Any] = {"plan": plan.name, "files": {}, "parts": [], "cache": []}
    # prepared caches first (a datamodule with a cache_file under the checkout's data/ folder,
    # e.g. the BPE-encoded Multi30k): small, and their runs need nothing else of the data
    import hydra

    items: list[tuple[str, Path]] = []

    for e in plan.ordered():
        if e.experiment is None:
            continue
        cfg = compose_config(run_overrides(plan, e, data_dir))
        dm = hydra.utils.instantiate(cfg.data)
        cache = getattr(dm, "cache_file", None)
        if cache is None:
            continue
        dm.prepare_data()
        try:
            rel = Path(cache).resolve().relative_to((REPO_ROOT / "data").resolve())
        except ValueError:
            log.warning("%s: cache %s is outside the checkout's data/: not packed", e.id, cache)
            continue
        if "@repo_data/" + str(rel) not in dict(items):
            items.append(("@repo_data/" + str(rel), Path(cache)))
            manifest["cache"].append(str(rel))
    items += [(str(f.relative_to(data_dir)), f) for f in data_files(plan, data_dir)]
    part, size, n = None, 0, 0
    for rel, f in items:
        raw = f.read_bytes()
        blob = lzma.compress(raw, preset=6)
        if part is None or size + len(blob) > PART_MAX:
            n += 1
            part, size = dest / f"part{n:02d}", 0
            shutil.rmtree(part, ignore_errors=True)
            part.mkdir(parents=True)
            manifest["parts"].append(part.name)
        target = part / (rel + ".xz")
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(blob)
        size += len(blob)
        md5 = hashlib.md5(raw).hexdigest()
        manifest["files"][rel] = {"part": part.name, "md5": md5, "bytes": len(raw)}
        log.info("%s: %s (%.1f -> %.1f MiB)", part.name, rel, len(raw) / 2**20, len(blob) / 2**20)
    if wheels:  # shared by every plan's folder: .device/wheels
        w = dest.parent / "wheels"
        w.mkdir(exist_ok=True)
        _download_wheels(w)
    from odelab.utils.provenance import git_commit

    manifest["commit"] = git_commit()  # the device gets a copy of the tree without .git
    (dest / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest


def _size(path: Path) -> int:
    return (
        sum(f.stat().st_size for f in path.rglob("*") if f.is_file())
        if path.is_dir()
        else (path.stat().st_size if path.is_file() else 0)
    )


def tree_size() -> int:
    """Bytes of the working tree a device call sends (tracked + untracked, not ignored)."""
    out = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=REPO_ROOT,
                         capture_output=True, timeout=30).stdout  # fmt: skip
    return sum(_size(REPO_ROOT / f) for f in out.decode().split("\0") if f)


def carry_table(dest: Path, plan: Plan) -> str:
    """One device call per data part: what it carries and how big the call is (the working
    tree travels with every call; 64 MiB in all)."""
    rel = dest.resolve().relative_to(REPO_ROOT.resolve()) if dest.resolve().is_relative_to(
        REPO_ROOT.resolve()) else dest  # fmt: skip
    parts = sorted(dest.glob("part*"))
    tree = tree_size()
    lines = [f"device calls for plan {plan.name} (working tree {tree / 2**20:.1f} MiB each):"]
    for i, part in enumerate(parts, 1):
        carry = ([str(rel.parent / "wheels")] if i == 1 else []) + [
            str(rel / "manifest.json"), str(rel / part.name)]  # fmt: skip
        total = tree + sum(_size(REPO_ROOT / c) for c in carry)
        flag = "" if total <= 64 * 2**20 else "  <-- over the 64 MiB a call carries"
        lines.append(f"  call {i}: carry {carry} ({total / 2**20:.1f} MiB){flag}")
    last = f"bash experiments/campaign/device.sh {plan.path} --budget-min <minutes>"
    lines.append(
        f"  each call: {last} (or `... device.sh unpack`); experiments/campaign/README.md"
    )
    return "\n".join(lines)


def _download_wheels(dest: Path) -> None:
    """Wheels for the GPU image (CPython 3.12, manylinux x86-64) of what it lacks; pure-Python
    sdists (antlr4) are built into wheels here."""
    plat = ["--platform", "manylinux2014_x86_64", "--platform", "manylinux_2_17_x86_64",
            "--platform", "manylinux_2_28_x86_64", "--python-version", "3.12",
            "--implementation", "cp"]  # fmt: skip
    for req in DEVICE_WHEELS:
        cmd = [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:",
               *plat, "-d", str(dest), req]  # fmt: skip
        if subprocess.run(cmd, capture_output=True).returncode != 0:  # e.g. an sdist only
            build = [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(dest), req]
            if subprocess.run(build).returncode != 0:
                raise RuntimeError(f"could not get a wheel of {req} for the GPU image")


def unpack(src: Path, data_dir: Path) -> list[str]:
    """On the device: decompress every carried part's files into ``data_dir`` (and prepared
    caches into the checkout's ``data/``), skipping files already there with the right size.
    ``src`` holds a ``manifest.json`` or plan folders that do (``.device/<plan>/``)."""
    manifests = (
        [src / "manifest.json"]
        if (src / "manifest.json").is_file()
        else sorted(src.glob("*/manifest.json"))
    )
    return [r for m in manifests for r in _unpack_one(m.parent, data_dir)]


def _unpack_one(src: Path, data_dir: Path) -> list[str]:
    manifest = json.loads((src / "manifest.json").read_text())
    done = []
    for rel, meta in manifest["files"].items():
        blob = src / meta["part"] / (rel + ".xz")
        if rel.startswith("@repo_data/"):
            target = REPO_ROOT / "data" / rel.removeprefix("@repo_data/")
        else:
            target = data_dir / rel
        if target.is_file() and target.stat().st_size == meta["bytes"]:
            continue
        if not blob.is_file():
            continue  # its part has not been carried yet
        data = lzma.decompress(blob.read_bytes())
        if hashlib.md5(data).hexdigest() != meta["md5"]:
            raise ValueError(f"{blob}: md5 of the decompressed file differs from the manifest")
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(target.name + ".tmp")
        tmp.write_bytes(data)
        tmp.replace(target)
        done.append(rel)
    return done


# -- CLI ------------------------------------------------------------------------------------
def _table(
    plan: Plan, runs_dir: Path, data_dir: Path, budget_min: float
) -> tuple[str, list[Entry], list[Entry]]:
    """The plan as a table, the entries that can run now and those not done yet."""
    rows, runnable, todo = [], [], []
    for e in plan.ordered():
        info = read_status(runs_dir / e.id)
        data_ok = all(_present(data_dir / n) for n in e.needs)
        state = (
            info["status"] if info["status"] != "new" else ("new" if data_ok else "waits for data")
        )
        if not is_done(info):
            todo.append(e)
            if data_ok:
                runnable.append(e)
        rows.append((e, state, info))
    sim = simulate(plan, budget_min, runnable)
    lines = [f"plan {plan.name} ({plan.path}): budget {budget_min:g} min, runs in {runs_dir}",
             "| prio | id | what | share | expected min | state | expected start-end (min) |",
             "|---|---|---|---|---|---|---|"]  # fmt: skip
    for e, state, info in rows:
        what = e.experiment or f"command: {e.command[:40]}"
        if info.get("epochs") is not None and not is_done(info):
            state += f" (epoch {info['epochs']})"
        span = sim.get(e.id)
        when = (
            "-"
            if span is None
            else f"{span[0]:.1f}-{span[1]:.1f}" + (" (cut)" if span[1] > budget_min else "")
        )
        cells = [f"{e.priority:g}", e.id, what, f"{e.gpu_share:g}", f"{e.expected_min:g}", state]
        lines.append("| " + " | ".join([*cells, when]) + " |")
    total = sum(e.expected_min * e.gpu_share for e in runnable)
    lines.append(f"GPU-minutes expected for what is left: {total:.1f} (share-weighted)")
    return "\n".join(lines), runnable, todo


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m odelab.campaign", description=__doc__.split("\n")[0]
    )
    sub = p.add_subparsers(dest="cmd", required=True)
    for name in ("check", "run", "prepare"):
        s = sub.add_parser(name)
        s.add_argument("plan")
        s.add_argument(
            "--data-dir", default=os.environ.get("ODELAB_DATA_DIR", str(REPO_ROOT / "data"))
        )
        s.add_argument("--runs-dir", default=None, help="default: logs/campaign/<plan name>")
        s.add_argument(
            "--budget-min", type=float, default=None, help="default: the plan's budget_min"
        )
        s.add_argument("--only", nargs="+", default=None, help="run only these ids")
        if name == "run":
            s.add_argument("--out", default=os.environ.get("OUT", "logs/campaign-out"))
            s.add_argument("--dry-run", action="store_true", help="print the plan and stop")
            s.add_argument("--resume-from", default=None, help="a folder with resume.tar parts")
            s.add_argument(
                "--grace-s",
                type=float,
                default=30.0,
                help="seconds a SIGTERMed run gets to save and exit",
            )
            s.add_argument(
                "--skip-missing-data",
                action="store_true",
                help="run what has its data; entries waiting for data are skipped",
            )
        if name == "prepare":
            s.add_argument("--dest", default=None, help="default: .device/<plan name>")
            s.add_argument("--no-wheels", action="store_true")
    u = sub.add_parser("unpack")
    u.add_argument("src", nargs="?", default=str(REPO_ROOT / ".device"))
    u.add_argument(
        "--data-dir", default=os.environ.get("ODELAB_DATA_DIR", str(REPO_ROOT / "data"))
    )
    k = sub.add_parser("keep")
    k.add_argument("src")
    return p


def main(argv: list[str] | None = None) -> int:
    a = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        if a.cmd == "unpack":
            done = unpack(Path(a.src), Path(a.data_dir))
            print(f"unpacked {len(done)} file(s) into {a.data_dir}")
            return 0
        if a.cmd == "keep":
            kept = keep(Path(a.src))
            print(f"kept {len(kept)} record(s); now: python -m odelab.report --all")
            return 0
        plan = load_plan(a.plan)
        if a.only:
            unknown = sorted(set(a.only) - {e.id for e in plan.entries})
            if unknown:
                raise PlanError(f"--only names no entry of the plan: {unknown}")
            plan.entries = [e for e in plan.entries if e.id in a.only]
        data_dir = Path(a.data_dir).resolve()
        runs_dir = Path(a.runs_dir or REPO_ROOT / "logs" / "campaign" / plan.name).resolve()
        budget = a.budget_min if a.budget_min is not None else plan.budget_min
        if a.cmd == "prepare":
            dest = Path(a.dest or REPO_ROOT / ".device" / plan.name)
            m = prepare(plan, data_dir, dest, wheels=not a.no_wheels)
            print(
                f"{dest}: parts {m['parts']}, caches {m['cache']}; wheels in {dest.parent}/wheels"
            )
            print(carry_table(dest, plan))
            return 0
        running = a.cmd == "run" and not a.dry_run
        if running:
            out = Path(a.out)
            out.mkdir(parents=True, exist_ok=True)
            fh = logging.FileHandler(out / "campaign.log")
            fh.setFormatter(logging.Formatter("%(asctime)s %(message)s"))
            log.addHandler(fh)
            for r in restore(Path(a.resume_from), runs_dir) if a.resume_from else []:
                log.info("restored %s", r)  # before the table: a restored run shows its epoch
        table, runnable, todo = _table(plan, runs_dir, data_dir, budget)
        print(table, flush=True)
        skip = a.cmd == "run" and a.skip_missing_data
        papers = check_plan(plan, data_dir, runnable if skip else todo)
        if not running:
            print(f"plan ok: {len(papers)} experiment entries compose; data checked in {data_dir}")
            return 0
        runner = Runner(plan, runs_dir, data_dir, budget, grace_s=a.grace_s)
        runner.run(runnable)
        files = pack(plan, runner.events, runs_dir, out, papers)
        print(_table(plan, runs_dir, data_dir, 0.0)[0])
        print("packed: " + ", ".join(f.name for f in [*files, out / "campaign.log"]))
        stopped = {ev["id"] for ev in runner.events if "SIGTERM" in ev["event"]}
        failed = [
            e.id
            for e in plan.entries
            if read_status(runs_dir / e.id)["status"] == "failed" and e.id not in stopped
        ]
        if failed:
            print(f"failed: {', '.join(failed)} (see their stdout.log in the records)")
        return 1 if failed else 0
    except PlanError as e:
        print(f"campaign: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
