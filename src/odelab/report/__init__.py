"""Result tables: the paper's numbers (``experiments/<paper>/reference.yaml``) beside ours.

``python -m odelab.report <paper>`` (see ``__main__``). Pieces: :mod:`.runs` (the run record
and local ``results.json`` files), :mod:`.wandb_io` (W&B API, offline run dirs, summary run),
:mod:`.table` (config matching, seed aggregation, the join), :mod:`.render` (terminal, markdown,
CSV), :mod:`.plots` (generic charts and the per-paper extension point).
"""

from __future__ import annotations

import logging
from pathlib import Path

from odelab.report.runs import Run, local_runs
from odelab.report.table import PaperReport, build

log = logging.getLogger(__name__)

__all__ = ["PaperReport", "Run", "build", "local_runs", "report_paper"]


def report_paper(
    paper: str,
    runs: list[Run],
    out_dir: Path,
    sources: list[str] | None = None,
    plots: bool = True,
    terminal: bool = True,
    wandb: bool = False,
    project: str | None = None,
    entity: str | None = None,
) -> list[Path]:
    """Build ``paper``'s report from ``runs`` and write results.md, results.csv and the plots
    into ``out_dir`` (and a W&B summary run when ``wandb``); return the written files."""
    from odelab.report import render
    from odelab.report.plots import make_plots, paper_hooks

    hooks = paper_hooks(paper)
    extra_local = tuple(getattr(hooks, "RUN_LOCAL_KEYS", ()) or ())
    report = build(paper, runs, extra_local=extra_local, sources=sources)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    pngs: list[Path] = []
    if plots:
        try:
            pngs = make_plots(report, out_dir)
        except Exception:  # a broken plot must not cost the table
            log.exception("%s: plotting failed; the tables are still written", paper)
    md = out_dir / "results.md"
    md.write_text(render.markdown(report, pngs) + "\n")
    csv = out_dir / "results.csv"
    csv.write_text(render.to_csv(report))
    if terminal:
        render.print_terminal(report)
    if wandb:
        from odelab.report.wandb_io import log_summary_run

        log_summary_run(report, pngs, project=project, entity=entity)
    return [md, csv, *pngs]
