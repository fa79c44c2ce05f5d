"""W&B as a run source (public API, offline run directories) and as a report target.

A W&B run becomes a :class:`~odelab.report.runs.Run` through the same fields that
``results.json`` holds: ``config`` is the resolved config that ``odelab.train`` logs once
(``experiment_name``, ``paper``, ``seed`` live in it), metrics are the run summary's ``split/name``
keys (``final/<metric>``, written by ResultsWriter at test end, wins over the last logged value),
and the status is the run's state (``finished`` only when the run exited with code 0).
"""

from __future__ import annotations

import json
import logging
import struct
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from odelab.report.runs import Run, _finite, log_dir

log = logging.getLogger(__name__)


# -- the public API (users with an account) ---------------------------------------------------
def api_runs(path: str, paper: str | None = None, api: Any = None) -> list[Run]:
    """Runs of ``<entity>/<project>`` through ``wandb.Api`` (one group per paper).

    ``api`` is a ``wandb.Api()`` (or an object of the same shape, for tests).
    """
    if api is None:
        import wandb

        api = wandb.Api(timeout=30)
    filters = {"group": paper} if paper else None
    runs = []
    for r in api.runs(path, filters=filters):
        config = {k: v for k, v in dict(r.config).items() if not str(k).startswith("_")}
        summary = _summary_dict(r.summary)
        state = str(r.state)
        meta = getattr(r, "metadata", None) or {}
        runs.append(
            _record(
                config=config,
                summary=summary,
                status="finished" if state == "finished" else state,
                source=getattr(r, "url", None) or f"wandb:{path}/{r.id}",
                group=getattr(r, "group", None),
                job_type=getattr(r, "job_type", None),
                hardware=_hardware_from_metadata(meta),
                time=_timestamp(getattr(r, "created_at", None)),
            )
        )
    return runs


def _summary_dict(summary: Any) -> dict:
    """``run.summary`` of the public API is a mapping (``HTTPSummary``; ``_json_dict`` raw)."""
    raw = getattr(summary, "_json_dict", None)
    if isinstance(raw, dict):
        return dict(raw)
    return dict(summary.items()) if hasattr(summary, "items") else dict(summary)


def _hardware_from_metadata(meta: dict) -> dict | None:
    if not meta:
        return None
    hw = {"cpu_count": meta.get("cpu_count"), "platform": meta.get("os")}
    if meta.get("gpu"):
        hw["gpu"] = meta["gpu"]
        hw["accelerator"] = "cuda"
        hw["devices"] = meta.get("gpu_count")
    return hw


def _timestamp(value: Any) -> float:
    if value is None:
        return 0.0
    if isinstance(value, int | float):
        return float(value)
    from datetime import datetime

    try:
        return datetime.fromisoformat(str(value).replace("Z", "+00:00")).timestamp()
    except ValueError:
        return 0.0


def _record(
    config: dict,
    summary: dict,
    status: str,
    source: str,
    group: str | None = None,
    job_type: str | None = None,
    hardware: dict | None = None,
    time: float = 0.0,
) -> Run:
    metrics: dict[str, float] = {}
    finals: dict[str, float] = {}
    for k, v in summary.items():
        x = _finite(v) if not isinstance(v, bool) else None
        if x is None or "/" not in k or k.startswith("_"):
            continue
        if k.startswith("final/"):
            finals[k[len("final/") :]] = x
        else:
            metrics[k] = x
    metrics.update(finals)
    return Run(
        experiment=str(config.get("experiment_name") or job_type or "unknown"),
        paper=config.get("paper") or group,
        seed=config.get("seed"),
        status=status,
        metrics=dict(sorted(metrics.items())),
        config=config or None,
        source=source,
        hardware=hardware,
        time=time,
    )


# -- offline run directories ------------------------------------------------------------------
# The transaction log ``run-<id>.wandb`` uses the LevelDB log format: a 7-byte file header
# (":W&B", magic 0xBEE1, version 0), then 32 KiB blocks of chunks, each with a 7-byte header
# (crc32c, length, type FULL/FIRST/MIDDLE/LAST) and a piece of one serialized protobuf
# ``wandb.proto.wandb_internal_pb2.Record``. (wandb >= 0.19 no longer ships a Python reader; this
# is the format that ``wandb sync`` uploads.) Checksums are not verified; a torn tail is dropped.
_HEADER = struct.Struct("<4sHB")
_CHUNK = struct.Struct("<IHB")
_BLOCK = 32768
_FULL, _FIRST, _MIDDLE, _LAST = 1, 2, 3, 4


def read_wandb_records(path: str | Path) -> Iterator[bytes]:
    """Serialized ``Record`` messages of a ``.wandb`` transaction log, in order."""
    data = Path(path).read_bytes()
    if len(data) < _HEADER.size:
        return
    ident, magic, _version = _HEADER.unpack_from(data, 0)
    if ident != b":W&B" or magic != 0xBEE1:
        raise ValueError(f"{path} is not a W&B transaction log (header {data[:7]!r})")
    pos, pending = _HEADER.size, b""
    while pos + _CHUNK.size <= len(data):
        left = _BLOCK - pos % _BLOCK
        if left < _CHUNK.size:  # block trailer: zero padding
            pos += left
            continue
        _crc, length, kind = _CHUNK.unpack_from(data, pos)
        start, pos = pos + _CHUNK.size, pos + _CHUNK.size + length
        if kind == 0 and length == 0:  # preallocated zeros
            pos += left - _CHUNK.size
            continue
        if pos > len(data):
            break  # torn write at the end (the run is still going or crashed)
        piece = data[start:pos]
        if kind == _FULL:
            yield piece
        elif kind == _FIRST:
            pending = piece
        elif kind == _MIDDLE:
            pending += piece
        elif kind == _LAST:
            yield pending + piece
            pending = b""


def _items(updates) -> Iterator[tuple[list[str], Any]]:
    for item in updates:
        keys = list(item.nested_key) or [item.key]
        try:
            yield keys, json.loads(item.value_json)
        except ValueError:
            continue


def _set(d: dict, keys: list[str], value: Any) -> None:
    for k in keys[:-1]:
        d = d.setdefault(k, {})
    d[keys[-1]] = value


def offline_run(run_dir: str | Path) -> Run:
    """One ``offline-run-*`` directory: config, summary (last logged values, then explicit
    summary updates), exit code, and the hardware of its environment record."""
    from wandb.proto import wandb_internal_pb2 as pb

    run_dir = Path(run_dir)
    logs = sorted(run_dir.glob("run-*.wandb"))
    if not logs:
        raise FileNotFoundError(f"{run_dir} has no run-*.wandb transaction log")
    config: dict = {}
    summary: dict = {}
    exit_code: int | None = None
    group = job_type = None
    hardware: dict | None = None
    start = 0.0
    for raw in read_wandb_records(logs[0]):
        rec = pb.Record()
        try:
            rec.ParseFromString(raw)
        except Exception:  # a record from a newer wandb we cannot parse: skip it
            continue
        kind = rec.WhichOneof("record_type")
        if kind == "run":
            group, job_type = rec.run.run_group or None, rec.run.job_type or None
            start = float(rec.run.start_time.seconds or 0)
            for keys, v in _items(rec.run.config.update):
                _set(config, keys, v)
        elif kind == "config":
            for keys, v in _items(rec.config.update):
                _set(config, keys, v)
        elif kind in ("history", "summary"):  # scalars only: nested values are media, tables
            updates = rec.history.item if kind == "history" else rec.summary.update
            for keys, v in _items(updates):
                if len(keys) == 1:
                    summary[keys[0]] = v
        elif kind == "exit":
            exit_code = rec.exit.exit_code
        elif kind == "environment":  # written in parts: os first, then cpu/gpu counts
            hardware = {**(hardware or {}), **_environment_hardware(rec.environment)}
    config = {k: v for k, v in config.items() if not k.startswith("_")}
    if exit_code is None:
        status = "unfinished"
    else:
        status = "finished" if exit_code == 0 else f"failed (exit {exit_code})"
    return _record(
        config=config,
        summary=summary,
        status=status,
        source=str(run_dir),
        group=group,
        job_type=job_type,
        hardware=hardware,
        time=start,
    )


def _environment_hardware(env) -> dict:
    hw = {}
    for ours, theirs in (("cpu_count", "cpu_count"), ("platform", "os"), ("gpu", "gpu_type")):
        v = getattr(env, theirs, None)
        if v:
            hw[ours] = v
    if getattr(env, "gpu_count", 0):
        hw.update(accelerator="cuda", devices=env.gpu_count)
    return hw


def offline_runs(root: str | Path) -> list[Run]:
    """Every ``offline-run-*`` (or synced ``run-*``) directory under ``root``."""
    root = Path(root)
    if not root.exists():
        raise FileNotFoundError(f"no such W&B directory: {root}")
    dirs = sorted({p.parent for p in root.rglob("run-*.wandb")})
    runs = []
    for d in dirs:
        try:
            runs.append(offline_run(d))
        except (OSError, ValueError) as e:
            log.warning("skipping %s: %s", d, e)
    return runs


# -- the summary run ----------------------------------------------------------------------------
def default_project() -> str:
    """The W&B project runs log to (``conf/logger/wandb.yaml``)."""
    import yaml

    from odelab.utils.config import CONFIG_DIR

    node = yaml.safe_load((CONFIG_DIR / "logger" / "wandb.yaml").read_text())
    return node["wandb"]["project"]


def log_summary_run(
    report,
    plots: list[Path],
    project: str | None = None,
    entity: str | None = None,
    save_dir: str | Path | None = None,
) -> str | None:
    """One W&B run per paper (group = paper, job type ``report``) holding the tables as
    ``wandb.Table`` (``report/table``: the recipe rows; ``report/all``: every row, with its
    section) and the plots (``report/plots/<name>``). Offline without an account; a W&B
    failure is a warning, never an error. Returns the run's directory."""
    import wandb

    from odelab.report.render import CSV_HEAD, table_rows
    from odelab.utils.wandb import finish, start

    save_dir = Path(save_dir or log_dir() / "report" / report.paper)
    save_dir.mkdir(parents=True, exist_ok=True)
    head, body = CSV_HEAD, table_rows(report)
    kwargs = dict(
        project=project or default_project(),
        entity=entity,
        group=report.paper,
        job_type="report",
        name=f"report-{report.paper}",
        tags=[report.paper, "report"],
        config={"paper": report.paper, "sources": report.sources, "runs": len(report.runs)},
        dir=str(save_dir),
    )
    run = start(lambda offline: wandb.init(**kwargs), f"W&B summary run of {report.paper}")
    if run is None:
        return None
    try:
        recipe = [r for r in body if r[0] == "recipe"]
        run.log(
            {
                "report/table": wandb.Table(columns=head, data=recipe),
                "report/all": wandb.Table(columns=head, data=body),
                **{f"report/plots/{p.stem}": wandb.Image(str(p)) for p in plots},
            }
        )
        return run.dir
    except Exception as e:
        log.warning("could not log the report to W&B: %s", e)
        return None
    finally:
        finish()
