"""YOPO and its peers: networks, attack invariants, YOPO's gradients against an independent
float64 reference, every experiment under debug=fdr, the training clock, the torchattacks check."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from conftest import ROOT as ROOT_DIR
from conftest import SHARED_DATA
from odelab.papers.yopo import (
    FGSM,
    PGD,
    AdversarialTraining,
    LayerOneNet,
    PreActResNet18,
    SmallCNN,
    WideResNet,
    yopo_step,
)

COVERED_EXPERIMENTS = [
    "yopo_mnist",
    "pgd40_mnist",
    "yopo_cifar10",
    "pgd10_cifar10",
    "free8_cifar10",
    "fast_cifar10",
    "yopo_wrn34_cifar10",
    "pgd7_wrn34_cifar10",
    "trades_cifar10",
    "trades_yopo_cifar10",
]
MNIST_RAW = SHARED_DATA / "mnist" / "raw"


pytestmark = pytest.mark.usefixtures("one_thread")  # many tiny ops: see conftest


# ------------------------------------------------------------------ networks
@pytest.mark.parametrize(
    ("net", "params"),
    [  # official layouts: TRADES SmallCNN, kuangliu/YOPO PreAct-R18 (+1,024 with the final BN),
        # TRADES WRN-34-10
        (lambda: SmallCNN(), 312_202),
        (lambda: PreActResNet18(final_bn=False), 11_171_146),
        (lambda: PreActResNet18(final_bn=True), 11_171_146 + 2 * 512),
        (lambda: WideResNet(34, 10), 46_160_474),
    ],
    ids=["smallcnn", "preact18", "preact18_bn", "wrn34_10"],
)
def test_parameter_counts_match_the_official_networks(net, params):
    assert sum(p.numel() for p in net().parameters()) == params


def test_layer_one_is_declared_and_forward_with_z1_agrees():
    torch.manual_seed(0)
    cases = [
        (SmallCNN(width=0.25), (2, 1, 28, 28), (2, 8, 26, 26)),
        (PreActResNet18(width=0.125), (2, 3, 32, 32), (2, 8, 32, 32)),
        (WideResNet(10, 1), (2, 3, 32, 32), (2, 16, 32, 32)),
    ]
    for net, shape, z1_shape in cases:
        net.eval()
        x = torch.rand(shape)
        logits, z1 = net.forward_with_z1(x)
        assert z1.shape == z1_shape
        assert torch.allclose(logits, net(x))
    assert isinstance(SmallCNN().layer_one[1], nn.ReLU)  # f_0 = ReLU(conv 1->32)
    with pytest.raises(ValueError, match="depth"):
        WideResNet(33)


def test_normalisation_lives_in_layer_one():
    net = PreActResNet18(width=0.125, mean=[0.5, 0.5, 0.5], std=[0.25, 0.25, 0.25]).eval()
    conv = net.layer_one[1]
    x = torch.rand(2, 3, 32, 32)
    assert torch.allclose(net.layer_one(x), conv((x - 0.5) / 0.25), atol=1e-6)


# ------------------------------------------------------------------ attacks
def _tiny_cnn(seed=0):
    torch.manual_seed(seed)
    net = SmallCNN(width=0.25)
    with torch.no_grad():  # the official last layer starts at zero: no input gradient yet
        net.other_layers[1][-1].weight.normal_(0, 0.3)
    return net


@pytest.mark.parametrize("attack", ["pgd", "pgd_restarts", "fgsm", "fgsm_rs"])
@pytest.mark.parametrize("mode", ["train", "eval"])
def test_adversarial_examples_stay_in_the_ball_and_the_image_range(attack, mode):
    net = _tiny_cnn().train(mode == "train")
    x = torch.rand(8, 1, 28, 28)
    x[:, :, :4] = 0.0  # pixels on the box's faces
    x[:, :, -4:] = 1.0
    y = torch.arange(8) % 10
    eps = 0.3
    atk = {
        "pgd": PGD(net, eps, 0.05, 10),
        "pgd_restarts": PGD(net, eps, 0.05, 3, restarts=3),
        "fgsm": FGSM(net, eps),
        "fgsm_rs": FGSM(net, eps, alpha=1.25 * eps, random_start=True),
    }[attack]
    adv = atk(x, y)
    assert (adv - x).abs().max() <= eps + 1e-6
    assert adv.min() >= 0.0 and adv.max() <= 1.0
    assert (adv - x).abs().max() > 0.05  # it moved
    assert net.training == (mode == "train")  # mode restored


def test_pgd_raises_the_loss_and_fgsm_is_one_signed_step():
    net = _tiny_cnn(1).eval()
    x, y = torch.rand(16, 1, 28, 28) * 0.5 + 0.25, torch.arange(16) % 10
    clean = F.cross_entropy(net(x), y)
    adv = PGD(net, 0.1, 0.02, 10, random_start=False)(x, y)
    assert F.cross_entropy(net(adv), y) > clean
    x_req = x.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(F.cross_entropy(net(x_req), y), x_req)
    want = torch.clamp(x + 0.1 * g.sign(), 0, 1)
    assert torch.allclose(FGSM(net, 0.1)(x, y), want)


def _ipgd_reference(net, x, y, eps, alpha, steps):
    """The YOPO repo's ``IPGD.attack`` (mean 0, std 1) written out: eta ~ U(-eps, eps) with no
    clamp; each step takes the CE gradient at x + eta, adds alpha sign(g), clamps the image to
    [0, 1] *then* clips eta to the eps-ball; the result is clamped to [0, 1]."""
    net.eval()
    eta = torch.empty_like(x).uniform_(-eps, eps)
    for _ in range(steps):
        adv = (x + eta).requires_grad_(True)
        (g,) = torch.autograd.grad(F.cross_entropy(net(adv), y), adv)
        eta = torch.clamp(torch.clamp(adv.detach() + alpha * g.sign(), 0, 1) - x, -eps, eps)
    return torch.clamp(x + eta, 0, 1)


def test_pgd_random_start_follows_the_yopo_repo_unless_clamped():
    """``random_start_clamp=False`` is the YOPO repo's IPGD: the same adversarial examples (same
    random draw, float64), the first gradient taken at the unclamped start; ``True`` (the
    evaluation's, torchattacks') takes it at the start projected to [0, 1]."""
    net = _tiny_cnn(3).double()
    x = torch.rand(8, 1, 28, 28, dtype=torch.float64)
    x[:, :, :6] = 0.0  # background pixels, as MNIST's: x + U(-eps, eps) < 0 for about half
    y = torch.arange(8) % 10
    first_inputs = []
    hook = net.register_forward_pre_hook(lambda _m, inp: first_inputs.append(inp[0].detach()))
    torch.manual_seed(7)
    ours = PGD(net, 0.3, 0.05, 10, random_start_clamp=False)(x, y)
    torch.manual_seed(7)
    theirs = _ipgd_reference(net, x, y, 0.3, 0.05, 10)
    assert torch.allclose(ours, theirs, atol=1e-12, rtol=0)
    assert first_inputs[0].min() < -0.1  # the first gradient saw the unclamped start
    first_inputs.clear()
    torch.manual_seed(7)
    clamped = PGD(net, 0.3, 0.05, 10)(x, y)
    hook.remove()
    assert first_inputs[0].min() >= 0.0 and first_inputs[0].max() <= 1.0
    assert not torch.allclose(clamped, ours)  # a different first gradient, different examples
    for adv in (ours, clamped):
        assert (adv - x).abs().max() <= 0.3 + 1e-12 and adv.min() >= 0 and adv.max() <= 1
    # no steps: the returned start is projected either way
    torch.manual_seed(7)
    start = PGD(net, 0.3, 0.05, 0, random_start_clamp=False)(x, y)
    assert start.min() >= 0.0 and (start - x).abs().max() <= 0.3 + 1e-12


# ------------------------------------------------------------------ YOPO vs a float64 reference
class TinyNet(LayerOneNet):
    """f_0(x) = tanh(W vec(x) + b); then a linear-tanh-linear head."""

    num_classes = 3

    def __init__(self):
        super().__init__()
        self.layer_one = nn.Sequential(nn.Flatten(), nn.Linear(4, 5), nn.Tanh())
        self.other_layers = nn.Sequential(nn.Linear(5, 4), nn.Tanh(), nn.Linear(4, 3))


def _reference_yopo(net, x, y, eta, m, n, sigma, eps, hamiltonian_grad=True):
    """YOPO-m-n written out by hand: the Hamiltonian's gradients from their closed forms for
    f_0 = tanh(W x + b), the CE parts by plain autograd on copies of the parameters."""
    W = net.layer_one[1].weight.detach()
    b = net.layer_one[1].bias.detach()
    names = [k for k, _ in net.named_parameters()]
    grads = {k: torch.zeros_like(p) for k, p in net.named_parameters()}
    flat = x.flatten(1)
    for _ in range(m):
        params = {k: p.detach().clone().requires_grad_(True) for k, p in net.named_parameters()}
        xe = (x + eta).flatten(1)
        z1 = torch.tanh(xe @ params["layer_one.1.weight"].T + params["layer_one.1.bias"])
        h = torch.tanh(z1 @ params["other_layers.0.weight"].T + params["other_layers.0.bias"])
        logits = h @ params["other_layers.2.weight"].T + params["other_layers.2.bias"]
        loss = F.cross_entropy(logits, y)
        *g, g_z1 = torch.autograd.grad(loss, [params[k] for k in names] + [z1])
        for k, gk in zip(names, g):
            grads[k] += gk
        p = -g_z1
        e = eta.flatten(1)
        for _ in range(n):
            u = flat + e
            xc = u.clamp(0, 1)
            s = p * (1 - torch.tanh(xc @ W.T + b) ** 2)  # dH/da, a = W x + b
            dh = (s @ W) * ((u >= 0) & (u <= 1))  # through the clamp (torch: inclusive)
            e = torch.clamp(e - sigma * dh.sign(), -eps, eps)
            e = torch.clamp(flat + e, 0, 1) - flat
        eta = e.view_as(x)
        if hamiltonian_grad:  # d(-H)/dW, d(-H)/db at the new eta
            xc = (flat + e).clamp(0, 1)
            s = p * (1 - torch.tanh(xc @ W.T + b) ** 2)
            grads["layer_one.1.weight"] -= s.T @ xc
            grads["layer_one.1.bias"] -= s.sum(0)
    return eta, grads


@pytest.mark.parametrize(("m", "n"), [(1, 1), (3, 4), (5, 3)])
def test_yopo_gradients_equal_the_float64_reference(m, n):
    torch.manual_seed(m * 10 + n)
    net = TinyNet().double()
    x = torch.rand(6, 1, 2, 2, dtype=torch.float64)
    x[0] = 0.0  # on the box's faces
    x[1] = 1.0
    y = torch.arange(6) % 3
    eps, sigma = 0.3, 0.07
    eta0 = torch.empty_like(x).uniform_(-eps, eps)
    eta_ref, g_ref = _reference_yopo(net, x, y, eta0, m, n, sigma, eps)
    net.zero_grad()
    eta, losses, _ = yopo_step(net, x, y, eta0, m, n, sigma, eps)
    assert len(losses) == m
    assert torch.allclose(eta, eta_ref, atol=1e-12)
    assert (eta.abs() <= eps + 1e-12).all() and ((x + eta) >= 0).all() and ((x + eta) <= 1).all()
    assert not torch.equal(eta, eta0)
    for k, p in net.named_parameters():
        assert torch.allclose(p.grad, g_ref[k], atol=1e-5, rtol=0), k
        assert torch.allclose(p.grad, g_ref[k], atol=1e-10), k  # in fact to round-off


def test_yopo_without_inner_steps_or_hamiltonian_is_m_times_the_ce_gradient():
    torch.manual_seed(0)
    net = TinyNet().double()
    x, y = torch.rand(5, 1, 2, 2, dtype=torch.float64), torch.arange(5) % 3
    eta0 = torch.empty_like(x).uniform_(-0.2, 0.2)
    yopo_step(net, x, y, eta0, 4, 0, 0.1, 0.2, hamiltonian_grad=False)
    want = torch.autograd.grad(F.cross_entropy(net(x + eta0), y), list(net.parameters()))
    for p, w in zip(net.parameters(), want):
        assert torch.allclose(p.grad, 4 * w, atol=1e-12)


def _module(method, net=None, **kw):
    from functools import partial

    net = net or TinyNet()
    opt = partial(torch.optim.SGD, lr=0.1, momentum=0.9)
    return AdversarialTraining(net, opt, method=method, eps=0.3, **kw)


def test_one_optimiser_step_per_minibatch_and_the_pass_counts():
    """YOPO-5-3: 5 full passes + 5*(3+1) layer-one passes (no monitor forward), one step of
    each optimiser; PGD-10 (adv + clean): 12 forwards and backwards; Free-4: 4 steps."""
    import lightning.pytorch as pl

    torch.manual_seed(0)
    x, y = torch.rand(8, 1, 2, 2), torch.arange(8) % 3
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=8)
    expect = {
        "yopo": ({"m": 5, "n": 3}, 2, (5, 5, 5 * 3 + 5 + 0, 5 * 3 + 5)),
        "pgd": ({"steps": 10}, 1, (12, 12, 0, 0)),
        "free": ({"m": 4}, 4, (4, 4, 0, 0)),
        "fast": ({}, 1, (2, 2, 0, 0)),
        "natural": ({}, 1, (1, 1, 0, 0)),
        # TRADES-10: clean forward + 10 KL steps + clean and adv forwards of the loss
        "trades": ({"steps": 10}, 1, (1 + 10 + 2, 10 + 2, 0, 0)),
        # TRADES-YOPO-3-4: clean + 3 full passes (z1-gradient only), 3*4 layer-one steps,
        # then the TRADES loss's two forwards and one backward through both
        "trades_yopo": ({"m": 3, "n": 4}, 2, (1 + 3 + 2, 3 + 2, 12, 12)),
    }
    for method, (cfg, steps, passes) in expect.items():
        key = "yopo" if method == "trades_yopo" else method
        kw = {key: cfg} if key in ("yopo", "pgd", "free", "trades") else {}
        mod = _module(method, **kw)
        trainer = pl.Trainer(max_epochs=1, logger=False, enable_checkpointing=False,
                             enable_progress_bar=False, enable_model_summary=False)  # fmt: skip
        trainer.fit(mod, loader)
        assert trainer.global_step == steps, method
        p = mod.passes()
        got = (p["full_fwd"], p["full_bwd"], p["layer_one_fwd"], p["layer_one_bwd"])
        assert got == passes, (method, got)


def test_bad_method_and_objective_are_clear_errors():
    with pytest.raises(ValueError, match="model.method"):
        _module("mart")
    with pytest.raises(ValueError, match="pgd.objective"):
        _module("pgd", pgd={"objective": "clean"})
    with pytest.raises(ValueError, match="unknown keys"):
        _module("yopo", yopo={"k": 5})


def test_trades_yopo_full_passes_see_x_plus_eta_unclamped():
    """The official TRADES-YOPO loop runs ``net(data + eta)``: the first full pass at the
    0.001 N(0, 1) start is not clamped to [0, 1]; the layer-one steps then keep x + eta in it."""
    from odelab.papers.yopo.yopo import trades_yopo_adversary

    torch.manual_seed(0)
    net = TinyNet().double().eval()
    x = torch.rand(6, 1, 2, 2, dtype=torch.float64)
    x[:3] = 0.0
    eta0 = 0.001 * torch.randn_like(x)
    seen = []
    hook = net.other_layers.register_forward_pre_hook(lambda _m, inp: seen.append(inp[0]))
    first = []
    h1 = net.layer_one.register_forward_pre_hook(lambda _m, inp: first.append(inp[0].detach()))
    eta = trades_yopo_adversary(net, x, eta0, 3, 2, 0.007, 0.031)
    hook.remove()
    h1.remove()
    full_inputs = [first[i] for i in range(len(first)) if i in _full_pass_indices(3, 2)]
    assert torch.equal(full_inputs[0], x + eta0) and full_inputs[0].min() < 0
    for inp in full_inputs[1:]:
        assert inp.min() >= 0 and inp.max() <= 1
    assert ((x + eta) >= 0).all() and ((x + eta) <= 1).all() and eta.abs().max() <= 0.031 + 1e-12
    assert len(seen) == 1 + 3  # the clean softmax and m full passes


def _full_pass_indices(m, n):
    """Positions of the full passes among layer one's forwards in trades_yopo_adversary: the
    clean pass, then per outer step one full pass followed by n layer-one steps."""
    return [1 + j * (n + 1) for j in range(m)]


OFFICIAL_LOOPS = {  # (experiment): what the official config.py + train.py run, read in their code
    # YOPO repo: `while now_epoch <= num_epochs` from 0 runs num_epochs + 1 epochs
    "yopo_mnist": {"trainer.max_epochs": 41, "data.batch_size": 256,
                   "trainer.check_val_every_n_epoch": 1},
    "pgd40_mnist": {"trainer.max_epochs": 57, "data.batch_size": 256,
                    "model.optimizer.momentum": 0.9, "model.scheduler.milestones": [50, 55],
                    "model.pgd.random_start_clamp": False, "trainer.check_val_every_n_epoch": 1},
    "yopo_cifar10": {"trainer.max_epochs": 37, "data.batch_size": 256,
                     "trainer.check_val_every_n_epoch": 2},
    "yopo_wrn34_cifar10": {"trainer.max_epochs": 37, "model.optimizer.lr": 0.08},
    "pgd10_cifar10": {"trainer.max_epochs": 106, "data.batch_size": 256,
                      "model.scheduler.milestones": [75, 90, 100],
                      "model.pgd.random_start_clamp": False,
                      "trainer.check_val_every_n_epoch": 5},
    "trades_yopo_cifar10": {"trainer.max_epochs": 106, "data.batch_size": 256,
                            "model.eval_attack.eps": 8 / 255,
                            "trainer.check_val_every_n_epoch": 10},
    # TRADES baseline: `for epoch in range(1, epochs + 1)`, lr x0.1 from 1-based epoch 75
    "trades_cifar10": {"trainer.max_epochs": 100, "data.batch_size": 200,
                       "data.eval_batch_size": 256, "model.scheduler.milestones": [74],
                       "model.eval_attack.eps": 8 / 255, "trainer.check_val_every_n_epoch": 1},
    # Madry's and Free's TF loops: `for ii in range(80000)`; crop from a 36x36 zero-padded image
    "pgd7_wrn34_cifar10": {"trainer.max_steps": 80000, "data.batch_size": 128, "data.pad": 2,
                           "model.pgd.random_start_clamp": True},
    "free8_cifar10": {"trainer.max_steps": 80000, "data.batch_size": 128, "data.pad": 2},
    # Fast: `for epoch in range(args.epochs)`, 15, batch 128, crop pad 4
    "fast_cifar10": {"trainer.max_epochs": 15, "data.batch_size": 128, "data.pad": 4},
}  # fmt: skip


@pytest.mark.parametrize("experiment", sorted(OFFICIAL_LOOPS))
def test_experiments_run_as_long_as_the_official_loops(experiment, tmp_path):
    from omegaconf import OmegaConf

    from conftest import compose

    assert set(OFFICIAL_LOOPS) == set(COVERED_EXPERIMENTS)
    cfg = compose([f"experiment={experiment}"], tmp_path)
    for key, want in OFFICIAL_LOOPS[experiment].items():
        got = OmegaConf.select(cfg, key)
        got = OmegaConf.to_object(got) if OmegaConf.is_config(got) else got
        assert got == pytest.approx(want), (experiment, key, got)


def test_trades_lr_milestone_74_is_the_official_lr_function():
    """The TRADES baseline's adjust_learning_rate(epoch) for 1-based epochs 1..100 against a
    MultiStepLR([74]) stepped after each 0-based epoch, as our module steps it."""

    def official(epoch):  # its if/elif chain: only the first branch ever fires
        lr = 0.1
        if epoch >= 75:
            lr = 0.1 * 0.1
        elif epoch >= 90:
            lr = 0.1 * 0.01
        return lr

    opt = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=0.1)
    sched = torch.optim.lr_scheduler.MultiStepLR(opt, milestones=[74], gamma=0.1)
    for epoch in range(100):
        assert opt.param_groups[0]["lr"] == pytest.approx(official(epoch + 1)), epoch
        opt.step()
        sched.step()


def test_eval_attack_eps_defaults_to_the_training_eps():
    mod = _module("pgd")
    assert mod.eval_attack().eps == 0.3
    mod = _module("trades", eval_attack={"eps": 8 / 255})
    assert mod.eval_attack().eps == pytest.approx(8 / 255) and mod.eps == 0.3


# ------------------------------------------------------------------ experiments under fdr
@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    from canonical_data import write_cifar10, write_mnist

    root = tmp_path_factory.mktemp("data")
    write_mnist(root, n_train=16, n_test=8)
    write_cifar10(root, n_per_batch=4)
    return root


SHRINK = {  # CPU-sized networks for the fdr runs (the configs' own sizes are paper sizes)
    "mnist": ["model.net.width=0.25"],
    "preact": ["model.net.width=0.125"],
    "wrn": ["model.net.depth=10", "model.net.widen=1"],
}


@pytest.mark.parametrize("experiment", COVERED_EXPERIMENTS)
def test_experiment_fast_dev_run(experiment, run_experiment, tiny_data):
    kind = (
        "mnist"
        if "mnist" in experiment
        else "wrn"
        if "wrn" in experiment or "free" in experiment
        else "preact"
    )  # noqa: E501
    overrides = [
        f"experiment={experiment}",
        "debug=fdr",
        "logger=csv",
        f"paths.data_dir={tiny_data}",
        "data.batch_size=4",
        "data.eval_batch_size=4",
        *SHRINK[kind],
    ]
    _, out = run_experiment(overrides)
    res = json.loads((out / "results.json").read_text())
    assert res["status"] == "finished" and res["paper"] == "yopo"
    m = res["metrics"]
    assert 0.0 <= m["test/robust_acc"] <= 1.0 and 0.0 <= m["test/acc"] <= 1.0
    assert m["time/train_s"] > 0 and m["passes/full_fwd"] >= 1
    assert (out / "time_curve.json").is_file()


def test_training_clock_curve_and_plot(run_experiment, tiny_data):
    """Two real epochs of YOPO-2-2: the curve has a point per validation, time only grows,
    the PNG is written, and evaluation is outside the clock."""
    _, out = run_experiment(
        [
            "experiment=yopo_mnist",
            "debug=limit",
            "logger=csv",
            f"paths.data_dir={tiny_data}",
            "data.batch_size=4",
            "data.eval_batch_size=4",
            "model.yopo.m=2",
            "model.yopo.n=2",
            *SHRINK["mnist"],
        ]
    )
    curve = json.loads((out / "time_curve.json").read_text())
    assert [p["epoch"] for p in curve] == [0, 1]
    assert 0 < curve[0]["train_s"] < curve[1]["train_s"]
    assert curve[1]["full_fwd"] == 2 * 4 * 2  # 4 batches per epoch, m = 2 full passes each
    assert {"val/robust_acc", "val/acc"} <= set(curve[0])
    res = json.loads((out / "results.json").read_text())
    assert res["metrics"]["time/train_s"] < res["wall_time_s"]
    assert (out / "time_curve.png").stat().st_size > 1000


# ------------------------------------------------------------------ trained-model checks
@pytest.fixture(scope="module")
def trained_mnist():
    """A SmallCNN (width 1/2) trained 150 steps of FGSM-RS on 6,000 real MNIST digits."""
    if not MNIST_RAW.is_dir():
        pytest.skip(f"real MNIST not at {MNIST_RAW} (shared data absent)")
    from odelab.data import MNISTDataModule

    dm = MNISTDataModule(str(SHARED_DATA), mean=[0.0], std=[1.0], train_subset=6000,
                         test_subset=500, batch_size=100)  # fmt: skip
    dm.setup("fit")
    torch.manual_seed(0)
    net = SmallCNN(width=0.5)
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    xs, ys = dm.data_train.tensors
    xs = xs.float() / 255
    net.train()
    for _ in range(150):
        idx = torch.randint(0, len(ys), (100,))
        x, y = xs[idx], ys[idx]
        adv = FGSM(net, 0.3, 0.375, random_start=True, eval_mode=False)(x, y)
        opt.zero_grad()
        F.cross_entropy(net(adv), y).backward()
        opt.step()
    xt, yt = dm.data_test.tensors
    return net.eval(), xt.float() / 255, yt


def _acc(net, x, y):
    with torch.no_grad():
        return (net(x).argmax(1) == y).float().mean().item()


@pytest.mark.slow
def test_robust_accuracy_below_clean_and_matches_torchattacks(trained_mnist):
    torchattacks = pytest.importorskip("torchattacks")
    net, x, y = trained_mnist
    clean = _acc(net, x, y)
    torch.manual_seed(1)
    ours = _acc(net, PGD(net, 0.3, 0.01, 20)(x, y), y)
    torch.manual_seed(2)
    theirs = _acc(net, torchattacks.PGD(net, eps=0.3, alpha=0.01, steps=20)(x, y), y)
    assert clean > 0.8
    assert ours <= clean and theirs <= clean
    assert 0.05 < ours < clean  # a non-trivial robust accuracy, so the comparison means something
    assert abs(ours - theirs) <= 0.015, (ours, theirs)


def test_robust_accuracy_is_below_clean_accuracy():
    """A model trained on a separable toy task: PGD can only lower its accuracy."""
    torch.manual_seed(0)
    net = SmallCNN(width=0.25, drop=0.0)
    x = torch.rand(64, 1, 28, 28) * 0.4
    y = torch.arange(64) % 2
    x[y == 1, :, 10:18, 10:18] += 0.5
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    for _ in range(40):
        opt.zero_grad()
        F.cross_entropy(net(x), y).backward()
        opt.step()
    net.eval()
    clean = _acc(net, x, y)
    for eps in (0.02, 0.1, 0.3):
        assert _acc(net, PGD(net, eps, eps / 4, 10)(x, y), y) <= clean
    assert clean > 0.9 and _acc(net, PGD(net, 0.3, 0.05, 10)(x, y), y) < clean


@pytest.mark.slow
def test_autoattack_is_available_on_a_few_images(trained_mnist):
    pytest.importorskip("torchattacks")
    from odelab.papers.yopo import autoattack_accuracy

    net, x, y = trained_mnist
    aa = autoattack_accuracy(net, x[:20], y[:20], 0.3)
    assert 0.0 <= aa <= _acc(net, x[:20], y[:20])


def test_no_torchvision_was_imported():
    import sys

    assert "torchvision" not in sys.modules
    assert Path(torch.__file__).exists()


def test_free_keeps_its_perturbation_across_minibatches():
    import lightning.pytorch as pl

    torch.manual_seed(0)
    x, y = torch.rand(12, 1, 2, 2), torch.arange(12) % 3
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=5)
    mod = _module("free", free={"m": 2})
    trainer = pl.Trainer(max_epochs=1, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False)  # fmt: skip
    trainer.fit(mod, loader)
    delta = mod._free_delta
    assert delta.shape == (5, 1, 2, 2)  # the full batch's buffer, the short last batch sliced
    assert delta.abs().max() <= 0.3 + 1e-7 and delta.abs().max() > 0
    assert trainer.global_step == 3 * 2  # every replay is an optimiser step


def test_training_clock_budget_and_process_clock(tmp_path):
    import lightning.pytorch as pl

    from odelab.callbacks import TrainClock

    with pytest.raises(ValueError, match="clock"):
        TrainClock(str(tmp_path), clock="gpu")
    x, y = torch.rand(16, 1, 2, 2), torch.arange(16) % 3
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=4)
    clock = TrainClock(str(tmp_path), clock="process", max_train_s=1e-12)
    trainer = pl.Trainer(max_epochs=3, min_epochs=0, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False,
                         callbacks=[clock])  # fmt: skip
    trainer.fit(_module("natural"), loader)
    assert trainer.global_step == 1  # the budget ran out after the first batch
    assert len(clock.batch_s) == 1 and clock.batch_s[0] > 0 and clock.batch_wall_s[0] > 0


def test_training_clock_writes_its_curve_when_the_fit_is_cut(tmp_path):
    """A fit that stops with an exception (as at SIGTERM) still leaves time_curve.json with the
    points so far (here the first epoch's validation)."""
    import lightning.pytorch as pl

    from odelab.callbacks import TrainClock

    class Cut(pl.Callback):
        def on_train_batch_end(self, trainer, *args):
            if trainer.current_epoch == 1:
                raise RuntimeError("cut")

    x, y = torch.rand(8, 1, 2, 2), torch.arange(8) % 3
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=4)
    clock = TrainClock(str(tmp_path))
    trainer = pl.Trainer(max_epochs=3, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False,
                         inference_mode=False, callbacks=[clock, Cut()])  # fmt: skip
    with pytest.raises(RuntimeError, match="cut"):
        trainer.fit(_module("natural"), loader, loader)
    curve = json.loads((tmp_path / "time_curve.json").read_text())
    assert [p["epoch"] for p in curve] == [0] and "val/robust_acc" in curve[0]


def test_time_marks_fall_where_the_clock_passes_them(tmp_path):
    from odelab.callbacks import TrainClock

    c = TrainClock(str(tmp_path), eval_every_s=10.0, eval_marks_s=[3.0, 25.0])
    assert c.last_mark(0.0, 2.9) is None and c.last_mark(0.0, 3.0) == 3.0
    assert c.last_mark(3.0, 9.99) is None and c.last_mark(9.5, 10.0) == 10.0
    assert c.last_mark(9.0, 26.0) == 25.0  # one batch passing 10, 20 and 25: one point, at 25
    assert c.last_mark(25.0, 29.0) is None and c.last_mark(29.0, 31.0) == 30.0
    assert TrainClock(str(tmp_path), eval_marks_s=[5]).last_mark(5.0, 1e9) is None
    assert not TrainClock(str(tmp_path)).marks_on
    with pytest.raises(ValueError, match="eval_every_s"):
        TrainClock(str(tmp_path), eval_every_s=0)
    with pytest.raises(ValueError, match="eval_marks_s"):
        TrainClock(str(tmp_path), eval_marks_s=[0.0, 1.0])


def test_time_marks_evaluate_the_test_split_with_pgd40_and_leave_training_alone(
    run_experiment, tiny_data
):
    """yopo_mnist for two short epochs with 4 of the 16 training digits held out for
    validation, so val != test: a time mark after the first batch and one at the end evaluate
    all 8 test digits with the experiment's PGD-40; the end point's clean accuracy is the final
    test's (same weights, same split); the trained weights equal a run without marks (the
    marks run in a forked RNG state)."""
    from odelab.papers.yopo import AdversarialTraining

    attacks = []
    orig = AdversarialTraining.eval_attack

    def spy(self):
        atk = orig(self)
        attacks.append((atk.steps, atk.alpha, atk.eps, atk.random_start))
        return atk

    base = ["experiment=yopo_mnist", "debug=limit", "logger=csv", f"paths.data_dir={tiny_data}",
            "data.batch_size=4", "data.eval_batch_size=4", "data.val_size=4",
            "model.yopo.m=2", "model.yopo.n=2", *SHRINK["mnist"]]  # fmt: skip
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(AdversarialTraining, "eval_attack", spy)
        _, out = run_experiment([*base, "callbacks.train_clock.eval_marks_s=[1e-9]"], "marks")
    _, plain = run_experiment(base, "plain")
    curve = json.loads((out / "time_curve.json").read_text())
    marks = [p for p in curve if "mark_s" in p]
    assert [p["mark_s"] for p in marks] == [1e-9, None]  # after batch 1, and at the end
    assert marks[0]["step"] == 2 and marks[0]["epoch"] == 0  # one batch: 2 optimiser steps
    assert [p["test_n"] for p in marks] == [8, 8]  # the test split (val holds 4 digits)
    assert all(0 <= p["test/robust_acc"] <= p["test/acc"] <= 1 for p in marks)
    assert marks[1]["train_s"] == curve[-1]["train_s"] > marks[0]["train_s"]
    assert (40, 0.01, 0.3, True) in attacks  # the experiment's PGD-40
    res = json.loads((out / "results.json").read_text())
    assert marks[1]["test/acc"] == pytest.approx(res["metrics"]["test/acc"], abs=1e-7)
    assert [p["epoch"] for p in curve if "val/robust_acc" in p] == [0, 1]  # validation kept
    w_marks = torch.load(out / "checkpoints" / "last.ckpt", weights_only=False)["state_dict"]
    w_plain = torch.load(plain / "checkpoints" / "last.ckpt", weights_only=False)["state_dict"]
    assert w_marks.keys() == w_plain.keys()
    for k in w_plain:
        assert torch.equal(w_marks[k], w_plain[k]), k


def test_kept_cpu_repro_records_rebuild_the_readme_numbers(tmp_path):
    """experiments/yopo/runs/cpu_repro holds the CPU reproduction's curves; the report's
    cpu_repro view turns them into the plateau, times and ratio quoted in the README."""
    from odelab.report.views import render_view

    root = Path(__file__).resolve().parents[1] / "experiments" / "yopo"
    out, _ = render_view("yopo", "cpu_repro", tmp_path)
    readme = (root / "README.md").read_text()
    for line in out.splitlines():
        if line.startswith(("PGD-40 level", "yopo_mnist: reaches", "pgd40_mnist",
                            "ratio time-to-level")):  # fmt: skip
            assert line in readme, line


# ------------------------------------------------------------------ time to a robust accuracy
def _no_recipe(experiment):
    return None


def _report(*dirs: Path):
    from odelab.report import build, local_runs

    return build("yopo", [r for d in dirs for r in local_runs(d)], recipe=_no_recipe)


def _write_run(root: Path, name: str, experiment: str, method: str, points: list[dict],
               hardware: dict, seed: int = 0) -> None:  # fmt: skip
    d = root / name
    d.mkdir(parents=True)
    config = {"dataset": "mnist", "model": {"method": method, "width": name},
              "callbacks": {"train_clock": {"clock": "wall"}}}  # fmt: skip
    res = {"experiment": experiment, "paper": "yopo", "dataset": "mnist", "seed": seed,
           "status": "finished", "metrics": {"test/robust_acc": 0.5}, "config": config,
           "hardware": hardware}  # fmt: skip
    (d / "results.json").write_text(json.dumps(res))
    (d / "time_curve.json").write_text(json.dumps(points))


GPU = {"accelerator": "cuda", "gpu": "NVIDIA H100", "devices": 1}
CPU = {"accelerator": "cpu", "cpu_count": 2, "devices": 1}


def test_time_to_level_on_synthetic_curves_with_known_crossings(tmp_path):
    """YOPO (time-mark points, test split) crosses 90 % at 30 s and 94 % at 50 s, plateau 96 %
    (median of its last quarter: 96, 95.5, 96) from 50 s; PGD (validation points) crosses at
    400 and 600 s, plateau 95 % from 600 s: ratios 30/400, 50/600, 50/600. A run on another
    machine is not paired; a run that never reaches 94 % says so."""
    from odelab.papers.yopo.report import time_to_level, time_to_level_markdown

    yopo_acc = [0.5, 0.8, 0.91, 0.93, 0.95, 0.96, 0.955, 0.96]
    yopo = [{"train_s": 10.0 * (i + 1), "mark_s": 10.0 * (i + 1), "test/robust_acc": a,
             "test/acc": 0.99, "val/robust_acc": 0.1} for i, a in enumerate(yopo_acc)]  # fmt: skip
    pgd_acc = [0.3, 0.6, 0.85, 0.9, 0.92, 0.945, 0.95, 0.95]
    pgd = [{"train_s": 100.0 * (i + 1), "val/robust_acc": a, "val/acc": 0.99}
           for i, a in enumerate(pgd_acc)]  # fmt: skip
    slow = [{"train_s": 5.0 * (i + 1), "val/robust_acc": a} for i, a in enumerate([0.9, 0.92])]
    _write_run(tmp_path, "y", "yopo_mnist", "yopo", yopo, GPU)
    _write_run(tmp_path, "p", "pgd40_mnist", "pgd", pgd, GPU)
    _write_run(tmp_path, "c", "pgd40_mnist", "pgd", slow, CPU)
    tl = time_to_level(_report(tmp_path))
    runs = {r["label"].split(" ")[0] + r["hardware"]: r for r in tl["runs"]}
    y, p, c = (
        runs["yopo_mnist1x NVIDIA H100"],
        runs["pgd40_mnist1x NVIDIA H100"],
        runs["pgd40_mnistcpu (2 cores)"],
    )
    assert y["curve"] == "test marks" and p["curve"] == "val"
    assert y["levels"] == {0.90: 30.0, 0.94: 50.0} and y["t_end"] == 80.0 and y["n"] == 8
    assert y["plateau"] == pytest.approx(0.96) and y["t_plateau"] == 50.0
    assert p["levels"] == {0.90: 400.0, 0.94: 600.0}
    assert p["plateau"] == pytest.approx(0.95) and p["t_plateau"] == 600.0
    assert c["levels"] == {0.90: 5.0, 0.94: None} and c["plateau"] == pytest.approx(0.92)
    (q,) = tl["ratios"]  # the CPU run has no YOPO partner
    assert q["levels"][0.90] == pytest.approx(30 / 400) and q["levels"][0.94] == pytest.approx(
        50 / 600) and q["plateau"] == pytest.approx(50 / 600)  # fmt: skip
    md = time_to_level_markdown(_report(tmp_path))
    assert "| 0.07 | 0.08 | 0.08 |" in md and "never" in md
    assert (
        "| mnist | robust error ~5-6 % | yopo_mnist | 245.0 | pgd40_mnist | 1280.0 | 0.19 |" in md
    )


def test_time_to_level_on_the_kept_cpu_repro_records():
    """The kept CPU records (README table): YOPO first at >= 90 % at 271.6 s, PGD-40 (lr 0.1)
    at 341.9 s, PGD-40 (lr 0.02) at 392.8 s; none reaches 94 %; plateaus (median of the points
    after 3/4 of 400 s): YOPO median(88.0, 92.5) = 90.25 %, PGD-40 median(88, 90, 90, 88) = 89 %
    reached at 248.8 s (88.5), lr 0.02 median(91.0, 87.5) = 89.25 % reached at 287.7 s (89.0)."""
    from odelab.papers.yopo.report import time_to_level

    tl = time_to_level(_report(ROOT_DIR / "experiments" / "yopo" / "runs" / "cpu_repro"))
    by_lr = {}
    for r in tl["runs"]:
        assert r["curve"] == "val" and r["clock"] == "process" and r["levels"][0.94] is None
        by_lr[(r["method"], round(r["t_end"]))] = r
    assert len(tl["runs"]) == 3
    y = next(r for r in tl["runs"] if r["method"] == "yopo")
    p1, p2 = sorted(
        (r for r in tl["runs"] if r["method"] == "pgd"), key=lambda r: r["levels"][0.9]
    )
    for r, t90, pl, tpl in ((y, 271.6, 0.9025, 271.6), (p1, 341.9, 0.89, 248.8),
                            (p2, 392.8, 0.8925, 287.7)):  # fmt: skip
        assert r["levels"][0.90] == pytest.approx(t90, abs=0.05)
        assert r["plateau"] == pytest.approx(pl, abs=1e-6)
        assert r["t_plateau"] == pytest.approx(tpl, abs=0.05)
    ratios = sorted(q["levels"][0.90] for q in tl["ratios"])
    assert ratios == pytest.approx([271.6 / 392.8, 271.6 / 341.9], abs=1e-3)


def test_time_to_level_from_real_quick_runs(run_experiment, tiny_data, tmp_path):
    """Two real quick runs (YOPO-2-2 and PGD-3, tiny MNIST, time marks after every batch): the
    table reads their test-split mark points, pairs them (same machine, clock, seed), and the
    report hook writes the markdown table and both figures."""
    from odelab.papers.yopo.report import plots, time_to_level

    base = ["debug=limit", "logger=csv", f"paths.data_dir={tiny_data}", "data.batch_size=4",
            "data.eval_batch_size=4", "callbacks.train_clock.eval_every_s=1e-9",
            *SHRINK["mnist"]]  # fmt: skip
    _, y_out = run_experiment(["experiment=yopo_mnist", *base, "model.yopo.m=2",
                               "model.yopo.n=2"], "yopo")  # fmt: skip
    _, p_out = run_experiment(["experiment=pgd40_mnist", *base, "model.pgd.steps=3"], "pgd")
    rep = _report(y_out, p_out)
    tl = time_to_level(rep)
    assert sorted(r["experiment"] for r in tl["runs"]) == ["pgd40_mnist", "yopo_mnist"]
    for r, out in zip(sorted(tl["runs"], key=lambda r: r["experiment"]), (p_out, y_out)):
        points = [p for p in json.loads((out / "time_curve.json").read_text()) if "mark_s" in p]
        assert r["curve"] == "test marks" and r["n"] == len(points) == 2 * 4  # every batch
        assert r["t"] == [p["train_s"] for p in points]
        assert r["robust"] == [p["test/robust_acc"] for p in points]
        for t in (*r["levels"].values(), r["t_plateau"]):
            assert t is None or t in r["t"]
    (q,) = tl["ratios"]
    y, p = sorted(tl["runs"], key=lambda r: r["method"], reverse=True)
    assert q["yopo"] == y["label"] and q["other"] == p["label"]
    if y["t_plateau"] is not None and p["t_plateau"] is not None:
        assert q["plateau"] == pytest.approx(y["t_plateau"] / p["t_plateau"])
    written = plots(rep, tmp_path)
    assert sorted(w.name for w in written) == ["results_robust_acc_vs_time.png",
                                               "results_time_to_level.png"]  # fmt: skip
    md = (tmp_path / "results_time_to_level.md").read_text()
    assert y["label"] in md and p["label"] in md and "test marks" in md


def test_random_start_effect_script_runs(tiny_data):
    """experiments/yopo/random_start_effect.py (the README's clamp measurement) on tiny MNIST:
    per seed both starts share one uniform draw, accuracies are fractions, robust <= clean."""
    import importlib.util

    path = ROOT_DIR / "experiments" / "yopo" / "random_start_effect.py"
    spec = importlib.util.spec_from_file_location("random_start_effect", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    for how in ("fgsm", "pgd"):
        out = mod.main(["--data-dir", str(tiny_data), "--width", "0.25", "--steps", "2",
                        "--batch", "4", "--n-test", "8", "--seeds", "2", "--train", how,
                        "--pgd-steps", "2"])  # fmt: skip
        assert len(out["rows"]) == 2
        for row in out["rows"]:
            assert 0 <= row[True] <= out["clean"] and 0 <= row[False] <= out["clean"]


def test_adversarial_speed_benchmark_ends_with_the_ratio_lines(tiny_data, tmp_path, capsys):
    """benchmarks/adversarial_speed.py, tiny: the experiments' configs, the real (tiny) data
    when present and synthetic pixels (said so) when not, the prediction and the CPU floor, and
    the two closing ``ratio ... (predicted ...)`` lines."""
    import importlib.util
    import re

    path = ROOT_DIR / "benchmarks" / "adversarial_speed.py"
    spec = importlib.util.spec_from_file_location("adversarial_speed", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    tiny = ["--steps", "1", "--rounds", "1", "--pass-reps", "1", "--batch", "4",
            "--preact-width", "0.125", "--cnn-width", "0.25"]  # fmt: skip
    mod.main([*tiny, "--data-dir", str(tiny_data)])
    out = capsys.readouterr().out.splitlines()
    assert re.fullmatch(r"ratio yopo-5-3/pgd-10 \d+\.\d\d \(predicted \d+\.\d\d\)", out[-2])
    assert re.fullmatch(r"ratio yopo-5-10/pgd-40 \d+\.\d\d \(predicted \d+\.\d\d\)", out[-1])
    text = "\n".join(out)
    assert "batch 4, real cifar10" in text and "batch 4, real mnist" in text
    assert "CPU floor (layer-one steps free)" in text and "passes/step" in text
    assert "'layer_one_fwd': 55" in text  # YOPO-5-10 from yopo_mnist: 5 x (10 + 1)
    mod.main([*tiny, "--data-dir", str(tmp_path / "empty"), "--pairs", "yopo-5-10"])
    out = capsys.readouterr().out
    assert "SYNTHETIC uniform pixels" in out and out.count("ratio yopo") == 1


def test_yopo_race_plan_composes_as_the_recipes_plus_time_marks(tmp_path):
    """experiments/campaign/yopo_race.yaml (campaign plan format): the two MNIST arms start
    together on half the GPU each, compose as their recipes plus run-local keys only (seed,
    the GPU trainer, the time marks), so their records count as the recipe; the CIFAR-10 entries
    take the whole GPU after them; the data folders they need are named."""
    import yaml
    from omegaconf import OmegaConf

    from conftest import compose
    from odelab.papers.yopo.report import RUN_LOCAL_KEYS
    from odelab.report.table import comparable

    plan = yaml.safe_load((ROOT_DIR / "experiments" / "campaign" / "yopo_race.yaml").read_text())
    runs = {r["id"]: r for r in plan["runs"]}
    allowed = {"id", "experiment", "overrides", "priority", "expected_min", "gpu_share", "needs",
               "keep", "partial", "note"}  # fmt: skip
    assert all(set(r) <= allowed for r in runs.values())
    mnist = [runs["yopo_mnist-s0"], runs["pgd40_mnist-s0"]]
    assert sum(r["gpu_share"] for r in mnist) == 1.0 and len({r["priority"] for r in mnist}) == 1
    for r in runs.values():
        if "cifar10" in r["id"]:
            assert r["gpu_share"] == 1.0 and r["priority"] > mnist[0]["priority"]
            assert r["needs"] == ["cifar10/cifar-10-batches-py"]
        assert "estimated" in r["note"] or "optional" in r["note"]
    for r in mnist:
        assert r["needs"] == ["mnist/raw"] and "time_curve.json" in r["keep"] and r["partial"]
        ovr = [f"experiment={r['experiment']}", *plan["overrides"], *r["overrides"]]
        cfg = compose(ovr, tmp_path / r["id"])
        recipe = compose([f"experiment={r['experiment']}"], tmp_path / "recipe")
        assert cfg.callbacks.train_clock.eval_every_s == 15
        ours = comparable(OmegaConf.to_container(cfg, resolve=True), RUN_LOCAL_KEYS)
        ref = comparable(OmegaConf.to_container(recipe, resolve=True), RUN_LOCAL_KEYS)
        assert ours == ref, {k for k in ours.keys() | ref.keys() if ours.get(k) != ref.get(k)}
