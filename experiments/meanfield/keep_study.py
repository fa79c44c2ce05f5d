"""Keep a study's records: copy the finished ``<part>/<n>_<exp>/results.json`` of a study.sh
output folder to ``experiments/meanfield/runs/<part>/<n>_<exp>.json`` (the tables are then
``python -m odelab.report meanfield``, view ``study``).

Usage: python experiments/meanfield/keep_study.py [STUDY_DIR]   (default logs/meanfield_study)
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

from odelab.report.runs import local_runs
from odelab.report.views import finished

RUNS = Path(__file__).resolve().parent / "runs"


def keep(study: Path) -> list[Path]:
    kept = []
    for run in finished(local_runs(study)):
        src = Path(run.source)  # <study>/<part>/<n>_<exp>/results.json
        dest = RUNS / src.parent.parent.name / f"{src.parent.name}.json"
        dest.parent.mkdir(parents=True, exist_ok=True)
        kept.append(Path(shutil.copy(src, dest)))
    return kept


if __name__ == "__main__":
    for path in keep(Path(sys.argv[1] if len(sys.argv) > 1 else "logs/meanfield_study")):
        print(path)
