"""Transformer building blocks: attention with a key/value cache, FFN, sinusoidal positions,
residual layers built from a list of sub-layer steps, and an encoder-decoder.

A layer is a sequence of residual steps ``x <- x + c * Dropout(f(LN(x)))`` (pre-norm) or
``x <- LN(x + c * Dropout(f(x)))`` (post-norm), each step with its own LayerNorm. The standard
encoder layer is ``[self_attn, ffn]`` with ``c = 1`` (Lie-Trotter splitting, Vaswani et al.);
other splittings (e.g. the Macaron layer in ``odelab.papers.macaron``) are other step lists.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

ACTIVATIONS = {"relu": F.relu, "gelu": F.gelu}


class MultiheadAttention(nn.Module):
    """Scaled dot-product attention softmax(Q K^T / sqrt(d_h)) V over ``heads`` heads.

    ``cache`` (a dict) makes decoding incremental: self-attention appends this step's keys and
    values to ``cache["k"]``/``cache["v"]``; encoder-decoder attention (``static_kv``) computes
    the memory's keys and values once and reuses them.
    """

    def __init__(self, d_model: int, heads: int, dropout: float = 0.0, bias: bool = True):
        super().__init__()
        if d_model % heads:
            raise ValueError(f"d_model={d_model} is not divisible by heads={heads}")
        self.d_model, self.heads, self.dropout = d_model, heads, dropout
        self.q_proj = nn.Linear(d_model, d_model, bias=bias)
        self.k_proj = nn.Linear(d_model, d_model, bias=bias)
        self.v_proj = nn.Linear(d_model, d_model, bias=bias)
        self.out_proj = nn.Linear(d_model, d_model, bias=bias)
        for lin in (self.q_proj, self.k_proj, self.v_proj):
            nn.init.xavier_uniform_(lin.weight, gain=1 / math.sqrt(2))
        nn.init.xavier_uniform_(self.out_proj.weight)
        for lin in (self.q_proj, self.k_proj, self.v_proj, self.out_proj):
            if lin.bias is not None:
                nn.init.zeros_(lin.bias)

    def _split(self, x: torch.Tensor) -> torch.Tensor:
        b, t, _ = x.shape
        return x.view(b, t, self.heads, -1).transpose(1, 2)

    def forward(
        self,
        query: torch.Tensor,
        key_value: torch.Tensor | None = None,
        key_padding_mask: torch.Tensor | None = None,
        causal: bool = False,
        cache: dict | None = None,
        static_kv: bool = False,
    ) -> torch.Tensor:
        """query [B, T, d]; key_value [B, S, d] (None: self-attention); key_padding_mask [B, S]
        True at padding; causal masks future keys (uncached full-sequence decoding)."""
        kv = query if key_value is None else key_value
        q = self._split(self.q_proj(query))
        if cache is not None and static_kv and "k" in cache:
            k, v = cache["k"], cache["v"]
        else:
            k, v = self._split(self.k_proj(kv)), self._split(self.v_proj(kv))
            if cache is not None:
                if not static_kv and "k" in cache:
                    k = torch.cat([cache["k"], k], dim=2)
                    v = torch.cat([cache["v"], v], dim=2)
                cache["k"], cache["v"] = k, v
        mask = None
        if key_padding_mask is not None:
            mask = ~key_padding_mask[:, None, None, :]  # True = attend
        if causal:
            t, s = q.shape[2], k.shape[2]
            future = torch.ones(t, s, dtype=torch.bool, device=q.device).tril(s - t)
            mask = future if mask is None else mask & future
        out = F.scaled_dot_product_attention(
            q, k, v, attn_mask=mask, dropout_p=self.dropout if self.training else 0.0
        )
        b, _, t, _ = out.shape
        return self.out_proj(out.transpose(1, 2).reshape(b, t, self.d_model))


class FeedForward(nn.Module):
    """Position-wise FFN: fc2(Dropout_act(act(fc1(x)))), d -> ffn_dim -> d."""

    def __init__(self, d_model: int, ffn_dim: int, activation: str = "relu", act_dropout=0.0):
        super().__init__()
        if activation not in ACTIVATIONS:
            raise ValueError(f"activation={activation!r}: use one of {sorted(ACTIVATIONS)}")
        self.fc1, self.fc2 = nn.Linear(d_model, ffn_dim), nn.Linear(ffn_dim, d_model)
        self.activation, self.act_dropout = activation, act_dropout
        for lin in (self.fc1, self.fc2):
            nn.init.xavier_uniform_(lin.weight)
            nn.init.zeros_(lin.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = ACTIVATIONS[self.activation](self.fc1(x))
        return self.fc2(F.dropout(h, self.act_dropout, self.training))


def sinusoidal_positions(n: int, d: int, offset: int = 0) -> torch.Tensor:
    """PE[p, i] = sin(p / 10000^(i/(d/2-1))), PE[p, d/2 + i] = cos(...) (the tensor2tensor /
    fairseq layout: sines then cosines), for positions ``offset .. offset + n - 1``."""
    half = d // 2
    freq = torch.exp(torch.arange(half, dtype=torch.float32) * -(math.log(10000.0) / (half - 1)))
    pos = torch.arange(offset, offset + n, dtype=torch.float32)[:, None] * freq[None]
    pe = torch.cat([pos.sin(), pos.cos()], dim=1)
    return F.pad(pe, (0, d % 2))


@dataclass(frozen=True)
class Step:
    """One residual sub-layer: ``kind`` in {self_attn, cross_attn, ffn}, its residual factor
    ``scale`` (the step size c), and for FFNs the inner width and activation."""

    kind: str
    scale: float = 1.0
    ffn_dim: int = 0
    activation: str = "relu"


def standard_steps(ffn_dim: int, decoder: bool, activation: str = "relu") -> list[Step]:
    """Vaswani et al.: attention then FFN (Lie-Trotter splitting with Euler steps)."""
    attn = [Step("self_attn"), Step("cross_attn")] if decoder else [Step("self_attn")]
    return [*attn, Step("ffn", 1.0, ffn_dim, activation)]


class TransformerLayer(nn.Module):
    """A stack of residual steps (see module docstring), pre- or post-norm."""

    def __init__(
        self,
        d_model: int,
        heads: int,
        steps: Sequence[Step],
        norm: str = "pre",
        dropout: float = 0.1,
        attn_dropout: float = 0.0,
        act_dropout: float = 0.0,
        ln_affine: bool = True,
    ):
        super().__init__()
        if norm not in ("pre", "post"):
            raise ValueError(f"norm={norm!r}: use 'pre' or 'post'")
        self.steps, self.norm, self.dropout = list(steps), norm, dropout
        blocks = []
        for s in self.steps:
            if s.kind in ("self_attn", "cross_attn"):
                blocks.append(MultiheadAttention(d_model, heads, attn_dropout))
            elif s.kind == "ffn":
                blocks.append(FeedForward(d_model, s.ffn_dim, s.activation, act_dropout))
            else:
                raise ValueError(f"unknown step kind {s.kind!r}")
        self.blocks = nn.ModuleList(blocks)
        self.norms = nn.ModuleList(
            nn.LayerNorm(d_model, elementwise_affine=ln_affine) for _ in self.steps
        )

    def forward(
        self,
        x: torch.Tensor,
        padding_mask: torch.Tensor | None = None,
        causal: bool = False,
        memory: torch.Tensor | None = None,
        memory_padding_mask: torch.Tensor | None = None,
        cache: dict | None = None,
    ) -> torch.Tensor:
        for i, (s, block, ln) in enumerate(zip(self.steps, self.blocks, self.norms)):
            h = ln(x) if self.norm == "pre" else x
            c = None if cache is None else cache.setdefault(i, {})
            if s.kind == "self_attn":
                h = block(h, None, padding_mask, causal=causal and cache is None, cache=c)
            elif s.kind == "cross_attn":
                h = block(h, memory, memory_padding_mask, cache=c, static_kv=True)
            else:
                h = block(h)
            x = x + s.scale * F.dropout(h, self.dropout, self.training)
            if self.norm == "post":
                x = ln(x)
        return x


class TransformerStack(nn.Module):
    """Token embedding * sqrt(d) + sinusoidal positions, dropout, layers, final LN if pre-norm."""

    def __init__(
        self,
        embed: nn.Embedding,
        layers: Sequence[TransformerLayer],
        norm: str = "pre",
        dropout: float = 0.1,
        ln_affine: bool = True,
        learned_positions: int = 0,
    ):
        super().__init__()
        d = embed.embedding_dim
        self.embed, self.layers, self.dropout = embed, nn.ModuleList(layers), dropout
        self.scale = math.sqrt(d)
        self.final_norm = nn.LayerNorm(d, elementwise_affine=ln_affine) if norm == "pre" else None
        self.pos = nn.Embedding(learned_positions, d) if learned_positions else None

    def embed_tokens(self, tokens: torch.Tensor, offset: int = 0) -> torch.Tensor:
        x = self.scale * self.embed(tokens)
        t = tokens.shape[1]
        if self.pos is not None:
            x = x + self.pos(torch.arange(offset, offset + t, device=tokens.device))
        else:
            x = x + sinusoidal_positions(t, x.shape[-1], offset).to(x)
        return F.dropout(x, self.dropout, self.training)

    def forward(
        self,
        tokens,
        padding_mask=None,
        memory=None,
        memory_padding_mask=None,
        causal=False,
        cache=None,
        offset=0,
        extra_embed=None,
    ):
        x = self.embed_tokens(tokens, offset)
        if extra_embed is not None:
            x = x + extra_embed
        for i, layer in enumerate(self.layers):
            c = None if cache is None else cache.setdefault(i, {})
            x = layer(x, padding_mask, causal, memory, memory_padding_mask, cache=c)
        return self.final_norm(x) if self.final_norm is not None else x


def make_embedding(vocab_size: int, d: int, padding_idx: int) -> nn.Embedding:
    """Token embedding initialised N(0, d^-1/2) with the padding row zero (fairseq)."""
    emb = nn.Embedding(vocab_size, d, padding_idx=padding_idx)
    nn.init.normal_(emb.weight, 0.0, d**-0.5)
    with torch.no_grad():
        emb.weight[padding_idx].zero_()
    return emb


class Seq2SeqTransformer(nn.Module):
    """Encoder-decoder Transformer (Vaswani et al. 2017) built from :class:`TransformerLayer`.

    ``encoder_steps`` / ``decoder_steps`` choose the layer (default: the standard one). With
    ``share_all_embeddings`` the source, target and output projection share one matrix (needs a
    joint vocabulary); with ``share_decoder_input_output_embed`` only the decoder's two do.
    """

    def __init__(
        self,
        vocab_size: int = 1000,
        tgt_vocab_size: int | None = None,
        d_model: int = 512,
        heads: int = 4,
        enc_layers: int = 6,
        dec_layers: int = 6,
        ffn_dim: int = 1024,
        norm: str = "pre",
        dropout: float = 0.3,
        attn_dropout: float = 0.1,
        act_dropout: float = 0.1,
        activation: str = "relu",
        share_all_embeddings: bool = True,
        share_decoder_input_output_embed: bool = True,
        padding_idx: int = 1,
        bos_idx: int = 0,
        eos_idx: int = 2,
        encoder_steps: Sequence[Step] | None = None,
        decoder_steps: Sequence[Step] | None = None,
    ):
        super().__init__()
        tgt_vocab_size = tgt_vocab_size or vocab_size
        if share_all_embeddings and tgt_vocab_size != vocab_size:
            raise ValueError(
                f"share_all_embeddings needs one joint vocabulary, but vocab_size={vocab_size} "
                f"!= tgt_vocab_size={tgt_vocab_size}; build a joined dictionary or set "
                "share_all_embeddings=false"
            )
        self.vocab_size, self.tgt_vocab_size = vocab_size, tgt_vocab_size
        self.padding_idx, self.bos_idx, self.eos_idx = padding_idx, bos_idx, eos_idx
        self.d_model = d_model
        enc_steps = encoder_steps or standard_steps(ffn_dim, False, activation)
        dec_steps = decoder_steps or standard_steps(ffn_dim, True, activation)
        kw = dict(norm=norm, dropout=dropout, attn_dropout=attn_dropout, act_dropout=act_dropout)
        src_embed = make_embedding(vocab_size, d_model, padding_idx)
        tgt_embed = (
            src_embed
            if share_all_embeddings
            else make_embedding(tgt_vocab_size, d_model, padding_idx)
        )
        self.encoder = TransformerStack(
            src_embed,
            [TransformerLayer(d_model, heads, enc_steps, **kw) for _ in range(enc_layers)],
            norm,
            dropout,
        )
        self.decoder = TransformerStack(
            tgt_embed,
            [TransformerLayer(d_model, heads, dec_steps, **kw) for _ in range(dec_layers)],
            norm,
            dropout,
        )
        if share_all_embeddings or share_decoder_input_output_embed:
            self.output_proj = None
        else:
            self.output_proj = nn.Linear(d_model, tgt_vocab_size, bias=False)
            nn.init.normal_(self.output_proj.weight, 0.0, d_model**-0.5)

    def encode(self, src: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """src [B, S] -> (memory [B, S, d], padding mask [B, S])."""
        mask = src.eq(self.padding_idx)
        return self.encoder(src, mask), mask

    def logits(self, h: torch.Tensor) -> torch.Tensor:
        w = self.decoder.embed.weight if self.output_proj is None else self.output_proj.weight
        return F.linear(h, w)

    def decode(self, prev, memory, memory_mask, cache=None, offset=0) -> torch.Tensor:
        """Decoder logits. Without ``cache``: teacher forcing over ``prev`` [B, T] with a causal
        mask. With ``cache``: ``prev`` holds only the new token(s) at position ``offset``."""
        mask = None if cache is not None else prev.eq(self.padding_idx)
        h = self.decoder(prev, mask, memory, memory_mask, causal=True, cache=cache, offset=offset)
        return self.logits(h)

    def forward(self, src: torch.Tensor, prev: torch.Tensor) -> torch.Tensor:
        memory, mask = self.encode(src)
        return self.decode(prev, memory, mask)
