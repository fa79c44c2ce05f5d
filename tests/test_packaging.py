"""Install paths agree: pyproject.toml, constraints.txt, environment.yml, Makefile, .ci/run."""

from __future__ import annotations

import re
import tomllib

import yaml

from conftest import ROOT


def _name(req: str) -> str:
    return re.split(r"[<>=!~\[ ;]", req.strip(), maxsplit=1)[0].lower()


def test_environment_yml_parses_and_matches_pyproject():
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    deps = env["dependencies"]
    assert "python=3.11" in deps and "pip" in deps
    pip_section = next(d["pip"] for d in deps if isinstance(d, dict))
    assert "-c constraints.txt" in pip_section
    assert any(x.startswith("-e .") for x in pip_section)
    listed = {x for x in pip_section if not x.startswith("-")}
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert sorted(listed) == sorted(project["dependencies"])


def test_constraints_pin_the_stack_and_every_install_path_uses_them():
    pins = {
        _name(line): line.strip()
        for line in (ROOT / "constraints.txt").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    }
    assert pins["torch"] == "torch==2.13.0"
    assert pins["hydra-core"] == "hydra-core==1.3.8"
    assert pins["omegaconf"] == "omegaconf==2.3.1"
    make = (ROOT / "Makefile").read_text()
    assert "-c constraints.txt" in make
    assert "make install" in (ROOT / ".ci" / "run").read_text()
    readme = (ROOT / "README.md").read_text()
    for line in readme.splitlines():
        if "pip install" in line and not line.lstrip().startswith("#"):
            assert "-c constraints.txt" in line, f"README pip install without constraints: {line}"


def test_ci_runs_the_readme_test_command():
    readme = (ROOT / "README.md").read_text()
    assert "make test" in readme and "make run" in readme
    ci = (ROOT / ".ci" / "run").read_text()
    assert "make test" in ci
