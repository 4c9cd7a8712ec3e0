"""A nanoGPT-style decoder whose MLPs take their activation by name, per model or per layer.

The architecture and initialisation are nanoGPT's ``model.py`` (Karpathy): token and position
embeddings, ``n_layer`` pre-LayerNorm blocks of causal self-attention and an MLP
(``n_embd -> 4 n_embd -> activation -> n_embd``), a final LayerNorm and a head tied to the
token embedding; weights N(0, 0.02), the residual projections N(0, 0.02 / sqrt(2 n_layer)),
no biases by default. Only the MLP's activation is configurable: it is the one non-linearity a
GPT chooses (GPT-2: GELU; Primer: squared ReLU; Llama: SiLU inside SwiGLU).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch.nn.functional as F
from torch import Tensor, nn

from adact.act_factory import get_act_layer
from adact.activations import ActLayer
from adact.errors import UserError
from adact.unit import AdAct

__all__ = ["GPT"]


class _SelfAttention(nn.Module):
    """Causal multi-head self-attention (PyTorch's fused scaled-dot-product kernel)."""

    def __init__(self, n_embd: int, n_head: int, dropout: float, bias: bool) -> None:
        super().__init__()
        self.c_attn = nn.Linear(n_embd, 3 * n_embd, bias=bias)
        self.c_proj = nn.Linear(n_embd, n_embd, bias=bias)
        self.resid_dropout = nn.Dropout(dropout)
        self.n_head, self.dropout = n_head, dropout

    def forward(self, x: Tensor) -> Tensor:
        b, t, c = x.shape
        q, k, v = self.c_attn(x).split(c, dim=2)  # 3 x (B, T, C)
        q, k, v = (z.view(b, t, self.n_head, c // self.n_head).transpose(1, 2) for z in (q, k, v))  # (B, H, T, C/H)
        y = F.scaled_dot_product_attention(q, k, v, dropout_p=self.dropout if self.training else 0.0, is_causal=True)
        y = y.transpose(1, 2).contiguous().view(b, t, c)  # (B, T, C)
        return self.resid_dropout(self.c_proj(y))


class _MLP(nn.Module):
    def __init__(self, n_embd: int, act: nn.Module, dropout: float, bias: bool) -> None:
        super().__init__()
        self.c_fc = nn.Linear(n_embd, 4 * n_embd, bias=bias)
        self.act = act
        self.c_proj = nn.Linear(4 * n_embd, n_embd, bias=bias)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: Tensor) -> Tensor:
        return self.dropout(self.c_proj(self.act(self.c_fc(x))))  # (B, T, C) -> (B, T, 4C) -> (B, T, C)


class _Block(nn.Module):
    def __init__(self, n_embd: int, n_head: int, act: nn.Module, dropout: float, bias: bool) -> None:
        super().__init__()
        self.ln_1 = nn.LayerNorm(n_embd, bias=bias)
        self.attn = _SelfAttention(n_embd, n_head, dropout, bias)
        self.ln_2 = nn.LayerNorm(n_embd, bias=bias)
        self.mlp = _MLP(n_embd, act, dropout, bias)

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))


class GPT(nn.Module):
    r"""A nanoGPT decoder: ``n_layer`` pre-LayerNorm transformer blocks, one activation per MLP.

    Args:
        vocab_size: number of token ids (the head's outputs).
        block_size: the longest sequence (the position embedding's size). Default: 64.
        n_layer: transformer blocks. Default: 4.
        n_head: attention heads (must divide ``n_embd``). Default: 4.
        n_embd: embedding width; each MLP is ``4 * n_embd`` wide. Default: 128.
        dropout: dropout after the embeddings, in attention and after each projection. Default: 0.
        bias: biases in the linear layers and LayerNorms (nanoGPT's default: none). Default: False.
        activation: ``"adact"``, a registry name or a module class, or one of those per block.
            Default: ``"gelu"`` (GPT-2's, exact).
        adact_kwargs: keyword arguments of each :class:`adact.AdAct` unit (e.g. ``candidates``,
            ``{"granularity": "channel"}``: one mixture per MLP feature, ``num_channels`` and
            ``channel_dim=-1`` are filled in).

    Shape:
        - Input: :math:`(B, T)` token ids with :math:`T \le` ``block_size``.
        - Output: :math:`(B, T, \text{vocab\_size})` next-token logits.

    Attributes:
        transformer: ``wte``, ``wpe``, ``drop``, ``h`` (the blocks; block ``i``'s activation is
            ``transformer.h[i].mlp.act``) and ``ln_f``.
        lm_head: the output projection, tied to ``transformer.wte``.

    Example::

        >>> gpt = GPT(vocab_size=65, activation="adact", adact_kwargs={"candidates": ["gelu", "relu", "relu2"]})
        >>> gpt(torch.randint(65, (2, 64))).shape
        torch.Size([2, 64, 65])
    """

    def __init__(self, vocab_size: int, block_size: int = 64, n_layer: int = 4, n_head: int = 4, n_embd: int = 128,
                 dropout: float = 0.0, bias: bool = False, activation: ActLayer | Sequence[ActLayer] = "gelu",
                 adact_kwargs: dict[str, object] | None = None) -> None:
        for name, value in (("vocab_size", vocab_size), ("block_size", block_size), ("n_layer", n_layer),
                            ("n_head", n_head), ("n_embd", n_embd)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise UserError(f"GPT: {name} must be a positive int, got {value!r}")
        if n_embd % n_head:
            raise UserError(f"GPT: n_embd {n_embd} is not a multiple of n_head {n_head}; each head needs "
                            f"n_embd / n_head features")
        if not 0.0 <= dropout < 1.0:
            raise UserError(f"GPT: dropout must be in [0, 1), got {dropout}")
        if isinstance(activation, (str, type)) or (callable(activation) and not isinstance(activation, Sequence)):
            acts: list[ActLayer] = [activation] * n_layer  # type: ignore[list-item]
        else:
            acts = list(activation)  # type: ignore[arg-type]
            if len(acts) != n_layer:
                raise UserError(f"GPT: {len(acts)} activations for {n_layer} blocks; give one name, or one per block")
        classes = [get_act_layer(a) for a in acts]  # raises for unknown names, before any module is built
        super().__init__()
        self.vocab_size, self.block_size = vocab_size, block_size
        kwargs = dict(adact_kwargs or {})
        if kwargs.get("granularity") == "channel":
            kwargs.setdefault("num_channels", 4 * n_embd)
            kwargs.setdefault("channel_dim", -1)  # the MLP's features are the last dim of (B, T, 4C)
        self.transformer = nn.ModuleDict({
            "wte": nn.Embedding(vocab_size, n_embd),
            "wpe": nn.Embedding(block_size, n_embd),
            "drop": nn.Dropout(dropout),
            "h": nn.ModuleList(_Block(n_embd, n_head, cls(**kwargs) if cls is AdAct else cls(), dropout, bias)
                               for cls in classes),
            "ln_f": nn.LayerNorm(n_embd, bias=bias),
        })
        self.lm_head = nn.Linear(n_embd, vocab_size, bias=False)
        self.transformer.wte.weight = self.lm_head.weight  # weight tying, as GPT-2 and nanoGPT
        self.reset_parameters(n_layer)

    def reset_parameters(self, n_layer: int | None = None) -> None:
        """nanoGPT's initialisation; AdAct units get their own (uniform mixtures)."""
        n_layer = n_layer or len(self.transformer.h)
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.normal_(module.weight, mean=0.0, std=0.02)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, nn.Embedding):
                nn.init.normal_(module.weight, mean=0.0, std=0.02)
            elif isinstance(module, nn.LayerNorm):
                module.reset_parameters()
            elif isinstance(module, AdAct):
                module.reset_parameters()
        for name, p in self.named_parameters():
            if name.endswith("c_proj.weight"):  # GPT-2's scaled init of the residual projections
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * n_layer))

    def forward(self, idx: Tensor) -> Tensor:
        b, t = idx.shape
        if t > self.block_size:
            raise UserError(f"GPT: a sequence of {t} tokens is longer than block_size {self.block_size}")
        pos = self.transformer.wpe.weight[:t]  # (T, C)
        x = self.transformer.drop(self.transformer.wte(idx) + pos)  # (B, T, C)
        for block in self.transformer.h:
            x = block(x)
        return self.lm_head(self.transformer.ln_f(x))  # (B, T, vocab_size)

    def activations(self) -> list[nn.Module]:
        """The MLP activation module of each block, in order."""
        return [block.mlp.act for block in self.transformer.h]  # type: ignore[union-attr]

    def extra_repr(self) -> str:
        return f"vocab_size={self.vocab_size}, block_size={self.block_size}"
