"""adactify checks what runs: a verification pass lists native calls and dead units, and the nine
ways a static view of the code went wrong (issue 26) each convert correctly or are listed and warned."""

from __future__ import annotations

import copy
import functools
import warnings

import pytest
import torch
import torch.nn.functional as F
import torch.nn.functional as fn  # an alias the source scan must read
from conftest import served_units
from torch import Tensor, nn
from torch.nn.functional import silu  # a from-import the source scan must read
from torch.utils.checkpoint import checkpoint, set_checkpoint_early_stop

from adact.surgery import adact_units, adactify, optimize
from adact.unit import AdAct


def _pin(model: nn.Module, names: list[str]) -> None:
    with torch.no_grad():
        for (_, u), name in zip(adact_units(model), names, strict=True):
            u.logits.zero_()
            u.logits[..., u.candidates.index(name)] = 100.0


# --- verification by running ---------------------------------------------------------------------


class _Untraceable(nn.Module):
    """A data-dependent branch (torch.fx fails), a native call, and an activation module it never calls."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(4, 4)
        self.act = nn.GELU()
        self.unused = nn.ReLU()

    def forward(self, x: Tensor) -> Tensor:
        x = self.act(self.lin(x))
        if x.sum() > -1e9:
            x = F.silu(x)
        return x


def test_verification_lists_native_calls_with_location_and_dead_units() -> None:
    _, report = adactify(_Untraceable(), example_inputs=torch.randn(2, 4), return_report=True)
    assert report.verified == ("train", "eval")
    assert report.dead == ("unused",) and report.sites == ("act", "unused")
    (miss,) = [m for m in report.missed if m.what == "F.silu"]
    assert miss.path == "" and miss.count == 2 and "test_surgery_verify.py:" in miss.reason and "(forward)" in miss.reason
    assert "1 of 2 units are never called (dead): 'unused'" in report.verification
    text = str(report)
    assert "missed F.silu at '<root>' (2 calls)" in text and "dead unit 'unused'" in text


def test_verification_warns_unless_the_report_is_returned() -> None:
    with pytest.warns(UserWarning, match=r"(?s)verified by running a 2 x 4 batch \(built by adactify\).*missed F\.silu.*"
                                         r"dead unit 'unused'.*return_report=True"):
        adactify(_Untraceable())
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        _, report = adactify(_Untraceable(), return_report=True)  # the report says it, no warning
    assert report.dead == ("unused",)


def test_nothing_verified_is_said_plainly() -> None:
    class NoInputs(nn.Module):  # no Conv2d/Linear/config: adactify cannot build inputs
        def __init__(self) -> None:
            super().__init__()
            self.act = nn.ReLU()

        def forward(self, x: Tensor) -> Tensor:
            return self.act(x)

    _, report = adactify(NoInputs(), return_report=True)
    assert report.verified == () and report.dead == ()
    assert report.verification.startswith("nothing verified by running") and "example_inputs" in report.verification
    _, report = adactify(NoInputs(), return_report=True, example_inputs=torch.randn(3))
    assert report.verified == ("train", "eval") and "all 1 units called" in report.verification
    _, report = adactify(NoInputs(), return_report=True, verify=False)
    assert report.verified == () and "verify=False" in report.verification


def test_verification_leaves_modes_statistics_and_rng_as_they_were() -> None:
    net = nn.Sequential(nn.Linear(4, 4), nn.BatchNorm1d(4), nn.ReLU(), nn.Dropout(0.5)).eval()
    net[1].train()  # a mixed-mode model stays mixed
    stats = net[1].running_mean.clone()
    states = []
    for verify in (False, True):
        torch.manual_seed(1)
        _, report = adactify(copy.deepcopy(net), example_inputs=torch.ones(8, 4), verify=verify, return_report=True)
        states.append(torch.random.get_rng_state())
    assert report.verified == ("eval", "train")  # its own mode first
    converted = adactify(net, example_inputs=torch.randn(8, 4))
    assert [m.training for m in converted] == [False, True, False, False]
    assert torch.equal(net[1].running_mean, stats) and torch.equal(states[0], states[1])


# --- the nine cases of issue 26 -----------------------------------------------------------------------


def test_case1_mamba_lists_helper_activations_and_dead_units() -> None:
    transformers = pytest.importorskip("transformers")
    config = transformers.MambaConfig(vocab_size=32, hidden_size=8, state_size=4, num_hidden_layers=1, expand=2,
                                      conv_kernel=2, time_step_rank=2)
    _, report = adactify(transformers.MambaForCausalLM(config), return_report=True)
    assert report.dead == ("backbone.layers.0.mixer.act",)
    ran = {m.what: m for m in report.missed if "seen by running" in m.reason}
    assert {"F.silu", "F.softplus"} <= set(ran)
    assert all(m.path.startswith("backbone.layers.0.mixer") and "modeling_mamba.py:" in m.reason for m in ran.values())


@pytest.mark.parametrize("kind", ["lambda", "function", "partial"])
def test_case2_transformer_layer_callables(kind: str) -> None:
    def own_gelu(x: Tensor) -> Tensor:
        return F.gelu(x)

    act = {"lambda": lambda x: F.gelu(x), "function": own_gelu,
           "partial": functools.partial(F.gelu, approximate="tanh")}[kind]
    layer = nn.TransformerEncoderLayer(8, 2, 16, dropout=0.0, activation=act, batch_first=True)
    x = torch.randn(2, 3, 8)
    if kind == "partial":  # a known activation: a unit that starts as exactly that function
        ref = copy.deepcopy(layer).eval()
        net, report = adactify(layer, example_inputs=x, init="original", candidates=["relu", "gelu"],
                               adact_kwargs={"fused": False}, return_report=True)
        assert report.sites == ("activation",) and report.originals == ("gelu_tanh",) and not report.missed
        with torch.no_grad():
            torch.testing.assert_close(net.eval()(x), ref(x))
        return
    _, report = adactify(copy.deepcopy(layer), example_inputs=x, return_report=True)
    assert report.n_units == 0
    assert [(m.path, m.what) for m in report.missed if "does not know" in m.reason] == [
        ("activation", "<lambda>" if kind == "lambda" else "own_gelu")]
    assert any(m.what == "F.gelu" and "seen by running" in m.reason for m in report.missed)
    with pytest.warns(UserWarning, match="missed F.gelu"):
        adactify(layer, example_inputs=x)


class _Aliases(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(4, 4)
        self.act_fn = F.silu  # a function held by the module

    def forward(self, x: Tensor) -> Tensor:
        if x.sum() > -1e9:  # untraceable
            x = fn.silu(self.lin(x))
        return silu(self.act_fn(x))


def test_case3_untraceable_aliases_from_imports_and_attributes_are_listed() -> None:
    _, report = adactify(_Aliases(), return_report=True, verify=False)
    assert [m.what for m in report.missed] == ["silu call"] * 3
    _, report = adactify(_Aliases(), return_report=True)
    assert [(m.what, m.count) for m in report.missed] == [("F.silu", 2), ("F.silu", 4)]  # one line, two calls
    with pytest.warns(UserWarning, match="missed F.silu"):
        adactify(_Aliases())


def test_case4_celu_rrelu_prelu_calls_are_converted() -> None:
    class Calls(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.lin = nn.Linear(4, 4)
            self.slope = nn.Parameter(torch.tensor([0.1]))

        def forward(self, x: Tensor) -> Tensor:
            return F.prelu(F.rrelu(torch.rrelu(torch.celu(self.lin(x)))), self.slope)

    net, report = adactify(Calls(), return_report=True)
    assert report.replaced == ("torch.celu", "torch.rrelu", "F.rrelu", "torch.prelu") and not report.missed
    assert report.verified == ("train", "eval") and not report.dead
    torch.testing.assert_close(net.adact_prelu.prelu_weight.detach(), torch.tensor([0.1]))  # the slope seeds it
    net(torch.randn(2, 4)).sum().backward()
    assert all(u.logits.grad is not None for _, u in adact_units(net))


class _TrainingOnly(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(4, 4)
        self.act = nn.ReLU()

    def forward(self, x: Tensor) -> Tensor:
        x = self.act(self.lin(x))
        if self.training:
            x = self.act(x) * 2
        return self.act(x - 1)


@pytest.mark.parametrize("mode", [True, False])
def test_case5_a_call_in_one_mode_keeps_its_unit_in_both(mode: bool) -> None:
    net, report = adactify(_TrainingOnly().train(mode), return_report=True)
    assert report.sites == ("act.0", "act.1", "act.2") and not report.dead
    x = torch.randn(2, 4)
    assert served_units(net, x, training=True, backward=True) == ["act.0", "act.1", "act.2"]
    assert served_units(net, x, training=False) == ["act.0", "act.2"]
    # optimize inherits the sites: the eval model applies unit 2's choice at the last call.
    _pin(net, ["relu", "silu", "elu"])
    fixed = optimize(net).eval()
    with torch.no_grad():
        torch.testing.assert_close(fixed(x), net.eval()(x))
        assert not torch.allclose(fixed(x), F.relu(F.relu(net.lin(x)) - 1))


def test_case6_sequential_called_through_forward_has_no_dead_unit() -> None:
    class Head(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.seq = nn.Sequential(nn.Linear(4, 4), nn.ReLU())

        def forward(self, x: Tensor) -> Tensor:
            return self.seq.forward(x)  # as timm's HRNet head does

    net, report = adactify(Head(), return_report=True)
    assert report.sites == ("seq.1",) and report.dead == () and report.verified == ("train", "eval")
    assert served_units(net, torch.randn(2, 4), training=True) == ["seq.1"]


class _Checkpointed(nn.Module):
    def __init__(self, use_checkpoint: bool = True) -> None:
        super().__init__()
        self.lin = nn.Linear(4, 4)
        self.act = nn.GELU()
        self.use_checkpoint = use_checkpoint

    def inner(self, x: Tensor) -> Tensor:
        return self.act(self.lin(self.act(x)))

    def forward(self, x: Tensor) -> Tensor:
        x = self.act(x)
        return self.act(checkpoint(self.inner, x, use_reentrant=False) if self.use_checkpoint else self.inner(x))


def test_case7_checkpoint_recomputation_reuses_the_original_units() -> None:
    net, plain = adactify(_Checkpointed()), adactify(_Checkpointed(use_checkpoint=False))
    plain.load_state_dict(net.state_dict())
    _pin(net, ["relu", "silu", "elu", "mish"])
    _pin(plain, ["relu", "silu", "elu", "mish"])
    x = torch.randn(2, 4, requires_grad=True)
    # Forward: units 0..3; the backward recomputes inner's two calls with units 1 and 2.
    with set_checkpoint_early_stop(False):  # recompute all of inner, not only what backward needs
        served = served_units(net, x, training=True, backward=True)
    assert served == ["act.0", "act.1", "act.2", "act.3", "act.1", "act.2"]
    grads = []
    for model in (net, plain):
        model.zero_grad()
        model(x).sum().backward()
        grads.append([p.grad.clone() for p in model.parameters()])
    for a, b in zip(*grads, strict=True):
        torch.testing.assert_close(a, b)


def test_case8_inplace_module_called_for_its_side_effect_still_acts() -> None:
    class SideEffect(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.lin = nn.Linear(4, 4)
            self.act = nn.ReLU(inplace=True)

        def forward(self, x: Tensor) -> Tensor:
            x = self.lin(x)
            self.act(x)
            return x

    ref = SideEffect()
    net, report = adactify(copy.deepcopy(ref), init="original", return_report=True)
    assert report.sites == ("act",) and report.traced == ("",)
    x = torch.randn(16, 4)
    torch.testing.assert_close(net(x), ref(x))  # the unit acts, as the ReLU did
    net = adactify(copy.deepcopy(ref))
    net(x).square().sum().backward()  # and learns: its output is what the forward returns
    assert net.act.logits.grad is not None and net.act.logits.grad.abs().sum() > 0


def test_case9_a_data_dependent_expert_loop_shares_one_unit() -> None:
    transformers = pytest.importorskip("transformers")
    config = transformers.MixtralConfig(vocab_size=32, hidden_size=8, intermediate_size=16, num_hidden_layers=1,
                                        num_attention_heads=2, num_key_value_heads=1, num_local_experts=4,
                                        num_experts_per_tok=2)
    config._experts_implementation = "eager"
    model = transformers.MixtralForCausalLM(config)
    for example in (None, torch.zeros(2, 8, dtype=torch.long)):
        net, report = adactify(copy.deepcopy(model), example_inputs=example, return_report=True)
        assert report.sites == ("model.layers.0.mlp.experts.act_fn",)
        assert report.shared == report.sites and not report.dead
        assert isinstance(net.get_submodule(report.sites[0]), AdAct)  # one unit, not one per batch position
        ids = torch.randint(0, 32, (4, 16))  # reaches more experts than the example
        calls = served_units(net, ids, training=True)
        assert len(calls) > 2 and set(calls) == set(report.sites)


def test_a_fixed_loop_in_an_untraceable_forward_gets_one_unit_per_turn() -> None:
    class Branches(nn.Module):  # HRNet's fuse layers: one line, called once per branch
        def __init__(self) -> None:
            super().__init__()
            self.branches = nn.ModuleList(nn.Linear(4, 4) for _ in range(3))
            self.act = nn.ReLU()

        def forward(self, x: Tensor) -> Tensor:
            if x.sum() > -1e9:  # untraceable
                x = x + 1
            return sum(self.act(b(x)) for b in self.branches)

    for example in (None, torch.randn(2, 4)):
        net, report = adactify(Branches(), example_inputs=example, return_report=True)
        assert report.sites == ("act.0", "act.1", "act.2") and not report.shared and not report.dead
        assert served_units(net, torch.randn(2, 4), training=True) == ["act.0", "act.1", "act.2"]


def test_an_untraceable_training_branch_keeps_its_unit_in_both_modes() -> None:
    class Branchy(_TrainingOnly):
        def forward(self, x: Tensor) -> Tensor:
            if x.sum() > -1e9:  # untraceable: the example pass finds the sites, in both modes
                x = self.act(self.lin(x))
            if self.training:
                x = self.act(x) * 2
            return self.act(x - 1)

    net, report = adactify(Branchy().eval(), example_inputs=torch.randn(2, 4), return_report=True)
    assert report.sites == ("act.0", "act.1", "act.2") and not report.dead and not report.shared
    x = torch.randn(2, 4)
    assert served_units(net, x, training=False) == ["act.0", "act.2"]
    assert served_units(net, x, training=True, backward=True) == ["act.0", "act.1", "act.2"]
