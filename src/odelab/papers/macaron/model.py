"""Macaron layers (Lu et al. 2019): Strang-Marchuk splitting of the Transformer layer.

A standard layer takes one Lie-Trotter step: attention (diffusion), then FFN (convection). The
Macaron layer takes a half FFN step, a full attention step, a half FFN step::

    x <- x + 1/2 FFN_a(LN_a(x));  x <- x + Attn(LN_b(x));  x <- x + 1/2 FFN_c(LN_c(x))

(decoder: the encoder-decoder attention follows the self-attention). The two FFNs have
separate parameters and half the baseline's inner width each (``ffn_split='half'``), so the
parameter count matches the baseline up to one extra bias and one extra LayerNorm per layer.
"""

from __future__ import annotations

import inspect

from odelab.nn.transformer import Seq2SeqTransformer, Step, standard_steps


def macaron_steps(
    ffn_dim: int,
    decoder: bool,
    half_step_scale: float = 0.5,
    ffn_split: str = "half",
    act_first_ffn: str = "relu",
    act_second_ffn: str = "relu",
    drop_first_ffn: bool = False,
) -> list[Step]:
    """The Macaron step list. ``ffn_dim`` is the *baseline* inner width; each half-step FFN
    gets ``ffn_dim // 2`` (``ffn_split='half'``) or ``ffn_dim`` (``'full'``, twice the FFN
    parameters). ``drop_first_ffn`` removes FFN_a (for the reduction test: with scale 1 the
    layer is then the standard layer)."""
    if ffn_split not in ("half", "full"):
        raise ValueError(f"ffn_split={ffn_split!r}: use 'half' (equal parameters) or 'full'")
    if ffn_split == "half" and ffn_dim % 2:
        raise ValueError(f"ffn_split='half' needs an even ffn_dim, got {ffn_dim}")
    inner = ffn_dim // 2 if ffn_split == "half" else ffn_dim
    attn = [Step("self_attn"), Step("cross_attn")] if decoder else [Step("self_attn")]
    first = [] if drop_first_ffn else [Step("ffn", half_step_scale, inner, act_first_ffn)]
    return [*first, *attn, Step("ffn", half_step_scale, inner, act_second_ffn)]


class MacaronTransformer(Seq2SeqTransformer):
    """Encoder-decoder Transformer with Macaron (``macaron=True``) or standard layers, the same
    constructor for both arms of a comparison. ``share_ffn_params`` must stay false: the
    official code uses two FFNs (sharing them is the SpeechBrain #621 bug)."""

    def __init__(
        self,
        *args,
        macaron: bool = True,
        half_step_scale: float = 0.5,
        ffn_split: str = "half",
        share_ffn_params: bool = False,
        act_first_ffn: str = "relu",
        act_second_ffn: str = "relu",
        **kw,
    ):
        if share_ffn_params:
            raise ValueError(
                "share_ffn_params=true is not the Macaron layer: the official code keeps the two "
                "half-step FFNs separate (see speechbrain/speechbrain#621); set it to false"
            )
        base = inspect.signature(Seq2SeqTransformer).bind(*args, **kw)  # ffn_dim by position too
        base.apply_defaults()
        a, ffn_dim = base.arguments, base.arguments["ffn_dim"]
        opts = dict(half_step_scale=half_step_scale, ffn_split=ffn_split,
                    act_first_ffn=act_first_ffn, act_second_ffn=act_second_ffn)  # fmt: skip
        for side, dec in (("encoder", False), ("decoder", True)):
            if macaron:
                a[f"{side}_steps"] = macaron_steps(ffn_dim, dec, **opts)
            else:
                a[f"{side}_steps"] = standard_steps(ffn_dim, dec, act_second_ffn)
        super().__init__(**a)
        self.macaron = macaron
