"""The math of the fused AdAct kernel, in plain torch ops (compiled by Inductor, or run eagerly).

The work splits in two:

* the **mixture algebra** (eager, a few tiny ops on the ``K`` logits): the softmax weights become
  seven coefficients (:func:`mixture_coefficients`), and the backward's per-element sums become
  the logit and slope gradients (:func:`parameter_grads`);
* the **elementwise kernels** (:func:`kernel_forward`, :func:`kernel_backward`): one pass over
  ``x``, every candidate derived from one exponential per element, ``t = exp(-|x|)`` in (0, 1]:

  - ELU for ``x <= 0``: ``expm1(x)``, a Taylor polynomial for ``|x| < 1/4`` (full relative
    precision near 0 without a second transcendental) and ``t - 1`` beyond;
  - ``sigmoid(x)``: ``1 / (1 + t)`` for ``x > 0``, ``t / (1 + t)`` otherwise;
  - ``tanh(softplus(x))``: with ``n = 1 + e^x`` it is ``(n^2 - 1) / (n^2 + 1)``, i.e.
    ``(1 + 2t) / (1 + 2t + 2t^2)`` for ``x > 0`` and ``(2t + t^2) / (2 + 2t + t^2)`` otherwise;
  - derivatives: ``sigmoid' = t / (1 + t)^2`` and ``(1 - tanh(softplus)^2) * sigmoid =
    4t(1 + t) * (t if x > 0 else 1) / den^2``;
  - SiLU's and Mish's divisions share one reciprocal, ``1 / ((1 + t) * den)``.

  No denominator can vanish or overflow, so every intermediate is finite for finite ``x``;
  ``+-inf`` and NaN reach the output through the same ``x * 0`` products as in
  :func:`adact.adact_reference`. ReLU, LeakyReLU, PReLU, RReLU and ELU's positive half fold into
  one slope per side (``x * a_pos`` for ``x > 0``, ``x * a_neg`` otherwise). The backward
  recomputes everything from ``x`` and, in the same loop, reduces six sums from which all
  per-candidate sums ``sum(g * f_k(x))`` follow.

Layouts (contiguous): one mixture per unit: ``x`` 1-D, coefficients ``(7,)``, sums ``(6,)``; one
per channel: the forward takes ``(N, C, R)`` with ``(C, 7)``, the backward ``(N * C, R)`` rows with
the coefficients repeated per row and sums per row (see :func:`kernel_backward`). The forward
with RReLU noise splits the last dim into ``(R / L, L)`` lanes (see :func:`flat_index`).

RReLU's training noise is never stored: :func:`rrelu_uniform` hashes ``(seed, flat index)``,
so the backward regenerates the forward's draws bit for bit (16 bits per draw).
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import torch
from torch import Tensor

from adact.activations import RRELU_LOWER, RRELU_UPPER
from adact.reference import mixture_weights

__all__ = [
    "FUSED_CANDIDATES",
    "KernelFlags",
    "LEAKY_SLOPE",
    "Mixing",
    "NOISE_BITS",
    "N_SUMS",
    "SLOT_ORDER",
    "compute_dtype",
    "kernel_backward",
    "kernel_flags",
    "kernel_forward",
    "flat_index",
    "mixing_matrices",
    "mixture_coefficients",
    "parameter_grads",
    "rrelu_uniform",
]

#: The candidates the fused kernel implements (any subset, in any order).
SLOT_ORDER: tuple[str, ...] = ("relu", "elu", "leaky_relu", "prelu", "rrelu", "silu", "mish")
FUSED_CANDIDATES: frozenset[str] = frozenset(SLOT_ORDER)

#: ``nn.LeakyReLU``'s default negative slope, as in the activation registry.
LEAKY_SLOPE: float = 0.01

_RRELU_MEAN: float = (RRELU_LOWER + RRELU_UPPER) / 2.0
_RRELU_SPAN: float = RRELU_UPPER - RRELU_LOWER

# Coefficient slots (last dim of `coef`): the two linear slopes, RReLU's noisy slope as
# p_rrelu * (lower + span * r), and the weights of the three curved candidates.
A_POS, A_NEG, RR_LOWER, RR_SPAN, P_ELU, P_SILU, P_MISH = range(7)
N_COEF = 7
# Sum slots (last dim of `sums`): g*x over x > 0, g*x over x <= 0, g*x*r over x <= 0 (training
# RReLU), g*expm1(x) over x <= 0, g*silu(x), g*mish(x).
S_POS, S_NEG, S_NOISE, S_ELU, S_SILU, S_MISH = range(6)
N_SUMS = 6

_LINEAR = ("relu", "elu", "leaky_relu", "prelu", "rrelu")  # slope 1 for x > 0
# Wellons' "lowbias32" integer mix, in int32 arithmetic: products wrap mod 2**32 like uint32
# ones, and right shifts are made logical by masking (_shr). The second multiplier, 0x846CA68B,
# is written as the int32 with the same bits.
_HASH_MUL = (0x7FEB352D, 0x846CA68B - 2**32)
#: Bits of RReLU noise per element: each 32-bit hash yields two draws.
NOISE_BITS = 16


class KernelFlags(NamedTuple):
    """What a kernel variant computes, and on which layout (static: each combination compiles once).

    A term that is absent is left out rather than multiplied by 0, because ``0 * inf`` would
    turn the reference's ``inf`` or ``0`` into NaN.
    """

    channel: bool  # one mixture per channel (the layouts are in the module docstring)
    linear: bool  # any of relu/elu/leaky/prelu/rrelu: x * a_pos for x > 0
    neg_linear: bool  # leaky/prelu/eval-mode rrelu: x * a_neg for x <= 0 (also: S_NEG is needed)
    noisy: bool  # training-mode rrelu: x * p_rrelu * U(lower, upper) for x <= 0
    elu: bool
    silu: bool
    mish: bool


@functools.lru_cache(maxsize=256)
def kernel_flags(candidates: tuple[str, ...], training: bool, channel: bool) -> KernelFlags:
    """The :class:`KernelFlags` of a pool (only training-mode RReLU depends on ``training``)."""
    c = set(candidates)
    noisy = training and "rrelu" in c
    return KernelFlags(
        channel=channel,
        linear=bool(c & set(_LINEAR)),
        neg_linear=bool(c & {"leaky_relu", "prelu"}) or ("rrelu" in c and not noisy),
        noisy=noisy,
        elu="elu" in c,
        silu="silu" in c,
        mish="mish" in c,
    )


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype the kernel computes in: float64 for float64, float32 for everything else."""
    return torch.float64 if dtype == torch.float64 else torch.float32


# --- mixture algebra (eager, on K or C x K numbers) ----------------------------------------------


def _slope(prelu_weight: Tensor, p: Tensor) -> Tensor:
    """The PReLU slope shaped to broadcast with a column of ``p``: ``()``, ``(C,)`` or ``(1,)``."""
    w = prelu_weight.to(p.dtype)
    return w.reshape(()) if p.dim() == 1 else w


class Mixing(NamedTuple):
    to_coef: Tensor  # (K, 7): coef_j = sum_k p_k * to_coef[k, j], PReLU's slope term aside
    from_sums: Tensor  # (6, K): G_k = sum(g * f_k(x)) = sum_j sums_j * from_sums[j, k], likewise
    a_neg: Tensor  # (7,) one-hot: where PReLU's w * p_prelu goes
    prelu: Tensor | None  # (K,) one-hot: where w * S_NEG goes; None without PReLU


# The backward's sum slot that pairs with each coefficient slot.
_SUM_OF_COEF = (S_POS, S_NEG, S_NEG, S_NOISE, S_ELU, S_SILU, S_MISH)


@functools.lru_cache(maxsize=64)
def mixing_matrices(candidates: tuple[str, ...], training: bool, dtype: torch.dtype, device: torch.device) -> Mixing:
    """Constant matrices of the mixture algebra for one pool (cached: built once per pool)."""
    to_coef = torch.zeros(len(candidates), N_COEF, dtype=torch.float64)
    for k, name in enumerate(candidates):
        row = to_coef[k]
        if name in _LINEAR:
            row[A_POS] = 1.0
        if name == "leaky_relu":
            row[A_NEG] = LEAKY_SLOPE
        elif name == "rrelu" and training:
            row[RR_LOWER], row[RR_SPAN] = RRELU_LOWER, _RRELU_SPAN
        elif name == "rrelu":
            row[A_NEG] = _RRELU_MEAN
        elif name in ("elu", "silu", "mish"):
            row[{"elu": P_ELU, "silu": P_SILU, "mish": P_MISH}[name]] = 1.0
    # Each coefficient multiplies a basis function whose g-weighted sum is one sum slot, so the
    # backward's map is the transpose, with coefficient rows gathered onto their sum slots.
    from_sums = torch.zeros(N_SUMS, len(candidates), dtype=torch.float64)
    for j, slot in enumerate(_SUM_OF_COEF):
        from_sums[slot] += to_coef[:, j]
    a_neg = torch.zeros(N_COEF, dtype=torch.float64)
    a_neg[A_NEG] = 1.0
    prelu = None
    if "prelu" in candidates:
        prelu = torch.zeros(len(candidates), dtype=torch.float64)
        prelu[candidates.index("prelu")] = 1.0
    put = functools.partial(torch.Tensor.to, dtype=dtype, device=device)
    return Mixing(put(to_coef), put(from_sums), put(a_neg), None if prelu is None else put(prelu))


def mixture_coefficients(
    logits: Tensor, prelu_weight: Tensor, candidates: tuple[str, ...], training: bool, dtype: torch.dtype
) -> Tensor:
    """The kernel's seven coefficients, ``(7,)`` or ``(C, 7)``, in ``dtype``."""
    p = mixture_weights(logits).to(dtype)
    mix = mixing_matrices(candidates, training, dtype, p.device)
    coef = p @ mix.to_coef
    if mix.prelu is not None:
        w_p = _slope(prelu_weight, p) * p[..., candidates.index("prelu")]
        coef = torch.addcmul(coef, w_p.unsqueeze(-1), mix.a_neg)
    return coef


def parameter_grads(
    sums: Tensor, logits: Tensor, prelu_weight: Tensor, candidates: tuple[str, ...], training: bool
) -> tuple[Tensor, Tensor]:
    """Logit and slope gradients from the backward kernel's six sums (``(6,)`` or ``(C, 6)``)."""
    p = mixture_weights(logits).to(sums.dtype)
    mix = mixing_matrices(candidates, training, sums.dtype, sums.device)
    g_mix = sums @ mix.from_sums  # per-candidate sums G_k = sum(g * f_k(x))
    grad_w = torch.zeros_like(prelu_weight)
    if mix.prelu is not None:
        s_neg = sums[..., S_NEG]
        g_mix = torch.addcmul(g_mix, (_slope(prelu_weight, p) * s_neg).unsqueeze(-1), mix.prelu)
        grad_w = (p[..., candidates.index("prelu")] * s_neg).reshape(-1)
        if grad_w.numel() != prelu_weight.numel():  # one slope shared by all channels
            grad_w = grad_w.sum(0, keepdim=True)
    # Softmax backward: dL/dw_k = p_k * (G_k - sum_j p_j G_j).
    grad_logits = torch._softmax_backward_data(g_mix, p, -1, p.dtype)
    return grad_logits.to(logits.dtype), grad_w.to(prelu_weight.dtype)


# --- elementwise kernels (compiled) -----------------------------------------------------------


def _shr(h: Tensor, s: int) -> Tensor:
    """Logical right shift of int32 bit patterns (``>>`` on int32 is arithmetic)."""
    return (h >> s) & ((1 << (32 - s)) - 1)


def _lowbias32(h: Tensor) -> Tensor:
    """Wellons' lowbias32 mix of int32 bit patterns (as uint32 arithmetic)."""
    h = h ^ _shr(h, 16)
    h = h * _HASH_MUL[0]
    h = h ^ _shr(h, 15)
    h = h * _HASH_MUL[1]
    return h ^ _shr(h, 16)


def rrelu_uniform(index: Tensor, seed: Tensor) -> Tensor:
    """Uniform ``(0, 1)`` float32 draws, a pure function of ``(seed, index)``: 16 bits of a hash each.

    Elements come in blocks of 32: element ``e`` takes half ``v = (e // 16) % 2`` of
    ``lowbias32(p ^ seed)`` with ``p = (e // 32) * 16 + e % 16``, so that a vectorised kernel
    hashes 16 lanes once for two 16-lane vectors (the hash is most of the noise's cost). The
    draw is the centre of one of 2**16 equal bins, ``(bits + 1/2) / 2**16``: exactly uniform over
    the bins, mean 1/2, in float32 exactly. Counter-based, so the backward regenerates the
    forward's noise from the seed alone; the native kernels (:mod:`adact.fused.native`) compute
    the same bits.

    Args:
        index: int32 tensor of flat element indices (mod 2**32).
        seed: int32 scalar tensor.
    """
    pair = (_shr(index, 5) << 4) | (index & 15)
    h = _lowbias32(pair ^ seed)
    bits = torch.where((index & 16) != 0, _shr(h, 16), h & 0xFFFF)
    return bits.to(torch.float32) * (2.0**-NOISE_BITS) + (2.0 ** -(NOISE_BITS + 1))


def flat_index(x: Tensor, lanes: Tensor | None) -> Tensor:
    """Flat memory index (int32, mod 2**32) of every element of a contiguous ``x``.

    With ``lanes`` (``arange(L)``, ``L`` the size of ``x``'s last dim) the index is a row offset
    plus ``lanes``: passed in as data, the compiler cannot fold it back into one ``arange`` over the
    whole tensor, which its vectorized loop assembles lane by lane (slow); loaded from a tensor it
    is one vector load plus a broadcast. Same values either way.
    """
    if lanes is None:
        return torch.arange(x.numel(), device=x.device, dtype=torch.int32).view(x.shape)
    rows = torch.arange(x.numel() // lanes.numel(), device=x.device, dtype=torch.int32)
    return rows.view(*x.shape[:-1], 1) * lanes.numel() + lanes


def _exp_expm1_nonpositive(z: Tensor) -> tuple[Tensor, Tensor]:
    """``(exp(z), expm1(z))`` for ``z <= 0`` (or NaN), with one transcendental call.

    float32: ``expm1`` is its Taylor polynomial to ``z**6`` for ``z > -1/4`` (truncation < 5e-8
    relative) and ``exp(z) - 1`` below, where ``|exp(z) - 1| > 0.22`` loses at most ~2 bits.
    """
    t = torch.exp(z)
    if z.dtype == torch.float64:
        # float64 exists for checking (gradcheck differentiates at 1e-6 steps): the libm call.
        return t, torch.expm1(z)
    # Literal constants (not module globals): Dynamo would pass globals in as runtime scalars.
    poly = z * (1.0 / 720.0) + (1.0 / 120.0)
    for c in (1.0 / 24.0, 1.0 / 6.0, 0.5, 1.0):
        poly = poly * z + c
    return t, torch.where(z > -0.25, poly * z, t - 1.0)


class _Common(NamedTuple):
    xc: Tensor  # x in the compute dtype
    neg: Tensor  # x <= 0 (NaN takes the x > 0 side, as in F.relu)
    t: Tensor  # exp(-|x|)
    u: Tensor  # expm1(-|x|): ELU for x <= 0
    slope_neg: Tensor | None  # linear slope for x <= 0 (with RReLU's noise); None: no such term
    noise: Tensor | None  # RReLU's U(0, 1) draw per element (training)
    sig: Tensor | None  # sigmoid(x)
    q: Tensor | None  # 1 / (1 + t)
    tsp: Tensor | None  # tanh(softplus(x))
    inv_den: Tensor | None  # 1 / (denominator of tsp)


def _common(
    x: Tensor, coef: Tensor, seed: Tensor, lanes: Tensor | None, flags: KernelFlags
) -> tuple[_Common, list[Tensor]]:
    """Per-element quantities both passes need, from ``t = exp(-|x|)``; and the coefficients.

    Per channel, ``coef`` row ``i`` goes with index ``i`` of dim 1 of an ``(N, C, R[, L])`` input,
    or of dim 0 of ``(N * C, R)`` rows.
    """
    cd = torch.float64 if x.dtype == torch.float64 else torch.float32
    xc = x.to(cd)
    # Coefficients broadcast over x: scalars, or per channel (or row) with trailing unit dims.
    cols = coef.to(cd).unbind(-1)
    channel_dim = 0 if x.dim() == 2 else 1
    c = [v.view(-1, *[1] * (x.dim() - 1 - channel_dim)) if flags.channel else v for v in cols]
    neg = xc <= 0
    t, u = _exp_expm1_nonpositive(-xc.abs())
    noise = rrelu_uniform(flat_index(x, lanes), seed) if flags.noisy else None
    slope_neg = c[A_NEG] if flags.neg_linear else None
    if noise is not None:
        noisy_slope = c[RR_LOWER] + c[RR_SPAN] * noise.to(cd)
        slope_neg = noisy_slope if slope_neg is None else slope_neg + noisy_slope
    q = inv_den = num = None
    if flags.mish:
        # (1 + 2t) / (1 + 2t + 2t^2) for x > 0, (2t + t^2) / (2 + 2t + t^2) otherwise.
        num = torch.where(neg, t * (2.0 + t), 1.0 + 2.0 * t)
        den = num + torch.where(neg, 2.0, 2.0 * t * t)
        if flags.silu:  # one division for both
            inv = 1.0 / ((1.0 + t) * den)
            q, inv_den = den * inv, (1.0 + t) * inv
        else:
            inv_den = 1.0 / den
    elif flags.silu:
        q = 1.0 / (1.0 + t)
    sig = torch.where(neg, t * q, q) if q is not None else None
    tsp = num * inv_den if num is not None and inv_den is not None else None
    return _Common(xc, neg, t, u, slope_neg, noise, sig, q, tsp, inv_den), c


def _add(acc: Tensor | None, term: Tensor) -> Tensor:
    return term if acc is None else acc + term


def _select(neg: Tensor, if_neg: Tensor | None, if_pos: Tensor | None) -> Tensor | None:
    """``where(x <= 0, if_neg, if_pos)`` with a missing side read as 0; None if both are missing."""
    if if_neg is None and if_pos is None:
        return None
    return torch.where(neg, 0.0 if if_neg is None else if_neg, 0.0 if if_pos is None else if_pos)


def kernel_forward(x: Tensor, coef: Tensor, seed: Tensor, lanes: Tensor | None, flags: KernelFlags) -> Tensor:
    """AdAct forward in one pass; returns ``x.dtype``.

    Args:
        x: contiguous input, laid out as :class:`KernelFlags` says (a trailing lane dim when noisy).
        coef: from :func:`mixture_coefficients`.
        seed: int32 scalar, RReLU's noise key (read when ``flags.noisy``).
        lanes: ``arange(L)`` int32 for the trailing lane dim of noisy kernels, else None.
        flags: the variant.
    """
    k, c = _common(x, coef, seed, lanes, flags)
    # Piecewise part: x * a_pos for x > 0; x * slope_neg + p_elu * expm1(x) otherwise.
    if_neg = k.xc * k.slope_neg if k.slope_neg is not None else None
    if flags.elu:
        if_neg = _add(if_neg, c[P_ELU] * k.u)
    y = _select(k.neg, if_neg, k.xc * c[A_POS] if flags.linear else None)
    # x * (p_silu * sigmoid + p_mish * tanh(softplus)), apart from the linear part: at x = -inf
    # it is -inf * 0 = NaN, as F.silu and F.mish give.
    curved = c[P_SILU] * k.sig if k.sig is not None else None
    if k.tsp is not None:
        curved = _add(curved, c[P_MISH] * k.tsp)
    if curved is not None:
        y = _add(y, k.xc * curved)
    assert y is not None, "a pool has at least one candidate"
    return y.to(x.dtype)


def kernel_backward(grad: Tensor, x: Tensor, coef: Tensor, seed: Tensor, flags: KernelFlags) -> tuple[Tensor, Tensor]:
    """``(grad_x, sums)``: the input gradient and the six parameter sums, in one pass over ``x``.

    ``grad`` has ``x``'s shape and memory order. The layouts keep the elementwise work and the
    reductions in one loop nest (the compiler gives a differently ordered reduction a pass of
    its own, storing ``t`` for it): ``x`` is 1-D for one mixture, and per channel it is
    ``(N * C, R)`` rows with ``coef`` repeated per row, ``(N * C, 7)``, and ``sums`` per row (the
    caller adds up the rows of each channel; a direct sum over (N, R) would run channel-major).
    No lane dim either: a reduction over (rows, lanes) would get a pass of its own as well.
    ``sums``: ``(6,)`` or ``(N * C, 6)`` in the compute dtype; slots a pool does not need are 0.
    """
    k, c = _common(x, coef, seed, None, flags)
    gc = grad.to(k.xc.dtype)
    gx = gc * k.xc
    dims = [1] if flags.channel else [0]  # per row, or everything

    def total(v: Tensor) -> Tensor:
        return v.sum(dims)

    sums: list[Tensor | None] = [None] * N_SUMS
    if flags.linear:
        sums[S_POS] = total(torch.where(k.neg, 0.0, gx))
    if flags.neg_linear or flags.noisy:
        sums[S_NEG] = total(torch.where(k.neg, gx, 0.0))
    if k.noise is not None:
        sums[S_NOISE] = total(torch.where(k.neg, gx * k.noise.to(gx.dtype), 0.0))
    if flags.elu:
        sums[S_ELU] = total(torch.where(k.neg, gc * k.u, 0.0))
    if k.sig is not None:
        sums[S_SILU] = total(gx * k.sig)
    if k.tsp is not None:
        sums[S_MISH] = total(gx * k.tsp)

    # dy/dx = piecewise slope (ELU's is t for x <= 0) + terms without and with a factor x.
    if_neg = k.slope_neg
    if flags.elu:
        if_neg = _add(if_neg, c[P_ELU] * k.t)
    dx = _select(k.neg, if_neg, c[A_POS] if flags.linear else None)
    times_x = None
    if k.sig is not None:
        assert k.q is not None
        dx = _add(dx, c[P_SILU] * k.sig)
        times_x = c[P_SILU] * (k.t * k.q * k.q)  # sigmoid' = t / (1 + t)^2
    if k.tsp is not None:
        assert k.inv_den is not None
        dx = _add(dx, c[P_MISH] * k.tsp)
        # (1 - tanh(softplus)^2) * sigmoid = 4t(1 + t) * (t if x > 0 else 1) / den^2
        sech2_sig = (4.0 * k.t * (1.0 + k.t)) * torch.where(k.neg, 1.0, k.t) * (k.inv_den * k.inv_den)
        times_x = _add(times_x, c[P_MISH] * sech2_sig)
    if times_x is not None:
        dx = _add(dx, k.xc * times_x)
    assert dx is not None, "a pool has at least one candidate"
    some = next(v for v in sums if v is not None)
    stacked = torch.stack([torch.zeros_like(some) if v is None else v for v in sums], dim=-1)
    return (gc * dx).to(x.dtype), stacked
