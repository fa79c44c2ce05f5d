"""``python -m odelab.report``: the paper's numbers beside ours, from any set of runs.

    python -m odelab.report lm_resnet                       # logs/ and experiments/lm_resnet/runs
    python -m odelab.report --all --from logs/              # every paper
    python -m odelab.report yopo --from wandb:<entity>/<project>
    python -m odelab.report yopo --from wandb-offline:wandb/
    python -m odelab.report lm_resnet --view cpu_study --from logs/lm_resnet_cpu_study

Writes ``experiments/<paper>/results.md``, ``results.csv`` and ``results_*.png`` (``--out DIR``
writes ``DIR/<paper>/`` instead) and prints the tables; with W&B on (``--wandb``, or
automatically with an account or a ``wandb:`` source) it also logs one summary run per paper
(job type ``report``) holding the tables and the plots. Without ``--from`` it also renders the
paper's study views (:mod:`odelab.report.views`) from their kept records into ``<name>.md``;
``--view NAME`` renders only that view, from ``--from`` records when given.
"""

from __future__ import annotations

import argparse
import logging
import os
from pathlib import Path

from odelab.report import report_paper
from odelab.report.sources import collect, default_sources
from odelab.report.table import EXPERIMENTS_DIR, papers
from odelab.report.views import paper_views, render_view

log = logging.getLogger("odelab.report")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m odelab.report",
        description="Gather finished runs, aggregate seeds and print/write the paper-vs-ours "
        "tables (experiments/<paper>/results.md, .csv, .png; a W&B summary run).",
    )
    p.add_argument("papers", nargs="*", help=f"papers (known: {', '.join(papers())})")
    p.add_argument("--all", action="store_true", help="every paper with a reference.yaml")
    p.add_argument(
        "--from",
        dest="sources",
        action="append",
        metavar="SRC",
        help="a directory of runs (results.json files), wandb:<entity>/<project>, or "
        "wandb-offline:<dir>; repeatable. Default: the log dir ($ODELAB_LOG_DIR or logs/) "
        "and experiments/<paper>/runs/",
    )
    p.add_argument("--out", type=Path, help="write DIR/<paper>/ instead of experiments/<paper>/")
    wb = p.add_mutually_exclusive_group()
    wb.add_argument("--wandb", dest="wandb", action="store_true", default=None,
                    help="log a summary run per paper (offline without an account)")  # fmt: skip
    wb.add_argument("--no-wandb", dest="wandb", action="store_false")
    p.add_argument("--project", help="W&B project of the summary run (default: the logger's)")
    p.add_argument("--entity", help="W&B entity of the summary run")
    p.add_argument("--view", dest="views", action="append", metavar="NAME",
                   help="render only this study view of the paper (repeatable), from the "
                   "--from dirs or its kept records (papers/<paper>/report.py views)")  # fmt: skip
    p.add_argument("--no-plots", action="store_true")
    p.add_argument("--quiet", action="store_true", help="no terminal tables")
    args = p.parse_args(argv)
    if args.all:
        args.papers = papers()
    if not args.papers:
        p.error(f"name a paper or pass --all (papers: {', '.join(papers())})")
    unknown = [x for x in args.papers if x not in papers()]
    if unknown:
        p.error(f"unknown paper(s) {unknown}: no experiments/<paper>/reference.yaml "
                f"(papers: {', '.join(papers())})")  # fmt: skip
    for paper in args.papers if args.views else []:
        known = paper_views(paper)
        if unknown := [v for v in args.views if v not in known]:
            p.error(f"{paper} has no view {unknown} (its views: {', '.join(known) or 'none'})")
    return args


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    args = parse_args(argv)
    explicit = args.sources is not None
    for paper in args.papers:
        out_dir = (args.out / paper) if args.out else EXPERIMENTS_DIR / paper
        if args.views:
            _views(paper, args.views, out_dir, args)
            continue
        sources = args.sources
        if not explicit:  # the defaults that exist: results.md names exactly what it read
            sources = [s for s in default_sources(paper) if Path(s).exists()]
        runs = collect(sources, paper=paper, missing_ok=not explicit)
        if not runs:
            defaults = ", ".join(str(s) for s in default_sources(paper))
            where = ", ".join(sources) if sources else f"none of the default sources ({defaults})"
            log.warning(
                "%s: no run records of this paper in %s; the tables will list the paper's numbers "
                "with no 'ours' column values (pass --from <dir with results.json files>)",
                paper,
                where,
            )
        wandb_on = args.wandb
        if wandb_on is None:
            from odelab.utils.wandb import has_credentials

            wandb_on = has_credentials() or any(s.startswith("wandb:") for s in sources)
        entity = args.entity
        if entity is None:
            entity = next((s[6:].split("/")[0] for s in sources if s.startswith("wandb:")), None)
        written = report_paper(
            paper,
            runs,
            out_dir,
            sources=sources,
            plots=not args.no_plots,
            terminal=not args.quiet,
            wandb=wandb_on,
            project=args.project,
            entity=entity,
        )
        print(f"{paper}: wrote " + ", ".join(os.path.relpath(p) for p in written))
        if not explicit:  # the study views read their own kept records
            _views(paper, list(paper_views(paper)), out_dir, args)
    return 0


def _views(paper: str, names: list[str], out_dir: Path, args: argparse.Namespace) -> None:
    for name in names:
        text, path = render_view(paper, name, out_dir, sources=args.sources)
        if not args.quiet:
            print(text)
        print(f"{paper}: wrote {os.path.relpath(path)}")


if __name__ == "__main__":
    raise SystemExit(main())
