"""The AdAct unit: a learned softmax mixture of candidate activation functions."""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

from adact import fused
from adact.activations import DEFAULT_CANDIDATES, _check_name
from adact.config import GRANULARITIES
from adact.errors import UserError
from adact.reference import adact_reference, mixture_weights

__all__ = ["AdAct", "GRANULARITIES", "LOGIT_INITS", "adact_reference"]

LOGIT_INITS: tuple[str, ...] = ("zeros", "normal", "uniform")


class AdAct(nn.Module):
    r"""Adaptive activation: a learned softmax mixture of K candidate activations.

    .. math::
        \text{AdAct}(x) = \sum_{k=1}^{K} \mathrm{softmax}(w / T)_k \, f_k(x)

    with the paper's default pool :math:`f = ` (ReLU, ELU, LeakyReLU, PReLU, RReLU, SiLU, Mish),
    each with PyTorch's default hyper-parameters (ELU :math:`\alpha = 1`, LeakyReLU slope 0.01,
    PReLU slope initialised to 0.25, RReLU slope :math:`\sim U(1/8, 1/3)` per element in
    training mode and :math:`(1/8 + 1/3) / 2` in eval mode, exactly like ``nn.RReLU``).
    The logits :math:`w` and the PReLU slope are learned end to end: with the default pool a
    unit has 7 + 1 = 8 parameters, so a model with :math:`n` units adds :math:`8n`.

    The activation with the largest weight is the unit's *choice* (:meth:`dominant`).

    **Warm start** (``original=NAME``, what ``adactify(model, init="original")`` builds): the unit
    starts as the activation it replaces and learns how far to move from it. Its effective weights
    are a gated mixture

    .. math::
        v = (1 - g)\, e_{\text{original}} + g\, \mathrm{softmax}(w / T), \qquad g = \mathrm{clamp}(\gamma, 0, 1)

    (the clamp passes gradients straight through, so a gate at a bound can still move)

    with a learned gate :math:`\gamma` that starts at 0, so at step 0 the unit computes the
    original exactly, like LoRA's zero-initialised branch. A large logit on the original would do
    the same, but its softmax saturates and the gradients of every other logit vanish; here the
    gate's gradient is :math:`\langle \partial L / \partial y,\ \mathrm{AdAct}_w(x) - f_{\text{original}}(x)\rangle`,
    non-zero from the first step, and the logits learn as soon as :math:`g > 0`. The kernels take
    logits, so the unit hands them :math:`\log(v + \epsilon)` with :math:`\epsilon = 10^{-30}`:
    their softmax gives back :math:`v` to float rounding, every fused backend and the reference
    path run unchanged (only the input is saved), and the gradient reaches :math:`g` and
    :math:`w` through the log. :meth:`mixture` and the choice are of :math:`v`.

    :math:`T` is the softmax temperature, 1 by default (the paper's unit). A temperature below 1
    sharpens the mixture towards its argmax without changing which candidate that is;
    :mod:`adact.training.sharpen` anneals it during training. It is a buffer, so it is saved with the
    model's ``state_dict`` and a reloaded unit computes the mixture it was trained with.

    Args:
        candidates: activation names from :func:`adact.list_activations`, in mixture order.
            Default: the paper's seven.
        granularity: ``"layer"`` (the paper: one logit vector per unit) or ``"channel"``
            (one logit vector and one PReLU slope per channel of dim 1). Default: ``"layer"``.
        num_channels: number of channels; required when ``granularity="channel"``.
        init: initial logits: ``"zeros"`` (a uniform mixture, the default), ``"normal"``
            (:math:`\mathcal{N}(0, \text{init\_scale}^2)`) or ``"uniform"``
            (:math:`U(-\text{init\_scale}, \text{init\_scale})`).
        init_scale: spread of the random inits. Default: 0.1.
        prelu_init: initial PReLU slope. Default: 0.25.
        fused: use the fused kernel (one pass forward, one backward, saves only the input)
            where it supports the pool; ``False`` selects :func:`adact_reference`. Both give
            the same values. While :func:`torch.onnx.export` runs, the unit always computes
            :func:`adact_reference`, which both ONNX exporters translate (in eval mode RReLU is
            exported as LeakyReLU with slope :math:`(1/8 + 1/3) / 2`, which is what it computes
            there). Default: ``True``.
        channel_dim: the dim holding the channels for ``granularity="channel"``: ``1`` for
            ``(N, C, *)`` feature maps, ``-1`` for ``(N, L, E)`` token sequences (one mixture
            per feature). Default: ``1``.
        temperature: the softmax temperature :math:`T > 0`; see :meth:`set_temperature`.
            Default: 1.0.
        original: the candidate the unit starts as (warm start, see above), or None for the
            paper's unit (a softmax mixture from the start). Default: None.

    Shape:
        - Input: :math:`(*)` for ``"layer"``; :math:`(N, C, *)` for ``"channel"`` (:math:`(*, C)`
          with ``channel_dim=-1``).
        - Output: same shape and dtype as the input.

    Attributes:
        logits: the raw mixture weights :math:`w`, shape :math:`(K,)` or :math:`(C, K)`.
        prelu_weight: the PReLU slope, shape :math:`(1,)` or :math:`(C,)`; ``None`` when the
            pool has no PReLU (a pool of K such candidates has K parameters per mixture).
        temperature: the softmax temperature :math:`T`, a 0-dim buffer (not a parameter).
        gate: warm-started units only: :math:`\gamma`, shape :math:`(1,)` or :math:`(C,)`, zeros at
            init (None otherwise); a warm-started unit has one parameter more per mixture.

    Examples::

        >>> m = AdAct()
        >>> y = m(torch.randn(2, 16, 8, 8))
        >>> m.mixture()          # softmax(w): 7 weights summing to 1
        >>> m.dominant()         # e.g. 'relu'
        >>> per_channel = AdAct(granularity="channel", num_channels=16)
    """

    def __init__(
        self,
        candidates: Sequence[str] = DEFAULT_CANDIDATES,
        granularity: str = "layer",
        num_channels: int | None = None,
        init: str = "zeros",
        init_scale: float = 0.1,
        prelu_init: float = 0.25,
        fused: bool = True,
        channel_dim: int = 1,
        temperature: float = 1.0,
        original: str | None = None,
    ) -> None:
        if isinstance(candidates, str):
            raise TypeError(f"candidates must be a sequence of names, got the string {candidates!r}")
        names = tuple(_check_name(c) for c in candidates)
        if len(names) == 0:
            raise UserError("candidates must name at least one activation")
        if len(set(names)) != len(names):
            raise UserError(f"candidates must be distinct, got {list(names)}")
        if granularity not in GRANULARITIES:
            raise UserError(f"unknown granularity {granularity!r}; valid: {', '.join(GRANULARITIES)}")
        if granularity == "channel":
            if num_channels is None:
                raise UserError('granularity="channel" needs num_channels (the size of dim 1)')
            if not isinstance(num_channels, int) or isinstance(num_channels, bool) or num_channels < 1:
                raise UserError(f"num_channels must be a positive int, got {num_channels!r}")
        if channel_dim not in (1, -1) or isinstance(channel_dim, bool):
            raise UserError(f"channel_dim must be 1 (N, C, *) or -1 (*, C), got {channel_dim!r}")
        if init not in LOGIT_INITS:
            raise UserError(f"unknown init {init!r}; valid: {', '.join(LOGIT_INITS)}")
        if not math.isfinite(init_scale) or init_scale < 0:
            raise UserError(f"init_scale must be finite and >= 0, got {init_scale}")
        if not math.isfinite(prelu_init):
            raise UserError(f"prelu_init must be finite, got {prelu_init}")
        _check_temperature(temperature)
        if original is not None and _check_name(original) not in names:
            raise UserError(f"original {original!r} must be one of the candidates {list(names)}")
        super().__init__()
        self.candidates: tuple[str, ...] = names
        self.granularity = granularity
        self.num_channels = num_channels if granularity == "channel" else None
        self.init = init
        self.init_scale = float(init_scale)
        self.prelu_init = float(prelu_init)
        self.fused = bool(fused)
        self.channel_dim = channel_dim
        rows = () if self.num_channels is None else (self.num_channels,)
        self.logits = nn.Parameter(torch.empty(*rows, len(names)))
        # Only a pool with PReLU has a slope: an unused parameter would inflate the count and
        # never receive a gradient (which DistributedDataParallel treats as an error).
        self.prelu_weight: nn.Parameter | None
        if "prelu" in names:
            self.prelu_weight = nn.Parameter(torch.empty(self.num_channels or 1))
        else:
            self.register_parameter("prelu_weight", None)
        # A buffer, not a Python float: it travels with state_dict and .to(), and changing it
        # every step does not make torch.compile recompile.
        self.temperature: Tensor
        self.register_buffer("temperature", torch.tensor(float(temperature)))
        self.original: str | None = None if original is None else _check_name(original)
        self.gate: nn.Parameter | None
        if self.original is not None:
            self.gate = nn.Parameter(torch.zeros(self.num_channels or 1))
        else:
            self.register_parameter("gate", None)
        self.reset_parameters()

    def set_temperature(self, temperature: float) -> None:
        r"""Set the softmax temperature :math:`T` (> 0): the mixture becomes :math:`\mathrm{softmax}(w / T)`.

        :math:`T < 1` sharpens the mixture, :math:`T > 1` flattens it; the argmax (the choice)
        is the same for every :math:`T`. Gradients flow through :math:`w / T` on both paths.
        """
        _check_temperature(temperature)
        with torch.no_grad():
            self.temperature.fill_(float(temperature))

    def scaled_logits(self) -> Tensor:
        """:math:`w / T`, the logits the softmax sees (differentiable w.r.t. :attr:`logits`)."""
        # At T = 1 (the paper's unit, and every unit not being sharpened) the division is exact and
        # so is its gradient: skipping it saves a forward and a backward op per call, a tenth of
        # a small unit's cost. A traced graph divides always: one graph for every temperature.
        if not torch.compiler.is_compiling() and self._temperature_is_one():
            return self._parameters["logits"]  # type: ignore[return-value]  # not __getattr__: the eager hot path
        return self.logits / self.temperature

    def kernel_logits(self) -> Tensor:
        """The logits the kernels' softmax sees: :meth:`scaled_logits`, or for a warm-started unit
        ``log(v + 1e-30)`` of its effective weights ``v`` (differentiable w.r.t. the gate and the logits)."""
        if self.original is None:
            return self.scaled_logits()
        return torch.log(self._effective(self.scaled_logits()) + _LOG_FLOOR)

    def _effective(self, z: Tensor) -> Tensor:
        assert self.gate is not None
        # Clamped in value, not in gradient (straight through): torch's clamp passes no gradient at
        # its bounds, and the gate starts at 0, so a plain clamp would never let it move.
        g = self.gate + (self.gate.clamp(0.0, 1.0) - self.gate).detach()
        if z.dim() == 2:
            g = g.unsqueeze(-1)  # (C, 1): one gate per channel's mixture
        assert self.original is not None
        onehot = torch.zeros(z.shape[-1], dtype=z.dtype, device=z.device)  # (K,): the original's own weight
        onehot[self.candidates.index(self.original)] = 1.0
        return (1.0 - g) * onehot + g * mixture_weights(z)  # (K,) or (C, K)

    def __getstate__(self) -> dict[str, Any]:
        # A copy's buffer starts a new version count: the cache must not travel with it.
        state = super().__getstate__()
        state.pop("_seen_temperature", None)
        state.pop("_direct", None)
        return state

    def _temperature_is_one(self) -> bool:
        # Read the buffer's value again only when it changed: a new tensor (.to(), load) or an
        # in-place write (set_temperature, load_state_dict) bumps its version counter.
        t = self._buffers["temperature"]
        seen = self.__dict__.get("_seen_temperature")
        if seen is None or seen[0] is not t or seen[1] != t._version:
            seen = self.__dict__["_seen_temperature"] = (t, t._version, bool(t == 1))
        return seen[2]

    def _load_from_state_dict(self, state_dict: dict[str, Any], prefix: str, *args: Any, **kwargs: Any) -> None:
        # Checkpoints written before the temperature existed lack it: they were trained at T = 1.
        state_dict.setdefault(prefix + "temperature", torch.ones(()))
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def reset_parameters(self) -> None:
        with torch.no_grad():
            if self.init == "zeros":
                self.logits.zero_()
            elif self.init == "normal":
                self.logits.normal_(0.0, self.init_scale)
            else:
                self.logits.uniform_(-self.init_scale, self.init_scale)
            if self.prelu_weight is not None:
                self.prelu_weight.fill_(self.prelu_init)
            if self.gate is not None:
                self.gate.zero_()

    def _check_input(self, x: Tensor) -> None:
        if self.num_channels is None:
            return
        if self.channel_dim == 1 and (x.dim() < 2 or x.shape[1] != self.num_channels):
            raise UserError(
                f"AdAct(granularity='channel', num_channels={self.num_channels}) expects input of "
                f"shape (N, {self.num_channels}, *), got {tuple(x.shape)}"
            )
        if self.channel_dim == -1 and (x.dim() < 2 or x.shape[-1] != self.num_channels):
            raise UserError(
                f"AdAct(granularity='channel', num_channels={self.num_channels}, channel_dim=-1) "
                f"expects input of shape (*, {self.num_channels}), got {tuple(x.shape)}"
            )

    def forward(self, x: Tensor) -> Tensor:
        self._check_input(x)
        if self.num_channels is not None and self.channel_dim == -1:
            # Both paths take channels at dim 1: move them there and back. contiguous() makes
            # the result an ordinary tensor rather than a view, so in-place ops may follow.
            lead = x.reshape(-1, x.shape[-1]).unsqueeze(-1)  # (N*L, E, 1)
            return self._forward_dim1(lead).reshape(x.shape).contiguous()
        return self._forward_dim1(x)

    def _forward_dim1(self, x: Tensor) -> Tensor:
        if self.fused and not _exporting_to_onnx():
            if self.original is None and not torch.compiler.is_compiling():
                y = self._native_forward(x)
                if y is not None:
                    return y
            # The dispatcher decides (once per kind of input) which backend runs, the reference included.
            return fused.adact_fused(x, self.kernel_logits(), self.prelu_weight, self.candidates, self.training)
        return adact_reference(x, self.kernel_logits(), self.prelu_weight, self.candidates, self.training)

    def _native_forward(self, x: Tensor) -> Tensor | None:
        """The native op's answer, if the dispatcher gives this call to it (else None): the eager fast path."""
        # A unit's pool and layout are fixed, so the dispatcher's answer for its calls depends only
        # on what is in this token: a few attribute reads instead of a dispatch key per call, and
        # the parameters read from their dicts rather than through nn.Module.__getattr__ (about
        # 6 us of a 1K-element unit's 40). The channel layout's shape rule is _check_input's.
        params = self._parameters
        logits, slope = params["logits"], params["prelu_weight"]
        assert logits is not None
        token = (x.dtype, x.is_cpu, self.training, logits.dtype, fused.call_state())
        cached = self.__dict__.get("_direct")
        if cached is None or cached[0] != token:
            call = fused.direct_call(x, logits, slope, self.candidates, self.training)
            cached = self.__dict__["_direct"] = (token, call)
        if cached[1] is None:
            return None
        return cached[1](x, self.scaled_logits(), slope)

    # --- reading the choice -------------------------------------------------------------

    def mixture(self) -> Tensor:
        r"""The weights :math:`\mathrm{softmax}(w / T)` (a warm-started unit: its gated weights :math:`v`),
        shape ``(K,)`` or ``(C, K)``, detached, float32."""
        with torch.no_grad():
            if self.original is not None:
                return self._effective(self.scaled_logits()).float()
            return mixture_weights(self.scaled_logits()).float()

    def raw_weights(self) -> Tensor:
        """The raw logits :math:`w`, detached, float32."""
        return self.logits.detach().float().clone()

    def weights_dict(self) -> dict[str, float]:
        """``{candidate: softmax weight}``; per-channel units report the channel mean."""
        p = self.mixture()
        if p.dim() == 2:
            p = p.mean(0)
        return {name: float(v) for name, v in zip(self.candidates, p.tolist())}

    def choice(self) -> tuple[str, float]:
        """The unit's choice: the candidate with the largest softmax weight, and that weight.

        A ``granularity="channel"`` unit's choice is the winner of its channel-mean mixture (the
        layer's choice, the one :func:`adact.optimize` keeps). Ties go to the candidate listed
        first, so a fresh unit (a uniform mixture) chooses its first candidate with weight ``1/K``.
        Every reader of a choice in adact asks this method (see :mod:`adact.choice`).
        """
        p = self.mixture()
        if p.dim() == 2:
            p = p.mean(0)
        idx = int(torch.argmax(p))  # the first maximum: ties resolve in candidate order
        return self.candidates[idx], float(p[idx])

    def dominant(self) -> str | list[str]:
        """Name of the candidate with the largest weight; for "channel", each channel's own (a list).

        For the unit's choice (the layer's, per-channel units included) use :meth:`choice`.
        """
        idx = self.mixture().argmax(-1)
        if idx.dim() == 0:
            return self.candidates[int(idx)]
        return [self.candidates[i] for i in idx.tolist()]

    def extra_repr(self) -> str:
        s = f"candidates={list(self.candidates)}, granularity={self.granularity!r}"
        if self.num_channels is not None:
            s += f", num_channels={self.num_channels}"
        if self.init != "zeros":
            s += f", init={self.init!r}, init_scale={self.init_scale}"
        if not self.fused:
            s += ", fused=False"
        if self.channel_dim != 1:
            s += f", channel_dim={self.channel_dim}"
        if float(self.temperature) != 1.0:
            s += f", temperature={float(self.temperature):g}"
        if self.original is not None:
            s += f", original={self.original!r}"
        return s


#: Added to a warm-started unit's effective weights before the log: below float32's rounding of any
#: weight near 1, and far above its smallest normal number, so products with it stay exact.
_LOG_FLOOR = 1e-30


def _exporting_to_onnx() -> bool:
    # An export traces (TorchScript) or compiles (dynamo=True): ask the costlier question only then.
    return (torch.compiler.is_compiling() or torch.jit.is_tracing()) and torch.onnx.is_in_onnx_export()


def _check_temperature(temperature: float) -> None:
    if isinstance(temperature, bool) or not isinstance(temperature, numbers.Real):
        raise TypeError(f"temperature must be a number, got {type(temperature).__name__}")
    if not (math.isfinite(temperature) and temperature > 0):
        raise UserError(f"temperature must be finite and > 0, got {temperature}")
