"""Mean-field ResNet: the 1/(L·M) scaling, the ODE limit, block orders, the shallow-ensemble
expansion, the digits data, the unit learning rate, and every experiment config under fdr."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from conftest import ROOT, SHARED_DATA
from odelab.papers.meanfield import (
    ConvUnits,
    MeanFieldClassifier,
    MeanFieldResMLP,
    MeanFieldResNet,
    r_squared,
)

COVERED_EXPERIMENTS = [
    "meanfield_digits_depth",
    "meanfield_resnet20_cifar10",
    "meanfield_resnet56_cifar10",
    "meanfield_resnet20_cifar10_standard",
    "meanfield_resnet56_cifar10_standard",
]


def mlp(**kw) -> MeanFieldResMLP:
    args = dict(in_dim=6, embed_dim=5, depth=4, units=3, num_classes=4)
    args.update(kw)
    return MeanFieldResMLP(**args).double()


# ---- the scaling, exactly ----------------------------------------------------------------------


def test_identical_units_make_the_branch_one_unit_over_L():
    """With all M units of a block equal, x_{l+1} = x_l + (1/L) U σ(W x_l + b) exactly."""
    torch.manual_seed(0)
    L, M = 5, 7
    net = mlp(depth=L, units=M)
    with torch.no_grad():
        for p in (net.W, net.b, net.U):
            p.copy_(p[:, :1].expand_as(p))
    x = torch.randn(3, 6, dtype=torch.float64)
    h = net.embed(x)
    for k in range(L):
        h = h + torch.tanh(h @ net.W[k, 0] + net.b[k, 0])[:, None] * net.U[k, 0] / L
    torch.testing.assert_close(net.state(x), h, rtol=1e-13, atol=1e-13)
    assert net.scale == 1.0 / (L * M)


def test_standard_scaling_is_a_plain_sum_of_units():
    torch.manual_seed(1)
    net = mlp(scaling="standard", activation="relu")
    x = torch.randn(3, 6, dtype=torch.float64)
    h = net.embed(x)
    for k in range(net.depth):
        W, b, U = net.W[k], net.b[k], net.U[k]
        units = [torch.relu(h @ W[m] + b[m])[:, None] * U[m] for m in range(3)]
        h = h + sum(units)
    torch.testing.assert_close(net.state(x), h, rtol=1e-13, atol=1e-13)
    assert net.scale == 1.0
    # standard init: output weights of variance 1/M; mean field: O(1) particles
    big = MeanFieldResMLP(depth=8, units=400, scaling="standard")
    assert abs(big.U.std().item() - 1 / math.sqrt(400)) < 0.005
    assert abs(MeanFieldResMLP(depth=8, units=400).U.std().item() - 1.0) < 0.05


def _smooth_params(M: int, d: int, seed: int = 0):
    """θ_m(t) = A_m + t B_m for W, b and U: a depth-dependent measure ρ(θ, t)."""
    g = torch.Generator().manual_seed(seed)
    rnd = lambda *s: torch.randn(*s, generator=g, dtype=torch.float64)  # noqa: E731
    A = {"W": rnd(M, d) / math.sqrt(d), "b": rnd(M), "U": rnd(M, d)}
    B = {"W": rnd(M, d) / math.sqrt(d), "b": rnd(M), "U": rnd(M, d)}
    return lambda t: {k: A[k] + t * B[k] for k in A}


def _rhs(theta, x):
    """dX/dt = (1/M) Σ_m U_m(t) tanh(W_m(t) X + b_m(t))."""
    return torch.tanh(x @ theta["W"].T + theta["b"]) @ theta["U"] / theta["b"].numel()


def _rk4(params, x, steps: int):
    h = 1.0 / steps
    for i in range(steps):
        t = i * h
        k1 = _rhs(params(t), x)
        k2 = _rhs(params(t + h / 2), x + h / 2 * k1)
        k3 = _rhs(params(t + h / 2), x + h / 2 * k2)
        k4 = _rhs(params(t + h), x + h * k3)
        x = x + h / 6 * (k1 + 2 * k2 + 2 * k3 + k4)
    return x


def test_mean_field_net_is_forward_euler_on_the_ode_and_converges_at_order_one():
    """Blocks l = 0..L-1 holding θ(l/L): x_L -> X(1) of dX/dt = ∫ f(X, θ) ρ(θ, t) dθ, error O(1/L),
    against RK4 with 2,000 steps in float64."""
    M, d = 6, 4
    params = _smooth_params(M, d)
    x_in = torch.randn(5, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    errors = {}
    for L in (8, 16, 32, 64):
        net = mlp(depth=L, units=M, embed_dim=d)
        with torch.no_grad():
            for k in range(L):
                for name, value in params(k / L).items():
                    getattr(net, name)[k] = value
        x0 = net.embed(x_in).detach()
        exact = _rk4(params, x0, 2000)
        errors[L] = (net.state(x_in).detach() - exact).norm().item()
    ratios = [errors[L] / errors[2 * L] for L in (8, 16, 32)]
    assert all(1.7 < r < 2.3 for r in ratios), (errors, ratios)
    assert errors[64] < 2e-2


# ---- block order -------------------------------------------------------------------------------


def test_block_order_fixed_shuffle_and_explicit():
    torch.manual_seed(3)
    net = mlp(depth=6)
    x = torch.randn(4, 6, dtype=torch.float64)
    net.eval()
    torch.testing.assert_close(net(x, order=list(range(6))), net(x), rtol=0, atol=0)
    assert not torch.allclose(net(x, order=[5, 4, 3, 2, 1, 0]), net(x))
    with pytest.raises(ValueError, match="not a permutation"):
        net(x, order=[0, 0, 1, 2, 3, 4])
    net.block_order = "shuffle"
    torch.testing.assert_close(net(x), net(x), rtol=0, atol=0)  # eval: the fixed order
    net.train()
    outs = [net(x) for _ in range(6)]
    assert any(not torch.allclose(outs[0], o) for o in outs[1:])
    with pytest.raises(ValueError, match="block_order"):
        MeanFieldResMLP(block_order="random")


def test_conv_orders_keep_transitions_first():
    net = MeanFieldResNet(depth=20, units=2, widths=(4, 8, 8))
    assert net.stages == [((), (0, 1, 2)), ((3,), (4, 5)), ((6,), (7, 8))]
    g = torch.Generator().manual_seed(0)
    for _ in range(20):
        order = net.sample_order(g)
        assert order[3] == 3 and order[6] == 6
        assert sorted(order[:3]) == [0, 1, 2] and sorted(order[4:6]) == [4, 5]


# ---- the shallow-ensemble (first-order) expansion ----------------------------------------------


def test_first_order_expansion_is_exact_for_one_block_and_second_order_accurate():
    torch.manual_seed(4)
    x = torch.randn(8, 6, dtype=torch.float64)
    one = mlp(depth=1)
    torch.testing.assert_close(one.first_order(x), one(x), rtol=1e-12, atol=1e-12)
    net = mlp(depth=6)
    errs = []
    for eps in (0.1, 0.05, 0.025):
        with torch.no_grad():
            net.scale = eps / 18
        errs.append((net.first_order(x) - net(x)).abs().max().item())
    # residual of the expansion is O(s²): halving s quarters it
    assert all(3.5 < a / b < 4.5 for a, b in zip(errs, errs[1:])), errs


def test_conv_first_order_is_exact_with_one_movable_block_per_stage():
    """Depth 8: stage 1 has one block, stages 2-3 only their transition block."""
    torch.manual_seed(5)
    net = MeanFieldResNet(depth=8, units=3, widths=(4, 6, 8)).double().eval()
    x = torch.randn(2, 3, 12, 12, dtype=torch.float64)
    torch.testing.assert_close(net.first_order(x), net(x), rtol=1e-12, atol=1e-12)
    deep = MeanFieldResNet(depth=20, units=2, widths=(4, 6, 8)).double().eval()
    assert not torch.allclose(deep.first_order(x), deep(x))


def test_r_squared():
    z = torch.tensor([[1.0], [2.0], [3.0]], dtype=torch.float64)
    assert r_squared(z, z).item() == 1.0
    assert r_squared(z, torch.full_like(z, 2.0)).item() == pytest.approx(0.0)


# ---- convolutional form ------------------------------------------------------------------------


def test_conv_units_sum_and_identical_units():
    torch.manual_seed(6)
    one = ConvUnits(4, 5, units=1).double().eval()
    three = ConvUnits(4, 5, units=3).double().eval()
    with torch.no_grad():
        three.pre.load_state_dict(one.pre.state_dict())
        three.conv1.weight.copy_(one.conv1.weight.repeat(3, 1, 1, 1))
        three.conv2.weight.copy_(one.conv2.weight.repeat(3, 1, 1, 1))
        for name in ("weight", "bias", "running_mean", "running_var"):
            getattr(three.bn1, name).copy_(getattr(one.bn1, name).repeat(3))
    u = torch.randn(2, 4, 6, 6, dtype=torch.float64)
    torch.testing.assert_close(three(u), 3 * one(u), rtol=1e-12, atol=1e-12)
    units = three.unit_outputs(u)
    assert units.shape == (2, 3, 5, 6, 6)
    torch.testing.assert_close(units[:, 2], one(u), rtol=1e-12, atol=1e-12)


def test_conv_one_unit_standard_is_the_preact_resnet():
    """units=1, scaling=standard reproduces the foundation's pre-activation ResNet exactly."""
    from odelab.nn import PreActBasicBranch

    torch.manual_seed(7)
    net = MeanFieldResNet(depth=14, units=1, widths=(4, 8, 8), scaling="standard").double()
    x = torch.randn(2, 3, 16, 16, dtype=torch.float64)
    for mode in ("train", "eval"):
        getattr(net, mode)()
        u = net.stem(x)
        for b, blk in enumerate(net.blocks):
            ref = PreActBasicBranch(blk.in_planes, blk.out_planes, blk.stride).double()
            ref.train(net.training)
            ref[0].load_state_dict(blk.pre[0].state_dict())
            ref[2].weight.data.copy_(blk.conv1.weight)
            ref[3].load_state_dict(blk.bn1.state_dict())
            ref[5].weight.data.copy_(blk.conv2.weight)
            skip = net.projections[str(b)](u) if str(b) in net.projections else u
            u = skip + ref(u)
        want = net.fc(net.head(u))
        torch.testing.assert_close(net(x), want, rtol=1e-10, atol=1e-10)


def test_conv_mean_field_scale_and_bad_depth():
    net = MeanFieldResNet(depth=56, units=4)
    assert net.num_blocks == 27 and net.scale == 1 / (27 * 4)
    with pytest.raises(ValueError, match="6n\\+2"):
        MeanFieldResNet(depth=21)


# ---- the unit learning rate --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("scaling", "block_lr", "mult"),
    [
        ("mean_field", "auto", 48.0),
        ("standard", "auto", 1.0),
        ("standard", "LM", 48.0),
        ("mean_field", 2.0, 2.0),
    ],
)
def test_unit_parameters_get_the_block_lr(scaling, block_lr, mult):
    from functools import partial

    net = MeanFieldResMLP(depth=4, units=12, scaling=scaling, embed_trainable=False)
    module = MeanFieldClassifier(
        net=net, optimizer=partial(torch.optim.SGD, lr=0.1), block_lr=block_lr
    )
    opt = module.configure_optimizers()
    lrs = {id(p): g["lr"] for g in opt.param_groups for p in g["params"]}
    assert lrs[id(net.W)] == pytest.approx(0.1 * mult)
    assert lrs[id(net.readout.weight)] == pytest.approx(0.1)
    assert id(net.embed.weight) not in lrs  # frozen
    with pytest.raises(ValueError, match="block_lr"):
        MeanFieldClassifier(net=net, optimizer=partial(torch.optim.SGD, lr=0.1), block_lr="x")


# ---- data --------------------------------------------------------------------------------------


def test_digits_datamodule():
    from odelab.data import DigitsDataModule

    dm = DigitsDataModule(val_size=180, seed=0, batch_size=64)
    dm.setup("fit")
    dm.setup("test")
    n_train, n_val, n_test = (len(d) for d in (dm.data_train, dm.data_val, dm.data_test))
    assert (n_train + n_val, n_val, n_test) == (1797 - n_test, 180, 359)
    x, y = dm.data_test.tensors
    assert x.dtype == torch.uint8 and x.shape[1:] == (1, 8, 8) and int(x.max()) == 255
    assert np.bincount(y.numpy()).min() >= 35  # stratified: every class about 36
    train_x = dm.data_train.tensors[0].float() / 255
    assert abs(train_x.mean().item() - dm.mean[0]) < 0.01


# ---- every experiment config under fdr, and one short real run ---------------------------------


@pytest.fixture(scope="module")
def tiny_cifar(tmp_path_factory):
    from canonical_data import write_cifar10

    root = tmp_path_factory.mktemp("data")
    write_cifar10(root, n_per_batch=8)
    return root


@pytest.mark.parametrize("experiment", COVERED_EXPERIMENTS)
def test_experiment_fast_dev_run(experiment, run_experiment, tiny_cifar):
    overrides = [
        f"experiment={experiment}",
        "debug=fdr",
        "logger=csv",
        f"paths.data_dir={tiny_cifar}",
        "data.batch_size=4",
        "model.eval_permutations=2",
    ]
    if "cifar10" in experiment:  # the configs' depth, units and scaling; narrow for CPU time
        overrides += ["model.net.widths=[4,8,8]", "model.net.units=2"]
    _, out = run_experiment(overrides)
    res = json.loads((out / "results.json").read_text())
    assert res["status"] == "finished" and res["paper"] == "meanfield"
    assert res["experiment"] == experiment
    for key in ("test/acc", "test/perm_acc", "test/ensemble_r2", "test/residual_share"):
        assert math.isfinite(res["metrics"][key]), key
    summary = res["model_summary"]
    assert summary["scaling"] == ("standard" if experiment.endswith("standard") else "mean_field")
    assert len(res["train_loss_curve"]) == 1


def test_digits_mean_field_trains(run_experiment):
    """A real (short) run: L = 6 mean-field blocks on the digits learn well above chance."""
    _, out = run_experiment(
        [
            "experiment=meanfield_digits_depth",
            "logger=csv",
            "model.net.depth=6",
            "model.net.units=8",
            "trainer.max_epochs=3",
            "trainer.accelerator=cpu",
        ]
    )
    res = json.loads((out / "results.json").read_text())
    curve = res["train_loss_curve"]
    assert len(curve) == 3 * 10 and curve[-1] < 0.5 * curve[0]
    assert res["metrics"]["test/acc"] > 0.6
    assert res["model_summary"]["block_lr_multiplier"] == 6 * 8


@pytest.mark.skipif(
    not (SHARED_DATA / "cifar10" / "cifar-10-batches-py" / "test_batch").is_file(),
    reason="the local CIFAR-10 copy (../shared/data/cifar10) is absent",
)
def test_cifar_config_reads_the_local_real_subset(run_experiment):
    _, out = run_experiment(
        [
            "experiment=meanfield_resnet20_cifar10",
            "debug=fdr",
            "logger=csv",
            f"paths.data_dir={SHARED_DATA}",
            "data.train_files=[data_batch_1]",
            "data.verify=off",
            "data.batch_size=8",
            "model.eval_permutations=1",
            "model.net.widths=[4,8,8]",
        ]
    )
    assert json.loads((out / "results.json").read_text())["status"] == "finished"


def test_kept_study_runs_rebuild_the_readme_numbers(tmp_path):
    """The study records kept in experiments/meanfield/runs aggregate to the README's numbers."""
    from odelab.report.views import render_view

    runs = ROOT / "experiments" / "meanfield" / "runs"
    if not any(runs.glob("*/*.json")):
        pytest.skip("no kept study records yet")
    out, _ = render_view("meanfield", "study", tmp_path)
    readme = (ROOT / "experiments" / "meanfield" / "README.md").read_text()
    rows = [line for line in out.splitlines() if line.startswith("| ") and "---" not in line]
    assert rows
    for line in rows:
        assert line in readme, line


@pytest.mark.slow
def test_resume_continues_the_loss_curve(run_experiment, tmp_path):
    base = [
        "experiment=meanfield_digits_depth",
        "logger=csv",
        "model.net.depth=2",
        "model.net.units=4",
        "trainer.accelerator=cpu",
        "model.eval_permutations=1",
    ]
    _, first = run_experiment([*base, "trainer.max_epochs=1"], name="first")
    ckpt = first / "checkpoints" / "last.ckpt"
    _, out = run_experiment([*base, "trainer.max_epochs=2", f"ckpt_path={ckpt}"], name="second")
    curve = json.loads((out / "results.json").read_text())["train_loss_curve"]
    first_curve = json.loads((first / "results.json").read_text())["train_loss_curve"]
    assert len(curve) == 20 and curve[:10] == first_curve


def test_std_of_a_diverged_run_is_not_an_error():
    from odelab.papers.meanfield.module import _sd

    assert _sd([1.0, 3.0]) == pytest.approx(math.sqrt(2))
    assert not math.isfinite(_sd([float("inf"), 1.0]))
    assert _sd([2.0]) == 0.0
