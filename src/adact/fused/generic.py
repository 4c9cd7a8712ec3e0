"""The generic fused AdAct: any pool of the candidates in :data:`GENERIC_CANDIDATES`, one pass each way.

The paper's seven candidates have hand-derived kernels (:mod:`adact.fused.inductor`, and the
native C++ ones) that fold the whole pool into seven coefficients and one exponential. A pool
with any other candidate (GELU and its tanh approximation, tanh, squared ReLU, ...) would
otherwise fall back to :func:`adact.adact_reference`: one op per candidate, one saved tensor per
candidate. This module
is the middle road: a table of candidates, each with its value ``f(x)`` and derivative ``f'(x)``
in plain torch elementwise ops, from which the two kernels of any pool are assembled:

* forward: ``y = sum_k p_k f_k(x)``, with ``p = softmax(logits)``;
* backward, in one pass over ``x`` (only ``x`` is saved): ``gx = g * sum_k p_k f'_k(x)``, the
  per-candidate sums ``S_k = sum(g * f_k(x))`` and, with PReLU, ``sum(g * x)`` over ``x <= 0``;
  the eager algebra then gives the logit gradient ``p_k (S_k - sum_j p_j S_j)`` (the softmax
  Jacobian) and the slope gradient ``p_prelu * sum(g * x [x <= 0])``.

The kernels are traced by ``torch.compile`` (:mod:`adact.fused.compiled`, one compile per pool,
layout, dtype and direction) or run as they are (the eager generic backend). The candidates
share sub-expressions through a per-call memo: ``t = exp(-|x|)`` serves sigmoid, SiLU, Mish,
Softplus and the ELU family's derivative; ``relu(x)`` serves ReLU and squared ReLU; ``x^2`` and
``tanh(sqrt(2 / pi) (x + 0.044715 x^3))`` serve both directions of GELU's tanh approximation.

Extreme inputs: each formula is the one ATen uses for the candidate's value and autograd
formula (or an identity of it that keeps the same ``inf``/NaN cases), so ``+-inf``, NaN and huge
magnitudes give what the reference gives, NaN included. Where ATen disagrees with itself (the
derivative at NaN of ELU, hardtanh and relu6 differs between its vectorised loop and the scalar
loop it runs on the last few elements), this follows the vectorised loop, i.e. almost every
element of a real tensor. A candidate absent from the pool is
left out of every sum, never multiplied by 0 (``0 * inf`` is NaN). RReLU is here only in eval
mode (its mean slope); training-mode RReLU draws noise that only the paper's kernels replay.

Layouts (contiguous, as in :mod:`adact.fused.inductor`): one mixture per unit: ``x`` 1-D,
coefficients ``(K + 1,)``; one per channel: the forward takes ``(N, C, R)`` with ``(C, K + 1)``,
the backward ``(N * C, R)`` rows with the coefficients repeated per row and sums per row. The
coefficients are the K mixture weights followed by the PReLU slope (0 without PReLU).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import NamedTuple

import torch
from torch import Tensor

from adact.activations import RRELU_LOWER, RRELU_UPPER
from adact.reference import mixture_weights

__all__ = [
    "GENERIC_CANDIDATES",
    "GenericFlags",
    "generic_backward",
    "generic_coefficients",
    "generic_flags",
    "generic_forward",
    "generic_parameter_grads",
    "generic_scope",
]

Shared = dict[str, Tensor]
Formula = Callable[[Shared], Tensor]

# Constants written as literals where the kernels use them: Dynamo passes module globals that it
# cannot prove constant in as runtime scalars.
_SELU_ALPHA = 1.6732632423543772848170429916717
_SELU_SCALE = 1.0507009873554804934193349852946
_RRELU_MEAN = (RRELU_LOWER + RRELU_UPPER) / 2.0
_SQRT1_2 = math.sqrt(0.5)
_INV_SQRT_2PI = 1.0 / math.sqrt(2.0 * math.pi)
_GELU_TANH_BETA = math.sqrt(2.0) * (2.0 / math.sqrt(math.pi)) * 0.5  # ATen's kBeta: sqrt(2 / pi)
_GELU_TANH_KAPPA = 0.044715  # ATen's kKappa


class GenericFlags(NamedTuple):
    """One generic kernel variant (static: each combination compiles once)."""

    channel: bool  # one mixture per channel (the layouts are in the module docstring)
    candidates: tuple[str, ...]  # the pool, in logit order

    @property
    def noisy(self) -> bool:
        """Never: training-mode RReLU is not a generic candidate (the compiler reads this flag)."""
        return False


def generic_flags(candidates: tuple[str, ...], channel: bool) -> GenericFlags:
    """The :class:`GenericFlags` of a pool."""
    return GenericFlags(channel, candidates)


# --- shared per-element quantities (memoised per kernel call) -------------------------------------


def _get(s: Shared, name: str) -> Tensor:
    """``s[name]``, computed at first use from the quantities it depends on."""
    if name not in s:
        s[name] = _MAKE[name](s)
    return s[name]


def _exp_nonpositive(z: Tensor) -> Tensor:
    """``exp(z)`` for ``z <= 0`` (or NaN): inline arithmetic in float32, ``torch.exp`` in float64.

    Cephes' ``expf``: ``z = n ln2 + r`` with ``|r| <= ln2 / 2`` (ln2 in two parts, so ``r`` is
    exact), a degree-7 polynomial for ``e^r`` (about 1 ulp) and ``2^n`` built in the exponent
    bits. Inductor keeps it all in registers, where its ``exp`` is a library call per vector that
    stalls the loop (about twice the cost here). Below -87 (where ``e^z`` would be subnormal) it
    is 0, as ``exp(-inf)`` is; NaN stays NaN (it reaches ``r``).
    """
    if z.dtype == torch.float64:
        return torch.exp(z)
    zc = torch.maximum(z, torch.full_like(z, -87.0))  # keeps 2^n normal; NaN propagates
    n = torch.floor(zc * 1.44269504088896341 + 0.5)
    r = zc - n * 0.693359375 + n * 2.12194440e-4
    poly = r * 1.9875691500e-4 + 1.3981999507e-3
    for c in (8.3334519073e-3, 4.1665795894e-2, 1.6666665459e-1, 5.0000001201e-1):
        poly = poly * r + c
    e_r = poly * (r * r) + r + 1.0
    two_n = ((n.to(torch.int32) + 127) << 23).view(torch.float32)
    return torch.where(z < -87.0, 0.0, e_r * two_n)


def _q(s: Shared) -> Tensor:
    return 1.0 / (1.0 + _get(s, "t"))


def _sig(s: Shared) -> Tensor:
    # 1 / (1 + t) for x > 0, t / (1 + t) otherwise: full relative precision on both sides.
    q = _get(s, "q")
    return torch.where(_get(s, "pos"), q, _get(s, "t") * q)


def _one_minus_sig(s: Shared) -> Tensor:
    # Written out, not 1 - sigmoid: for x >> 0 that difference would cancel to 0 too early.
    q = _get(s, "q")
    return torch.where(_get(s, "pos"), _get(s, "t") * q, q)


def _mish_parts(s: Shared) -> tuple[Tensor, Tensor]:
    # tanh(softplus(x)) = (n^2 - 1) / (n^2 + 1), n = 1 + e^x, in terms of t (see adact.fused.inductor):
    # (1 + 2t) / (1 + 2t + 2t^2) for x > 0, (2t + t^2) / (2 + 2t + t^2) otherwise.
    t, neg = _get(s, "t"), _get(s, "nonpos")
    num = torch.where(neg, t * (2.0 + t), 1.0 + 2.0 * t)
    inv_den = 1.0 / (num + torch.where(neg, 2.0, 2.0 * t * t))
    s["mish_inv_den"] = inv_den
    return num * inv_den, inv_den


def _normal_cdf(s: Shared) -> Tensor:
    """``(1 + erf(x / sqrt(2))) / 2``, GELU's (erf form) cdf.

    float32: erf by Abramowitz & Stegun 7.1.26, ``1 - (a1 u + ... + a5 u^5) exp(-z^2)`` with
    ``u = 1 / (1 + p |z|)`` (absolute error < 1.5e-7): the formula of ATen's own vectorised erf,
    which its GELU uses, so this is what the reference computes in float32; and its ``exp(-z^2)``
    is ``exp(-x^2 / 2)``, which GELU's derivative needs anyway (one exponential for both). For
    ``x < 0`` the cdf is the small term itself, without ``1 - (1 - m)``. float64 (for checking):
    ``torch.erf``.
    """
    x = s["x"]
    if x.dtype == torch.float64:
        return 0.5 * (1.0 + torch.erf(x * _SQRT1_2))
    u = _get(s, "u")
    poly = u * 1.061405429 - 1.453152027
    for c in (1.421413741, -0.284496736, 0.254829592):
        poly = poly * u + c
    half_tail = (0.5 * u) * poly * _get(s, "gauss")  # (1 - erf(|z|)) / 2, in [0, 1/2]
    return torch.where(x < 0.0, half_tail, 1.0 - half_tail)


_MAKE: dict[str, Formula] = {
    "pos": lambda s: s["x"] > 0,
    "nonpos": lambda s: s["x"] <= 0,  # NaN is on the x > 0 side for every "x <= 0 ? a : b" of ATen
    "relu": lambda s: torch.where(_get(s, "nonpos"), 0.0, s["x"]),  # NaN stays NaN, as in F.relu
    "t": lambda s: _exp_nonpositive(-s["x"].abs()),  # in [0, 1]; exp(x) itself for x <= 0
    "q": _q,
    "u": lambda s: 1.0 / (1.0 + 0.3275911 * _SQRT1_2 * s["x"].abs()),  # erf's, see _normal_cdf
    "sig": _sig,
    "one_minus_sig": _one_minus_sig,
    "tsp": lambda s: _mish_parts(s)[0],  # tanh(softplus(x))
    "expm1": lambda s: torch.expm1(s["x"]),  # read only where x <= 0
    "gauss": lambda s: _exp_nonpositive(s["x"] * s["x"] * -0.5),  # exp(-x^2 / 2): GELU's pdf, and its cdf's
    "erf_cdf": _normal_cdf,
    "tanh": lambda s: torch.tanh(s["x"]),
    "x2": lambda s: s["x"] * s["x"],
    # tanh(kBeta (x + kKappa x^3)), x^3 as ATen computes it: (x * x) * x.
    "gelu_tanh_t": lambda s: torch.tanh(
        _GELU_TANH_BETA * (s["x"] + _GELU_TANH_KAPPA * (_get(s, "x2") * s["x"]))
    ),
}


# --- the table: value and derivative of each candidate --------------------------------------------


class Candidate(NamedTuple):
    """A generic candidate: its value and its derivative, as ATen computes them (see the module docstring)."""

    value: Formula
    derivative: Formula


def _leaky(slope: float) -> Candidate:
    return Candidate(
        lambda s: torch.where(_get(s, "pos"), s["x"], s["x"] * slope),
        lambda s: torch.where(_get(s, "pos"), 1.0, slope),  # NaN takes the slope, as in ATen
    )


def _elu(alpha: float, scale: float) -> Candidate:
    # ATen's elu (selu and celu are elus): x <= 0 ? expm1(x) * alpha * scale : x * scale; the
    # derivative from the input: x > 0 ? scale : alpha * scale * exp(x), and exp(x) = t there.
    # NaN: ATen's vectorised backward gives NaN (its scalar tail gives scale); so does this.
    neg_coef = alpha * scale
    return Candidate(
        lambda s: torch.where(_get(s, "nonpos"), _get(s, "expm1") * neg_coef, s["x"] * scale),
        lambda s: torch.where(_get(s, "pos"), scale, _get(s, "t") * neg_coef),
    )


def _clamp(low: float, high: float) -> Candidate:
    # hardtanh(x, low, high) (relu6 is hardtanh(x, 0, 6)): clamp, NaN kept; hardtanh_backward
    # passes the gradient strictly inside (low, high): not for NaN (ATen's vectorised loop; its
    # scalar tail does pass it).
    def value(s: Shared) -> Tensor:
        x = s["x"]
        return torch.where(x < low, low, torch.where(x > high, high, x))

    return Candidate(value, lambda s: torch.where((s["x"] > low) & (s["x"] < high), 1.0, 0.0))


def _silu_derivative(s: Shared) -> Tensor:
    # ATen: sigmoid * (1 + x * (1 - sigmoid)); NaN at +-inf (inf * 0), like autograd of F.silu.
    return _get(s, "sig") * (1.0 + s["x"] * _get(s, "one_minus_sig"))


def _mish_derivative(s: Shared) -> Tensor:
    # tanh(softplus) + x * sigmoid * (1 - tanh(softplus)^2), the last factor written without the
    # cancellation: 4t(1 + t) * (t if x > 0 else 1) / den^2 (NaN at +-inf, like ATen's).
    tsp, t = _get(s, "tsp"), _get(s, "t")
    inv_den = s["mish_inv_den"]
    sech2_sig = (4.0 * t * (1.0 + t)) * torch.where(_get(s, "pos"), t, 1.0) * (inv_den * inv_den)
    return tsp + s["x"] * sech2_sig


def _gelu_derivative(s: Shared) -> Tensor:
    # ATen: cdf + x * pdf, pdf = exp(-x^2 / 2) / sqrt(2 pi); NaN at +-inf (inf * 0).
    return _get(s, "erf_cdf") + s["x"] * (_get(s, "gauss") * _INV_SQRT_2PI)


def _gelu_tanh_derivative(s: Shared) -> Tensor:
    # ATen's gelu tanh backward: 0.5 (1 + t) + (0.5 x) (1 - t^2) kBeta (1 + 3 kKappa x^2), in its
    # order. NaN at +-inf, and for float32 |x| beyond ~1.8e19, where x^2 overflows: 0 * inf,
    # like autograd of F.gelu(x, approximate="tanh") (its float64 loop: beyond ~1.3e154).
    t = _get(s, "gelu_tanh_t")
    inner_derivative = _GELU_TANH_BETA * (1.0 + (3.0 * _GELU_TANH_KAPPA) * _get(s, "x2"))
    return 0.5 * (1.0 + t) + (0.5 * s["x"]) * (1.0 - t * t) * inner_derivative


def _softplus_value(s: Shared) -> Tensor:
    # F.softplus (beta 1, threshold 20): x > 20 ? x : log1p(exp(x)), here relu(x) + log1p(exp(-|x|)).
    x = s["x"]
    return torch.where(x > 20.0, x, _get(s, "relu") + torch.log1p(_get(s, "t")))


#: name -> value and derivative. Every name of the activation registry but training-mode RReLU.
GENERIC_CANDIDATES: dict[str, Candidate] = {
    "relu": Candidate(lambda s: _get(s, "relu"), lambda s: torch.where(_get(s, "nonpos"), 0.0, 1.0)),
    "elu": _elu(1.0, 1.0),
    "leaky_relu": _leaky(0.01),
    "prelu": Candidate(
        lambda s: torch.where(_get(s, "pos"), s["x"], s["x"] * s["w"]),
        lambda s: torch.where(_get(s, "pos"), 1.0, s["w"]),
    ),
    "rrelu": _leaky(_RRELU_MEAN),  # eval mode only (the dispatch keeps training-mode RReLU out)
    "silu": Candidate(lambda s: s["x"] * _get(s, "sig"), _silu_derivative),
    "mish": Candidate(lambda s: s["x"] * _get(s, "tsp"), _mish_derivative),
    "gelu": Candidate(lambda s: s["x"] * _get(s, "erf_cdf"), _gelu_derivative),
    "tanh": Candidate(
        lambda s: _get(s, "tanh"),
        lambda s: 1.0 - _get(s, "tanh") * _get(s, "tanh"),  # ATen's tanh_backward: 1 - y^2
    ),
    "sigmoid": Candidate(
        lambda s: _get(s, "sig"),
        lambda s: _get(s, "sig") * _get(s, "one_minus_sig"),
    ),
    "hardswish": Candidate(
        # ATen: x * min(max(x + 3, 0), 6) / 6 (NaN at -inf: -inf * 0); derivative 0 up to -3,
        # 1 from 3, x / 3 + 1/2 between (and for NaN, as ATen's vectorised loop gives).
        lambda s: s["x"] * torch.where(s["x"] + 3.0 < 0.0, 0.0, torch.where(s["x"] + 3.0 > 6.0, 6.0, s["x"] + 3.0))
        / 6.0,
        lambda s: torch.where(s["x"] <= -3.0, 0.0, torch.where(s["x"] >= 3.0, 1.0, s["x"] / 3.0 + 0.5)),
    ),
    "softplus": Candidate(_softplus_value, lambda s: torch.where(s["x"] > 20.0, 1.0, _get(s, "sig"))),
    "selu": _elu(_SELU_ALPHA, _SELU_SCALE),
    "celu": _elu(1.0, 1.0),  # celu(alpha=1) is elu(alpha=1)
    "hardtanh": _clamp(-1.0, 1.0),
    "relu6": _clamp(0.0, 6.0),
    "identity": Candidate(lambda s: s["x"], lambda s: torch.ones_like(s["x"])),
    "relu2": Candidate(
        lambda s: _get(s, "relu") * _get(s, "relu"),
        lambda s: 2.0 * _get(s, "relu"),  # 0 for x <= 0, NaN for NaN (autograd: 2 * relu(x))
    ),
    "gelu_tanh": Candidate(
        # ATen: (0.5 x) (1 + t): inf at +inf, NaN at -inf (-inf * 0), -0 for large negative x.
        lambda s: (0.5 * s["x"]) * (1.0 + _get(s, "gelu_tanh_t")),
        _gelu_tanh_derivative,
    ),
}

_PAPER = frozenset(("relu", "elu", "leaky_relu", "prelu", "rrelu", "silu", "mish"))


def generic_scope(candidates: tuple[str, ...], training: bool) -> str | None:
    """Why the generic kernels cannot take this pool (None: they can). The paper's pools are not theirs."""
    missing = [c for c in candidates if c not in GENERIC_CANDIDATES]
    if missing:
        return f"no fused kernel for {', '.join(missing)} (generic: {', '.join(GENERIC_CANDIDATES)})"
    if training and "rrelu" in candidates:
        return "training-mode rrelu (a random slope per element) has no generic kernel, only the paper's pools do"
    if set(candidates) <= _PAPER:
        return "the paper's candidates run the paper's kernels"
    return None


# --- mixture algebra (eager, on K or C x K numbers) ----------------------------------------------


def generic_coefficients(
    logits: Tensor, prelu_weight: Tensor, candidates: tuple[str, ...], dtype: torch.dtype
) -> Tensor:
    """The kernels' coefficients in ``dtype``: ``softmax(logits)`` and the PReLU slope, ``(K + 1,)`` or ``(C, K + 1)``."""
    p = mixture_weights(logits).to(dtype)
    if "prelu" not in candidates:
        w = p.new_zeros(p.shape[:-1])
    elif p.dim() == 1:
        w = prelu_weight.to(dtype).reshape(())
    else:  # (C,) or one slope shared by every channel
        w = prelu_weight.to(dtype).expand(p.shape[0])
    return torch.cat([p, w.unsqueeze(-1)], dim=-1)


def generic_parameter_grads(
    sums: Tensor, coef: Tensor, logits: Tensor, prelu_weight: Tensor, candidates: tuple[str, ...]
) -> tuple[Tensor, Tensor]:
    """Logit and slope gradients from the backward kernel's sums, ``(K + 1,)`` or ``(C, K + 1)``."""
    k = len(candidates)
    p = coef[..., :k].to(sums.dtype)
    grad_logits = torch._softmax_backward_data(sums[..., :k], p, -1, p.dtype)  # p_k (S_k - sum_j p_j S_j)
    if "prelu" in candidates:
        grad_w = (p[..., candidates.index("prelu")] * sums[..., k]).reshape(-1)
        if grad_w.numel() != prelu_weight.numel():  # one slope shared by all channels
            grad_w = grad_w.sum(0, keepdim=True)
        grad_w = grad_w.to(prelu_weight.dtype)
    else:
        grad_w = torch.zeros_like(prelu_weight)
    return grad_logits.to(logits.dtype), grad_w


# --- elementwise kernels (compiled) -----------------------------------------------------------


def _setup(x: Tensor, coef: Tensor, flags: GenericFlags) -> tuple[Shared, list[Tensor]]:
    """The memo with ``x`` (compute dtype) and the slope, and the mixture weights shaped to broadcast."""
    cd = torch.float64 if x.dtype == torch.float64 else torch.float32
    cols = coef.to(cd).unbind(-1)
    if flags.channel:  # row i of coef goes with dim 1 of (N, C, R), or dim 0 of (N * C, R) rows
        cols = tuple(v.view(-1, *[1] * (x.dim() - (1 if x.dim() == 2 else 2))) for v in cols)
    s: Shared = {"x": x.to(cd), "w": cols[-1]}
    if cd == torch.float32 and "gelu" in flags.candidates and {"silu", "sigmoid", "softplus"} & set(flags.candidates):
        # GELU's erf and the sigmoid both divide: 1 / (a b) gives 1 / a and 1 / b for one division.
        # |x| is capped (NaN kept) so that a b stays finite: beyond 1e6 the erf's term is 0 anyway.
        x_abs = torch.minimum(s["x"].abs(), torch.full_like(s["x"], 1e6))
        a, b = 1.0 + 0.3275911 * _SQRT1_2 * x_abs, 1.0 + _get(s, "t")
        inv = 1.0 / (a * b)
        s["u"], s["q"] = b * inv, a * inv
    return s, list(cols[:-1])


def generic_forward(x: Tensor, coef: Tensor, flags: GenericFlags) -> Tensor:
    """``sum_k p_k f_k(x)`` in one pass; returns ``x.dtype``. ``coef``: from :func:`generic_coefficients`."""
    s, p = _setup(x, coef, flags)
    y: Tensor | None = None
    for k, name in enumerate(flags.candidates):
        term = p[k] * GENERIC_CANDIDATES[name].value(s)
        y = term if y is None else y + term
    assert y is not None, "a pool has at least one candidate"
    return y.to(x.dtype)


def generic_backward(grad: Tensor, x: Tensor, coef: Tensor, flags: GenericFlags) -> tuple[Tensor, Tensor]:
    """``(grad_x, sums)`` in one pass over ``x``: ``sums[..., k] = sum(g * f_k(x))``, then ``sum(g * x)`` over ``x <= 0``.

    ``sums``: ``(K + 1,)``, or ``(N * C, K + 1)`` per row for channels (the caller adds the rows of
    each channel up; see :func:`adact.fused.inductor.kernel_backward` for why rows); the last
    slot is 0 without PReLU.
    """
    s, p = _setup(x, coef, flags)
    g = grad.to(s["x"].dtype)
    dims = [1] if flags.channel else [0]
    sums: list[Tensor] = []
    dx: Tensor | None = None
    for k, name in enumerate(flags.candidates):
        cand = GENERIC_CANDIDATES[name]
        sums.append((g * cand.value(s)).sum(dims))
        term = p[k] * cand.derivative(s)
        dx = term if dx is None else dx + term
    assert dx is not None, "a pool has at least one candidate"
    if "prelu" in flags.candidates:
        sums.append(torch.where(_get(s, "pos"), 0.0, g * s["x"]).sum(dims))
    else:
        sums.append(torch.zeros_like(sums[0]))
    return (g * dx).to(x.dtype), torch.stack(sums, dim=-1)
