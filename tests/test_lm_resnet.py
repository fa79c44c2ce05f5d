"""LM-ResNet numerics: the LM step, its k = 0 limit, parameter counts, stochastic depth."""

from __future__ import annotations

import pytest
import torch

from odelab.papers.lm_resnet import LMResNet, blocks_per_stage, death_rates
from odelab.papers.lm_resnet.model import official_ks_to_paper

# Parameter counts of the official MResNet (2prime/LM-ResNet), num_classes=10, as measured with
# torchinfo by CrossNox/beyond (see ../shared/papers/lm_resnet.md, Sec. 2.7).
OFFICIAL = {20: 273_475, 32: 467_913, 44: 662_351, 56: 856_789, 110: 1_731_760, 164: 1_703_760}


def n_params(m: torch.nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


@pytest.mark.parametrize("depth", sorted(OFFICIAL))
def test_parameter_count_matches_official(depth):
    """Ours = official - modules the official code allocates but never uses in forward:
    ``bn1`` (BN(16): 32), ``downsample1`` for basic blocks (BN(16) + 1x1 16->64: 1,056) and the
    k of block 0 and of the two stage transitions (3). Allocating them would break DDP
    (parameters without gradients), so we do not."""
    m = LMResNet(depth=depth, num_classes=10)
    unused_k = len(m.kinds) - len(m.ks)
    assert unused_k == 3
    unused = 32 + (1_056 if m.block == "basic" else 0) + unused_k
    assert n_params(m) + unused == OFFICIAL[depth]


@pytest.mark.parametrize("depth", [20, 56, 110])
def test_lm_adds_one_scalar_per_lm_block(depth):
    lm, plain = LMResNet(depth=depth), LMResNet(depth=depth, lm=False)
    n = 3 * blocks_per_stage(depth, "basic")
    assert n_params(lm) - n_params(plain) == n - 3
    per_channel = LMResNet(depth=depth, k_granularity="channel")
    widths = [
        b.out_planes for b, kind in zip(per_channel.branches, per_channel.kinds) if kind == "lm"
    ]
    assert n_params(per_channel) - n_params(plain) == sum(widths)


@pytest.mark.parametrize("granularity", ["layer", "channel"])
def test_k_zero_is_the_plain_resnet(granularity):
    torch.manual_seed(0)
    lm = LMResNet(depth=20, k_granularity=granularity)
    plain = LMResNet(depth=20, lm=False)
    missing, unexpected = plain.load_state_dict(lm.state_dict(), strict=False)
    assert not missing and all(k.startswith("ks.") for k in unexpected)
    with torch.no_grad():
        for k in lm.ks.values():
            k.zero_()
    x = torch.randn(4, 3, 32, 32)
    for mode in ("train", "eval"):
        getattr(lm, mode)()
        getattr(plain, mode)()
        torch.testing.assert_close(lm(x), plain(x), rtol=0, atol=0)


def test_lm_step_matches_the_recurrence_in_float64():
    """u_{n+1} = (1-k_n) u_n + k_n u_{n-1} + f_n(u_n), written out by hand from the branches."""
    torch.manual_seed(1)
    m = LMResNet(depth=14, widths=(4, 8, 8), k_init=(-1.5, 0.5)).double().eval()
    x = torch.randn(2, 3, 16, 16, dtype=torch.float64)
    u = m.stem(x)
    prev = None
    for i, kind in enumerate(m.kinds):
        f = m.branches[i](u)
        if kind == "first":
            skip = u
            new = f + skip
        elif kind == "transition":
            skip = m.projections[str(i)](u)
            new = f + skip
        else:
            k = m.ks[str(i)]
            skip = u
            new = (1 - k) * u + k * prev + f
        prev, u = skip, new
    expected = m.fc(m.head(u))
    torch.testing.assert_close(m(x), expected, rtol=1e-12, atol=1e-12)


def test_k_init_and_official_convention():
    m = LMResNet(depth=56)
    ks = torch.cat([k.flatten() for k in m.ks.values()])
    assert ks.min() >= -0.1 and ks.max() <= 0.0
    # official MResNet.ks ~ U(1.0, 1.1) multiplies u_n: paper k = 1 - ks ~ U(-0.1, 0)
    official = torch.tensor([1.0, 1.05, 1.1])
    torch.testing.assert_close(official_ks_to_paper(official), torch.tensor([0.0, -0.05, -0.1]))


def test_first_block_and_transitions_take_plain_steps():
    m = LMResNet(depth=20)
    assert m.kinds == ["first", "lm", "lm", "transition", "lm", "lm", "transition", "lm", "lm"]
    assert sorted(m.projections.keys()) == ["3", "6"]
    b = LMResNet(depth=164)
    assert b.block == "bottleneck" and len(b.kinds) == 54
    assert not isinstance(b.shortcut0, torch.nn.Identity)  # BN-ReLU-1x1 16 -> 64
    assert b(torch.randn(2, 3, 32, 32)).shape == (2, 10)


@pytest.mark.parametrize("depth,block", [(21, "basic"), (21, "bottleneck"), (2, "basic")])
def test_impossible_depth_is_a_clear_error(depth, block):
    with pytest.raises(ValueError, match=rf"depth={depth} is impossible"):
        LMResNet(depth=depth, block=block)


def test_stochastic_depth_rates():
    assert death_rates(5, 0.5, "code") == pytest.approx([0.0, 0.125, 0.25, 0.375, 0.5])
    assert death_rates(4, 0.8, "paper") == pytest.approx([0.05, 0.1, 0.15, 0.2])
    with pytest.raises(ValueError, match="p_L"):
        death_rates(4, 0.0)
    m = LMResNet(depth=56, stochastic_depth=True, p_L=0.8)
    assert m.death_rates[0] == 0.0 and m.death_rates[-1] == pytest.approx(0.2)


def test_stochastic_depth_is_unbiased_in_expectation():
    """Inverted scaling: E[train-mode output of one block] = eval-mode output (the weak SDE
    approximation keeps the drift p(t) f)."""
    torch.manual_seed(0)
    m = LMResNet(depth=8, widths=(4, 4, 4), lm=False, stochastic_depth=True, p_L=0.5)
    m.death_rates = [0.0, 0.0, 0.5]  # only the last branch is random
    x = torch.randn(1, 3, 8, 8)
    with torch.no_grad():
        m.eval()
        u = m.stem(x)
        u = m.branches[0](u) + u
        u = m.branches[1](u) + m.projections["1"](u)
        ref = m.branches[2](u)
        m.train()
        # freeze BN statistics: use eval-mode branches but train-mode dropping
        for mod in m.modules():
            if isinstance(mod, torch.nn.BatchNorm2d):
                mod.eval()
        draws = []
        for _ in range(4000):
            f = m._branch(2, u)
            draws.append(torch.zeros_like(ref) if f is None else f)
        draws = torch.stack(draws)
    kept = (draws.flatten(1).abs().sum(1) > 0).float().mean()
    assert abs(kept.item() - 0.5) < 0.05
    torch.testing.assert_close(draws.mean(0), ref, rtol=0.1, atol=0.1 * ref.abs().max().item())


def test_lm_active_switch_holds_k_at_zero():
    torch.manual_seed(0)
    lm, plain = LMResNet(depth=20), LMResNet(depth=20, lm=False)
    plain.load_state_dict(lm.state_dict(), strict=False)
    lm.eval(), plain.eval()
    x = torch.randn(2, 3, 32, 32)
    lm.lm_active = False
    torch.testing.assert_close(lm(x), plain(x))
    lm.lm_active = True
    assert not torch.allclose(lm(x), plain(x))


@pytest.mark.parametrize("granularity", ["layer", "channel"])
def test_lm_step_under_bf16_autocast(granularity):
    """Mixed precision: the float32 k meets bf16 activations (a bug caught on a GPU)."""
    m = LMResNet(depth=14, widths=(4, 8, 8), k_granularity=granularity)
    x = torch.randn(2, 3, 16, 16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = m(x)
    out.float().sum().backward()
    assert all(k.grad is not None and k.grad.dtype == torch.float32 for k in m.ks.values())
