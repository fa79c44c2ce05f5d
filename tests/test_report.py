"""python -m odelab.report: tables built from real runs made here (results.json, offline W&B)."""

from __future__ import annotations

import csv
import json
import os
import statistics
import time
from pathlib import Path

import pytest
from test_train import TINY

from conftest import ROOT, compose

# The tiny recipe of these tests: TINY made smaller still (1 epoch, 64 images, depth 8), CPU.
SMALLER = [
    "data.train_subset=64",
    "data.test_subset=64",
    "data.val_size=32",
    "model.net.depth=8",
    "trainer.max_epochs=1",
]
RECIPE = [o for o in TINY if o.split("=")[0] not in {s.split("=")[0] for s in SMALLER}] + SMALLER
# A made-up reference row for the tiny setting (lm_resnet_mnist has no paper number): the join,
# the delta and the unit check need one. Not a paper value.
R = {"flag": "R", "table": "t", "source": "x"}
REFERENCE = {
    "paper": "lm_resnet",
    "settings": {
        "lm_resnet_mnist": {
            "metrics": {
                "test/error": {"value": 2.0, "unit": "%", **R},
                "test/acc": {"value": 98.0, "unit": "%", **R},
            }
        },
        "lm_resnet20_cifar10": {"metrics": {"test/error": {"value": 8.33, "flag": "Q"}}},
    },
}


@pytest.fixture(scope="module")
def runs_dir(tmp_path_factory):
    """Real quick runs: seeds 0 (csv logger) and 1 (offline W&B) of the tiny recipe, one run
    with another width, one that never tested (status fit_done) and one that failed."""
    from odelab.train import run

    root = tmp_path_factory.mktemp("report_runs")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("WANDB_MODE", "offline")
        for var in ("WANDB_DIR", "WANDB_CACHE_DIR", "WANDB_CONFIG_DIR"):
            mp.setenv(var, str(root / var.lower()))
        mp.setenv("ODELAB_LOG_DIR", str(root / "logs"))
        wandb = [o for o in RECIPE if o != "logger=csv"] + ["logger=wandb"]
        jobs = {
            "seed0": [*RECIPE, "seed=0"],
            "seed1": [*wandb, "seed=1"],
            "narrow": [*RECIPE, "seed=0", "model.net.widths=[2,4,4]"],
            "untested": [*RECIPE, "seed=3", "test=false"],
            "failed": [*wandb, "seed=4", "model.net.num_classes=2"],  # fails in fit's setup
        }
        for name, overrides in jobs.items():
            out = root / "logs" / name
            cfg = compose(overrides, out)
            if name == "failed":
                with pytest.raises(ValueError, match="impossible config"):
                    run(cfg)
            else:
                run(cfg)
    return root / "logs"


def _results(d: Path) -> dict:
    return json.loads((d / "results.json").read_text())


def tiny_recipe() -> dict:
    """The resolved config of the tiny recipe, as the recipe every test run is compared with."""
    from odelab.utils.config import to_container

    return to_container(compose(RECIPE, Path("/nowhere")))


def test_local_runs_aggregate_join_and_apart(runs_dir):
    from odelab.report import build, local_runs

    runs = local_runs(runs_dir)
    assert len(runs) == 5
    rep = build("lm_resnet", runs, reference=REFERENCE, recipe=lambda e: tiny_recipe())
    err, acc, cifar = rep.rows
    assert (err.metric, acc.metric, cifar.metric) == ("test/error", "test/acc", "test/error")
    # aggregation over seeds 0 and 1 (1 ran with the W&B logger: a run-local key)
    want = [_results(runs_dir / f"seed{s}")["metrics"]["test/error"] for s in (0, 1)]
    assert err.group.seeds() == [0, 1] and err.stat.n == 2
    assert err.stat.mean == pytest.approx(statistics.mean(want))
    assert err.stat.std == pytest.approx(statistics.stdev(want))
    assert err.paper == 2.0 and err.delta == pytest.approx(statistics.mean(want) - 2.0)
    assert err.reference["flag"] == "R" and err.group.hardware.startswith("cpu")
    assert "check the unit" in acc.note  # paper 98 (%) vs ours as a fraction
    assert cifar.stat.n == 0 and cifar.note == "no run"
    # the other width: its own group and rows, never averaged into the recipe's
    (variant,) = [g for g in rep.groups if not g.recipe]
    assert [r.seed for r in variant.runs] == [0]
    assert variant.diff == ["model.net.widths=[2, 4, 4] (recipe [4, 8, 8])"]
    assert [r.group for r in rep.variant_rows] == [variant, variant]
    narrow = _results(runs_dir / "narrow")["metrics"]["test/error"]
    assert rep.variant_rows[0].stat.values == [narrow]
    # failed and unfinished runs listed apart, with the reason
    apart = {u.run.seed: u.reason for u in rep.unusable}
    assert apart == {3: "status fit_done", 4: "status failed"}
    assert "impossible config" in next(u.run.error for u in rep.unusable if u.run.seed == 4)


def test_show_keys_are_reported_without_a_paper_number(runs_dir):
    """A setting's ``show`` list adds rows for metrics the paper does not print (paper "-")."""
    from odelab.report import build, local_runs

    ref = {
        "paper": "lm_resnet",
        "settings": {
            "lm_resnet_mnist": {
                "metrics": {"test/error": {"value": 2.0, "unit": "%", **R}},
                "show": ["test/error", "test/loss"],
            }
        },
    }
    runs = local_runs(runs_dir)
    rep = build("lm_resnet", runs, reference=ref, recipe=lambda e: tiny_recipe())
    err, loss = rep.rows  # test/error once (a metrics key listed again under show)
    assert (err.metric, loss.metric) == ("test/error", "test/loss")
    assert err.paper == 2.0 and loss.paper is None and loss.delta is None
    want = [_results(runs_dir / f"seed{s}")["metrics"]["test/loss"] for s in (0, 1)]
    assert loss.stat.mean == pytest.approx(statistics.mean(want))


def test_reruns_of_a_seed_keep_the_newest(runs_dir):
    from odelab.report import build, local_runs

    runs = local_runs(runs_dir)
    old = next(r for r in runs if r.seed == 1)
    copy = type(old)(**{**old.__dict__, "time": old.time - 100, "source": "older copy"})
    rep = build("lm_resnet", [*runs, copy], reference=REFERENCE, recipe=lambda e: tiny_recipe())
    assert rep.rows[0].stat.n == 2
    assert any(u.run.source == "older copy" and "rerun" in u.reason for u in rep.unusable)


def test_recipe_is_the_experiment_composed_without_overrides(runs_dir):
    """The definition of 'different config': only the overrides that change what is computed."""
    from odelab.report.table import comparable, config_diff, recipe_config

    ours = comparable(_results(runs_dir / "seed1")["config"])  # logger=wandb, seed 1: ignored
    diff = config_diff(ours, comparable(recipe_config("lm_resnet_mnist")))
    keys = sorted(d.split("=", 1)[0] for d in diff)
    ignored = ("experiment=", "logger=", "trainer.accelerator=")
    want = [o.split("=", 1)[0] for o in RECIPE if not o.startswith(ignored)]
    assert keys == sorted([*want, "model.scheduler.T_max"])  # T_max is ${trainer.max_epochs}
    assert recipe_config("no_such_experiment") is None


def test_offline_wandb_dir_gives_the_same_runs(runs_dir):
    from odelab.report.runs import local_runs
    from odelab.report.table import comparable
    from odelab.report.wandb_io import offline_runs

    runs = {r.seed: r for r in offline_runs(runs_dir)}
    assert set(runs) == {1, 4}
    ok, failed = runs[1], runs[4]
    local = next(r for r in local_runs(runs_dir / "seed1"))
    assert ok.status == "finished" and ok.experiment == "lm_resnet_mnist"
    assert ok.paper == "lm_resnet"
    for key in ("test/acc", "test/error", "test/loss"):
        assert ok.metrics[key] == pytest.approx(local.metrics[key])
    assert comparable(ok.config) == comparable(local.config)
    assert ok.hardware["cpu_count"] == os.cpu_count()
    assert failed.status.startswith("failed")


# The W&B public API, without network. RECORDED RESPONSE SHAPE, not a live response: a run node
# of the GraphQL ``project.runs`` query with the fields of wandb 0.31's ``RUN_FRAGMENT``
# (config and summaryMetrics arrive as JSON strings; config values wrapped as {"value", "desc"}),
# fed to the real ``wandb.apis.public.Run`` class, as ``wandb.Api().runs`` would.
def _graphql_run_node(results: dict, run_id: str, state: str) -> dict:
    config = {k: {"value": v, "desc": None} for k, v in results["config"].items()}
    config["_wandb"] = {"value": {"cli_version": "0.31.0"}, "desc": None}
    summary = {**results["metrics"], "_step": 12, "_runtime": 30.5}
    summary.update({f"final/{k}": v for k, v in results["metrics"].items() if "test/" in k})
    summary["results/table"] = {"_type": "table-file", "path": "media/table/x.table.json"}
    return {
        "id": "UnVuOnYxOmFiYw==",
        "tags": ["lm_resnet", "lm_resnet_mnist", "mnist5k"],
        "name": run_id,
        "displayName": f"lm_resnet_mnist-seed{results['seed']}",
        "sweepName": None,
        "state": state,
        "config": json.dumps(config),
        "group": "lm_resnet",
        "jobType": "lm_resnet_mnist",
        "commit": None,
        "readOnly": False,
        "createdAt": "2026-11-27T04:00:00",
        "heartbeatAt": "2026-11-27T04:01:00",
        "description": None,
        "notes": None,
        "systemMetrics": "{}",
        "summaryMetrics": json.dumps(summary),
        "historyLineCount": 13,
        "user": {"name": "someone", "username": "someone"},
        "historyKeys": None,
    }


class RecordedApi:
    """Stands in for ``wandb.Api()``: ``runs(path, filters)`` over recorded run nodes."""

    def __init__(self, nodes: list[dict]):
        self.nodes, self.calls = nodes, []

    def runs(self, path, filters=None, **kwargs):
        from wandb.apis.public.runs import Run

        self.calls.append((path, filters))
        entity, project = path.split("/")
        group = (filters or {}).get("group")
        return [
            Run(None, entity, project, n["name"], attrs=dict(n))
            for n in self.nodes
            if group is None or n["group"] == group
        ]


def test_wandb_api_source_against_a_recorded_response_shape(runs_dir):
    from odelab.report import build
    from odelab.report.sources import collect

    nodes = [
        _graphql_run_node(_results(runs_dir / "seed0"), "aaa", "finished"),
        _graphql_run_node(_results(runs_dir / "seed1"), "bbb", "crashed"),
    ]
    api = RecordedApi(nodes)
    runs = collect(["wandb:someone/odelab"], paper="lm_resnet", api=api)
    assert api.calls == [("someone/odelab", {"group": "lm_resnet"})]
    assert [(r.seed, r.status) for r in runs] == [(0, "finished"), (1, "crashed")]
    local = _results(runs_dir / "seed0")
    assert runs[0].metrics["test/error"] == pytest.approx(local["metrics"]["test/error"])
    assert "results/table" not in runs[0].metrics and "_step" not in runs[0].metrics
    rep = build("lm_resnet", runs, reference=REFERENCE, recipe=lambda e: tiny_recipe())
    assert rep.rows[0].stat.n == 1 and rep.rows[0].group.recipe
    assert [u.reason for u in rep.unusable] == ["status crashed"]


def test_cli_writes_md_csv_png_and_lists_the_cpu_study_apart(runs_dir, tmp_path, capsys):
    from odelab.report.__main__ import main

    study = ROOT / "experiments" / "lm_resnet" / "runs"
    out = tmp_path / "out"
    main(["lm_resnet", "--from", str(runs_dir), "--from", str(study), "--out", str(out),
          "--no-wandb"])  # fmt: skip
    d = out / "lm_resnet"
    md = (d / "results.md").read_text()
    assert "| lm_resnet20_cifar10 | test/error (%) | 8.33 | Q | - | 0 | - | - | - | no run |" in md
    # the CPU study (widths 8/16/32, 20k images, 15 cosine epochs) is a different config
    rows = list(csv.DictReader((d / "results.csv").open()))
    study_rows = [r for r in rows if r["setting"] == "lm_resnet20_cifar10" and r["n"] == "3"]
    assert [r["section"] for r in study_rows] == ["different_config"]
    errs = [json.loads(p.read_text())["metrics"]["test/error"]
            for p in sorted((study / "cpu_study").glob("*_lm_resnet20_cifar10.json"))]  # fmt: skip
    assert float(study_rows[0]["ours_mean"]) == pytest.approx(statistics.mean(errs))
    assert "model.net.widths=[8, 16, 32] (recipe [16, 32, 64])" in study_rows[0]["config_diff"]
    recipe = [r for r in rows if r["section"] == "recipe"]
    assert [r["n"] for r in recipe if r["setting"] == "lm_resnet20_cifar10"] == ["0"]
    # the tiny runs of lm_resnet_mnist: all overridden (TINY), the failed/unfinished apart
    unusable = {r["seeds"]: r["note"] for r in rows if r["section"] == "unusable"}
    assert unusable == {"3": "status fit_done", "4": "status failed"}
    pngs = sorted(p.name for p in d.glob("*.png"))
    # lm_resnet_mnist has no paper metric: its row shows test/acc (the monitor's test split)
    assert pngs == ["results_error_vs_params.png", "results_k_per_block.png",
                    "results_test_acc.png", "results_test_error.png"]  # fmt: skip
    for p in pngs:
        assert f"]({p})" in md and (d / p).read_bytes()[:4] == b"\x89PNG"
    assert "paper vs ours" in capsys.readouterr().out


def test_summary_run_offline(runs_dir, tmp_path, monkeypatch):
    """With W&B on and no account: one offline run (group = paper, job type report) holding
    the tables and plots; nothing reaches the network."""
    from odelab.report import local_runs, report_paper
    from odelab.report.wandb_io import offline_run

    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    written = report_paper("lm_resnet", local_runs(runs_dir), tmp_path / "out", terminal=False,
                           wandb=True, plots=True)  # fmt: skip
    assert any(p.suffix == ".png" for p in written)
    (run_dir,) = (Path(os.environ["ODELAB_LOG_DIR"]) / "report" / "lm_resnet").rglob(
        "offline-run-*"
    )
    tables = {p.name.split("_")[0]: p for p in run_dir.rglob("*.table.json")}
    assert sorted(tables) == ["all", "table"], list(run_dir.rglob("*"))
    everything = json.loads(tables["all"].read_text())
    col = everything["columns"].index
    variant = [r for r in everything["data"] if r[col("section")] == "different_config"]
    assert variant and isinstance(variant[0][col("ours_mean")], float)  # numbers, not text
    media = [p.name for p in run_dir.rglob("files/media/images/report/plots/*.png")]
    for png in (p for p in written if p.suffix == ".png"):  # report/plots/<name> per PNG
        assert any(m.startswith(png.stem + "_") for m in media), (png.name, media)
    for _ in range(60):  # wandb-core appends the exit record shortly after finish() returns
        rec = offline_run(run_dir)
        if rec.status != "unfinished":
            break
        time.sleep(0.5)
    assert rec.status == "finished" and rec.config["paper"] == "lm_resnet"


def test_unknown_paper_is_a_clear_error(capsys):
    from odelab.report.__main__ import main

    with pytest.raises(SystemExit):
        main(["no_such_paper", "--no-wandb"])
    assert "no experiments/<paper>/reference.yaml" in capsys.readouterr().err


def test_committed_results_md_is_what_the_report_builds(tmp_path, monkeypatch):
    """experiments/<paper>/results.md is generated, not edited: rebuilt from the run records
    committed in the repo it is unchanged, and so are results.csv and the set of plots (papers
    whose table was built from runs that are not in the repo skip)."""
    from odelab.report.__main__ import main

    checked = []
    for md in sorted((ROOT / "experiments").glob("*/results.md")):
        paper = md.parent.name
        first = md.read_text().split("Generated by `", 1)[1].split("`", 1)[0]
        args = first.split()[3:]
        sources = [a for i, a in enumerate(args) if i and args[i - 1] == "--from"]
        if not sources or not all((ROOT / s).exists() for s in sources):
            continue  # built from logs that are not in the repo
        monkeypatch.chdir(ROOT)
        main([*args, "--out", str(tmp_path), "--no-wandb", "--quiet"])
        built = tmp_path / paper
        assert (built / "results.md").read_text() == md.read_text(), paper
        assert (built / "results.csv").read_text() == (md.parent / "results.csv").read_text()
        pngs = sorted(p.name for p in built.glob("results_*.png"))
        assert pngs == sorted(p.name for p in md.parent.glob("results_*.png")), paper
        checked.append(paper)
    assert checked, "no committed results.md could be rebuilt from the repo's run records"


def test_readme_report_commands_parse():
    """Every ``python -m odelab.report ...`` line in the READMEs is a valid command line."""
    from odelab.report.__main__ import parse_args

    lines = [
        line.split("#")[0].split()
        for readme in [ROOT / "README.md", *sorted((ROOT / "experiments").glob("*/README.md"))]
        for line in readme.read_text().splitlines()
        if line.strip().startswith("python -m odelab.report")
    ]
    assert lines
    known = {p.parent.name for p in (ROOT / "experiments").glob("*/reference.yaml")}
    for words in lines:
        # an example may name a paper that lands on another branch: check it with a known one
        keep = [a.startswith("-") or "/" in a or a in known for a in words[3:]]
        args = [a if k else "lm_resnet" for a, k in zip(words[3:], keep)]
        assert parse_args(args).papers, words


def test_offline_reader_follows_records_across_blocks(tmp_path):
    """A real offline run whose transaction log spans several 32 KiB blocks (a 70 kB config
    value is split FIRST/MIDDLE/LAST; 300 history rows cross block ends)."""
    import wandb

    from odelab.report.wandb_io import offline_run

    big = "x" * 70_000
    config = {"experiment_name": "lm_resnet_mnist", "seed": 7, "blob": big}
    run = wandb.init(mode="offline", dir=str(tmp_path), group="lm_resnet", config=config)
    for i in range(300):
        run.log({"train/loss": 1.0 / (i + 1), "test/acc": i / 300})
    run.finish()
    (log,) = tmp_path.rglob("run-*.wandb")
    assert log.stat().st_size > 2 * 32768
    for _ in range(60):  # wandb-core appends the exit record shortly after finish() returns
        rec = offline_run(log.parent)
        if rec.status != "unfinished":
            break
        time.sleep(0.5)
    assert rec.config["blob"] == big and rec.seed == 7 and rec.paper == "lm_resnet"
    assert rec.metrics["test/acc"] == pytest.approx(299 / 300)
    assert rec.metrics["train/loss"] == pytest.approx(1 / 300)
    assert rec.status == "finished"


def test_paper_run_local_keys_extend_the_comparison():
    from odelab.report.table import comparable

    cfg = {"seed": 3, "data": {"seed": 3, "batch_size": 8}, "model": {"cache": "a", "depth": 2}}
    assert comparable(cfg) == {"data.batch_size": 8, "model.cache": "a", "model.depth": 2}
    assert comparable(cfg, ("model.cache",)) == {"data.batch_size": 8, "model.depth": 2}


def test_report_modules_import_as_a_tree():
    """No import circle inside odelab.report, counting imports inside functions too (sources
    reads W&B through wandb_io; wandb_io no longer reaches back into sources)."""
    import ast

    pkg = ROOT / "src" / "odelab" / "report"
    modules = {p.stem for p in pkg.glob("*.py")}
    edges: dict[str, set[str]] = {m: set() for m in modules}
    for m in modules:
        for node in ast.walk(ast.parse((pkg / f"{m}.py").read_text())):
            if isinstance(node, ast.ImportFrom) and node.module == "odelab.report":
                edges[m] |= {a.name if a.name in modules else "__init__" for a in node.names}
            elif isinstance(node, ast.ImportFrom | ast.Import):
                names = (
                    [node.module]
                    if isinstance(node, ast.ImportFrom)
                    else [a.name for a in node.names]
                )
                edges[m] |= {n.split(".")[2] for n in names if n and
                             n.startswith("odelab.report.")}  # fmt: skip
    assert "wandb_io" in edges["sources"]

    def visit(m: str, path: tuple[str, ...]) -> None:
        assert m not in path, " -> ".join([*path, m])
        for n in edges[m]:
            visit(n, (*path, m))

    for m in modules:
        visit(m, ())


def test_committed_views_are_what_the_report_builds(tmp_path, capsys):
    """Every study view a paper registers is committed as experiments/<paper>/<view>.md and is
    what ``python -m odelab.report <paper> --view <view>`` rebuilds from its kept records."""
    from odelab.report.__main__ import main
    from odelab.report.table import papers
    from odelab.report.views import paper_views

    checked = []
    for paper in papers():
        for name in paper_views(paper):
            main([paper, "--view", name, "--out", str(tmp_path), "--quiet"])
            committed = ROOT / "experiments" / paper / f"{name}.md"
            assert (tmp_path / paper / f"{name}.md").read_text() == committed.read_text()
            checked.append(f"{paper}/{name}")
    assert {"lm_resnet/cpu_study", "meanfield/study", "yopo/cpu_repro"} <= set(checked)
    with pytest.raises(SystemExit):
        main(["lm_resnet", "--view", "no_such_view"])
    assert "its views: cpu_study, compression" in capsys.readouterr().err
