"""README.md's Layout and "Adding a paper" describe the code as it is: every path, file, test and
``odelab.`` name they give exists (the worked example's own files follow real ones)."""

from __future__ import annotations

import importlib
import re
from pathlib import Path

from conftest import ROOT

README = (ROOT / "README.md").read_text()
PAPERS = sorted(p.parent.name for p in (ROOT / "experiments").glob("*/reference.yaml"))
EXAMPLE = "neural_ode"  # the worked example's seventh paper: its files do not exist
FILE = re.compile(r"[A-Za-z_][\w/<>]*\.(?:py|yaml|md|sh|sbatch)\b")


def _section(title: str) -> str:
    return README.split(f"## {title}\n", 1)[1].split("\n## ", 1)[0]


def _expand(path: str) -> list[Path]:
    """``<paper>`` stands for every paper."""
    if "<paper>" in path:
        return [ROOT / path.replace("<paper>", p) for p in PAPERS]
    return [ROOT / path]


def _layout() -> list[tuple[str, str]]:
    """(path, description with its continuation lines) for every entry of the Layout tree."""
    block = _section("Layout").split("```\n", 2)[1]
    entries: list[tuple[str, str]] = []
    parent = ""
    for line in block.splitlines():
        indent = len(line) - len(line.lstrip())
        if indent >= 4:  # a description's continuation
            entries[-1] = (entries[-1][0], entries[-1][1] + " " + line.strip())
            continue
        token, _, text = line.strip().partition(" ")
        path = token if indent == 0 else parent + token
        if indent == 0 and token.endswith("/"):
            parent = token
        entries.append((path, text.strip()))
    return entries


def test_layout_names_what_exists():
    entries = _layout()
    assert {"src/odelab/report/", "src/odelab/utils/", "src/odelab/modules/"} <= {
        p for p, _ in entries
    }
    for path, text in entries:
        for where in _expand(path):
            assert where.exists(), f"README Layout: {path} does not exist"
            for name in FILE.findall(re.sub(r"`[^`]*`", "", text)):  # files it names, there
                if "<" in name:
                    continue
                f = ROOT / name if "/" in name else where / name
                assert f.exists(), f"README Layout, {path}: {name} does not exist"


def test_adding_a_paper_names_what_exists():
    text = _section("Adding a paper")
    rows = [r for r in text.splitlines() if r.startswith("| `")]
    assert len(rows) >= 7, "the worked example lists the new paper's files"
    for row in rows:
        new, model = re.findall(r"`([^`]+)`", row.split("|")[1] + row.split("|")[3])
        assert EXAMPLE in new and not (ROOT / new).exists(), new
        assert (ROOT / model).is_file(), f"modelled on {model}: no such file"
        real = Path(new.replace(EXAMPLE, Path(model).parent.name if "/papers/" in model or
                                "experiments/" in model else EXAMPLE))  # fmt: skip
        assert (ROOT / real).parent.is_dir(), f"{new}: {real.parent} is not a folder"
    for ref in re.findall(r"`(tests/[\w/]+\.py)::(\w+)`", text):
        assert f"def {ref[1]}(" in (ROOT / ref[0]).read_text(), ref
    for name in set(re.findall(r"`(odelab(?:\.\w+)+)`", text)):
        if EXAMPLE in name:
            continue
        module, _, attr = name.rpartition(".")
        try:
            importlib.import_module(name)  # a module
        except ModuleNotFoundError:
            assert hasattr(importlib.import_module(module), attr), name
    # the hooks it names are what the code reads
    assert (
        "COVERED_EXPERIMENTS" in text
        and "COVERED_EXPERIMENTS" in (ROOT / "tests" / "test_train.py").read_text()
    )
    report = ROOT / "src" / "odelab" / "report"
    for hook, where in (("plots", "plots.py"), ("RUN_LOCAL_KEYS", "__init__.py"),
                        ("views", "views.py")):  # fmt: skip
        assert f"`{hook}" in text and f'"{hook}"' in (report / where).read_text(), hook
