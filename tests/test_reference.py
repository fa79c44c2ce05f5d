"""reference.yaml: one schema for every paper; every number has a source and a flag."""

from __future__ import annotations

import pytest
import yaml

from conftest import CONF, ROOT

FLAGS = {"V", "C", "Q", "R"}
FILES = sorted((ROOT / "experiments").glob("*/reference.yaml"))


@pytest.mark.parametrize("path", FILES, ids=[p.parent.name for p in FILES])
def test_reference_schema(path):
    data = yaml.safe_load(path.read_text())
    assert data["paper"] == path.parent.name
    assert data["arxiv"] and data["title"]
    experiments = {p.stem for p in (CONF / "experiment").glob("*.yaml")}
    for name, setting in data["settings"].items():
        assert name in experiments, f"{path}: {name} is not a conf/experiment file"
        for metric, ref in (setting.get("metrics") or {}).items():
            assert "/" in metric, f"{name}: metric keys are split/name, got {metric}"
            assert isinstance(ref["value"], int | float), f"{name} {metric}: value"
            assert ref["flag"] in FLAGS, f"{name} {metric}: flag {ref['flag']}"
            assert ref["source"] and ref["table"], f"{name} {metric}: source and table"
        show = setting.get("show") or []
        assert isinstance(show, list) and all("/" in k for k in show), f"{name}: show keys"


def _paper_of(stem: str) -> str | None:
    """The ``paper`` an experiment sets, directly or through the experiment it extends."""
    cfg = yaml.safe_load((CONF / "experiment" / f"{stem}.yaml").read_text())
    if cfg.get("paper"):
        return cfg["paper"]
    for parent in cfg.get("defaults") or []:
        if isinstance(parent, str) and (CONF / "experiment" / f"{parent}.yaml").is_file():
            return _paper_of(parent)
    return None


def test_every_experiment_has_a_reference_entry():
    papers = {yaml.safe_load(p.read_text())["paper"]: p for p in FILES}
    for exp in sorted((CONF / "experiment").glob("*.yaml")):
        paper = _paper_of(exp.stem)
        assert paper in papers, f"{exp.stem}: experiments/{paper}/reference.yaml is missing"
        settings = yaml.safe_load(papers[paper].read_text())["settings"]
        # an alias (experiment=yopo_cifar) is recorded and reported as the setting it names
        name = yaml.safe_load(exp.read_text()).get("experiment_name", exp.stem)
        assert name in settings, f"{exp.stem}: no entry in {papers[paper]}"


def test_kept_study_runs_rebuild_the_readme_table(tmp_path):
    """The CPU-study records in experiments/lm_resnet/runs aggregate to the README's numbers."""
    from odelab.report.views import render_view

    out, _ = render_view("lm_resnet", "cpu_study", tmp_path)
    readme = (ROOT / "experiments" / "lm_resnet" / "README.md").read_text()
    for line in out.splitlines():
        if line.startswith(("| lm_resnet20", "| resnet20")):
            mean_std = line.split("|")[3].strip()
            assert mean_std in readme, mean_std


@pytest.mark.parametrize("path", FILES, ids=[p.parent.name for p in FILES])
def test_paper_readme_links_its_generated_table(path):
    """Every paper's README shows the same generated table: it links results.md (written by
    ``python -m odelab.report <paper>``) once that exists."""
    if not (path.parent / "results.md").is_file():
        pytest.skip(f"no {path.parent.name}/results.md yet: run python -m odelab.report")
    readme = (path.parent / "README.md").read_text()
    assert "](results.md)" in readme, f"{path.parent}/README.md: link [results.md](results.md)"
