"""Language models (issue 23): text loading, token loaders, the held-out loss, nanoGPT's settings, training and search."""

from __future__ import annotations

import csv
import itertools
import math
import random
from pathlib import Path
from typing import Any

import pytest
import torch

import adact.experiments.workers
from adact.activations import ACTIVATIONS
from adact.choice import adact_units
from adact.cli import main
from adact.config import GPT_DEFAULTS, LM_CANDIDATES, LM_DEFAULTS, TrainConfig
from adact.data.text import TokenBatches, TokenBlocks, load_text
from adact.dataspec import DatasetSpec
from adact.errors import UserError
from adact.gpt import GPT
from adact.runs.io import read_json
from adact.training.build import load_checkpoint
from adact.training.loop import lr_factor, train
from adact.training.task import LanguageModelling, evaluate_tokens, task_for
from adact.unit import AdAct
from conftest import cli_error

#: A GPT small enough for tens of CPU steps in about a second.
TINY_GPT: dict[str, Any] = {"n_layer": 2, "n_head": 2, "n_embd": 32, "block_size": 16, "device": "cpu", "fused": False}
TIMING = ("seconds", "tokens_per_s")
WORDS = ("the", "king", "queen", "shall", "not", "speak", "of", "what", "is", "done", "my", "lord", "café", "naïve",
         "—", "and", "to", "be", "thou", "art")


pytestmark = pytest.mark.usefixtures("one_thread")  # see conftest


def _make_text(n_chars: int = 4000, seed: int = 0) -> str:
    """Shakespeare-ish lines with a few non-ASCII characters (so characters and bytes differ)."""
    rng = random.Random(seed)
    lines: list[str] = []
    while sum(len(line) + 1 for line in lines) < n_chars:
        lines.append(" ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 9))).capitalize() + rng.choice(".,;!?"))
    return "\n".join(lines) + "\n"


@pytest.fixture(scope="module")
def text_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("text") / "tiny.txt"
    path.write_text(_make_text(), encoding="utf-8")
    return path


def _rows(run: Path) -> list[dict[str, str]]:
    with open(run / "metrics.csv", newline="") as f:
        return list(csv.DictReader(f))


# --- 1. text loading ---------------------------------------------------------------------------


def test_char_tokenizer_vocabulary_and_nanogpt_split(text_file: Path) -> None:
    text = text_file.read_text(encoding="utf-8")
    data = load_text(text_file)
    assert data.vocab == sorted(set(text)) and data.vocab_size == len(set(text))
    n = len(text)  # characters, not bytes: the file has non-ASCII ones
    assert n < len(text.encode("utf-8"))
    assert len(data.train) == int(n * 0.9) and len(data.test) == n - int(n * 0.9) and data.val is None
    assert data.train.dtype == data.test.dtype == torch.int64
    # The ids are the characters' indices in the vocabulary, train first, then the held-out tail.
    assert data.decode(torch.cat([data.train, data.test])) == text
    assert data.decode(data.test) == text[int(n * 0.9):]
    assert data.name == f"text:{text_file}" and data.info["tokens"] == n and data.info["tokenizer"] == "char"


def test_bytes_tokenizer(text_file: Path) -> None:
    raw = text_file.read_bytes()
    data = load_text(text_file, "bytes")
    assert data.vocab is None and data.vocab_size == 256
    n = len(raw)
    assert len(data.train) == int(n * 0.9) and len(data.test) == n - int(n * 0.9)
    assert torch.cat([data.train, data.test]).tolist() == list(raw)
    # Any file is fine byte by byte: NULs and invalid UTF-8 included.
    binary = text_file.with_name("blob.bin")
    binary.write_bytes(bytes(range(256)) * 4)
    blob = load_text(binary, "bytes")
    assert torch.cat([blob.train, blob.test]).tolist() == list(range(256)) * 4


def test_val_fraction_is_carved_from_the_end_of_train(text_file: Path) -> None:
    full = load_text(text_file)
    data = load_text(text_file, val_fraction=0.25)
    assert data.val is not None
    cut = len(full.train)
    keep = int(cut * 0.75)
    assert len(data.train) == keep and len(data.val) == cut - keep
    assert torch.equal(torch.cat([data.train, data.val]), full.train)  # train then val: the first 90%, in order
    assert torch.equal(data.test, full.test)  # the held-out tail is untouched


BAD_FILES = {
    "empty": (b"", "char", "empty"),
    "empty-bytes": (b"", "bytes", "empty"),
    "nul": (b"hello\x00world " * 50, "char", "NUL byte"),
    "latin1": ("caf\u00e9 ".encode("latin-1") * 100, "char", "not UTF-8"),
}


@pytest.mark.parametrize("case", list(BAD_FILES))
def test_bad_files_are_user_errors_naming_the_file(case: str, tmp_path: Path) -> None:
    content, tokenizer, words = BAD_FILES[case]
    path = tmp_path / f"{case}.txt"
    path.write_bytes(content)
    with pytest.raises(UserError) as err:
        load_text(path, tokenizer)
    message = str(err.value)
    assert str(path) in message and words in message and "\n" not in message


def test_too_short_for_the_block_size(tmp_path: Path) -> None:
    path = tmp_path / "short.txt"
    path.write_text("x" * 100, encoding="utf-8")  # 90 training tokens, 10 held out
    data = load_text(path)
    data.check(9)  # 10 held-out tokens: one block of 9 and its 9 targets
    for block_size in (10, 16):
        with pytest.raises(UserError, match="too short for block size") as err:
            data.check(block_size)
        assert str(path) in str(err.value) and "held-out" in str(err.value)
    # The training run refuses it before touching its folder.
    config = TrainConfig(dataset=f"text:{path}", max_iters=2, eval_interval=1, **TINY_GPT)
    with pytest.raises(UserError, match="too short") as err:
        train(config, tmp_path / "run", quiet=True)
    assert str(path) in str(err.value) and not (tmp_path / "run").exists()


@pytest.mark.parametrize("content, words", [(b"", "empty"), (b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" * 20, "NUL byte")])
def test_cli_bad_text_files_are_one_line_errors(content: bytes, words: str, tmp_path: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "data.txt"
    path.write_bytes(content)
    for argv in (["train", "--dataset", f"text:{path}", "--max-iters", "2", "--eval-interval", "1", "--device", "cpu",
                  "--quiet", "--out", str(tmp_path / "run")],
                 ["search", "--dataset", f"text:{path}", "--max-iters", "2", "--eval-interval", "1", "--device", "cpu",
                  "--seeds", "0", "--jobs", "1", "--quiet", "--out", str(tmp_path / "search")]):
        err = cli_error(capsys, argv)
        assert str(path) in err and words in err, err
    assert not (tmp_path / "run").exists() and not (tmp_path / "search").exists()  # refused before writing


# --- 2. token loaders --------------------------------------------------------------------------


def test_token_blocks_cover_every_full_block_once() -> None:
    tokens = torch.arange(103)
    blocks = TokenBlocks(tokens, block_size=10, batch_size=3)
    assert blocks.blocks == 10 and len(blocks) == 4  # (103 - 1) // 10 blocks, in batches of 3, 3, 3, 1
    batches = list(blocks)
    assert [len(x) for x, _ in batches] == [3, 3, 3, 1]
    x = torch.cat([b[0] for b in batches])
    y = torch.cat([b[1] for b in batches])
    assert torch.equal(x.flatten(), torch.arange(100))  # every token of the full blocks, once, in order
    assert torch.equal(y, x + 1)  # targets: the next token
    again = list(blocks)
    assert all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) for a, b in zip(batches, again))
    # Exactly N - 1 tokens fill the blocks: the last target is the split's last token.
    exact = list(TokenBlocks(torch.arange(21), block_size=10, batch_size=8))
    assert len(exact) == 1 and exact[0][1][-1, -1] == 20
    with pytest.raises(UserError):
        TokenBlocks(torch.arange(10), block_size=10, batch_size=1)  # no room for the last target


def test_token_blocks_rank_slices() -> None:
    tokens = torch.arange(103)
    whole = list(TokenBlocks(tokens, 10, 3))
    parts = [list(TokenBlocks(tokens, 10, 3, rank=r, world_size=2)) for r in range(2)]
    for i, (x, y) in enumerate(whole):
        assert torch.equal(torch.cat([parts[0][i][0], parts[1][i][0]]), x)
        assert torch.equal(torch.cat([parts[0][i][1], parts[1][i][1]]), y)


def _epoch(loader: TokenBatches, epoch: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    loader.set_epoch(epoch)
    return list(loader)


def _same(a: list[tuple[torch.Tensor, torch.Tensor]], b: list[tuple[torch.Tensor, torch.Tensor]]) -> bool:
    return len(a) == len(b) and all(torch.equal(p[0], q[0]) and torch.equal(p[1], q[1]) for p, q in zip(a, b))


def test_token_batches_are_seeded_per_seed_and_epoch() -> None:
    tokens = torch.arange(200)
    make = lambda seed=0: TokenBatches(tokens, block_size=8, batch_size=5, steps=4, max_steps=10, seed=seed)
    first = _epoch(make(), 2)
    # A fresh loader (a resumed run) draws epoch 2's batches without having drawn epoch 1's.
    walked = make()
    _epoch(walked, 1)
    assert _same(_epoch(walked, 2), first)
    assert not _same(_epoch(make(), 1), first) and not _same(_epoch(make(seed=1), 2), first)
    for x, y in first:
        assert x.shape == y.shape == (5, 8) and x.dtype == torch.int64
        assert torch.equal(y, x + 1)  # windows of consecutive tokens, targets shifted by one
        assert torch.equal(x - x[:, :1], torch.arange(8).expand(5, 8))
        assert int(x.min()) >= 0 and int(y.max()) < 200


def test_token_batches_step_budget() -> None:
    loader = TokenBatches(torch.arange(200), block_size=8, batch_size=2, steps=4, max_steps=10)
    lengths = []
    for epoch in (1, 2, 3, 4):
        loader.set_epoch(epoch)
        lengths.append((len(loader), len(list(loader))))
    assert lengths == [(4, 4), (4, 4), (2, 2), (0, 0)]  # the last epoch gets what remains of max_steps
    loader = TokenBatches(torch.arange(200), block_size=8, batch_size=2, steps=4)
    loader.set_epoch(7)
    assert len(list(loader)) == 4  # no step budget: every epoch is whole
    with pytest.raises(UserError):
        TokenBatches(torch.arange(8), block_size=8, batch_size=2, steps=1)


def test_token_batches_rank_slices_concatenate_to_the_single_process_batch() -> None:
    tokens = torch.arange(300)
    whole = _epoch(TokenBatches(tokens, 8, 5, steps=3, seed=4), 2)
    parts = [_epoch(TokenBatches(tokens, 8, 5, steps=3, seed=4, rank=r, world_size=2), 2) for r in range(2)]
    assert [len(x) for x, _ in parts[0]] == [3] * 3 and [len(x) for x, _ in parts[1]] == [2] * 3
    for i, (x, y) in enumerate(whole):
        assert torch.equal(torch.cat([parts[0][i][0], parts[1][i][0]]), x)
        assert torch.equal(torch.cat([parts[0][i][1], parts[1][i][1]]), y)


# --- 3. the held-out loss ----------------------------------------------------------------------


def test_evaluate_tokens_is_the_mean_cross_entropy_over_every_token() -> None:
    torch.manual_seed(1)
    model = GPT(vocab_size=11, block_size=8, n_layer=1, n_head=2, n_embd=8)
    tokens = torch.randint(11, (60,))
    loader = TokenBlocks(tokens, block_size=8, batch_size=3)  # 7 blocks: batches of 3, 3, 1 (unequal on purpose)
    losses = []
    model.eval()
    with torch.no_grad():
        for i in range(7):
            x, y = tokens[i * 8: i * 8 + 8], tokens[i * 8 + 1: i * 8 + 9]
            logp = torch.log_softmax(model(x[None])[0].double(), dim=-1)  # (T, V)
            losses += [-float(logp[t, y[t]]) for t in range(8)]
    expected = sum(losses) / len(losses)
    model.train()
    assert evaluate_tokens(model, loader) == pytest.approx(expected, rel=1e-5)
    # The task's evaluation reports it as both its loss and its metric.
    assert LanguageModelling().evaluate(model, loader, False) == pytest.approx((expected, expected), rel=1e-5)
    # A uniform model's loss is log(V).
    with torch.no_grad():
        for p in model.parameters():
            p.zero_()
    assert evaluate_tokens(model, loader) == pytest.approx(math.log(11), rel=1e-6)


def test_language_modelling_training_loss_counts_every_token(text_file: Path) -> None:
    task = LanguageModelling()
    config = TrainConfig(dataset=f"text:{text_file}", **TINY_GPT)
    logits, target = torch.randn(3, 5, 7), torch.randint(7, (3, 5))  # (B, T, V), (B, T)
    plain = torch.nn.functional.cross_entropy(logits.flatten(0, 1), target.flatten())
    assert float(task.loss(logits, target, 3, config)) == pytest.approx(float(plain), rel=1e-6)
    assert task.count(logits, target) == pytest.approx(3 * float(plain), rel=1e-6)  # weighted by blocks
    assert (task.metric, task.higher_is_better, task.samples) == ("loss", False, "tokens")
    assert task.extras(2.0) == {"best_test_ppl": pytest.approx(math.exp(2.0))} and task.extras(None)["best_test_ppl"] is None


# --- 4. settings -------------------------------------------------------------------------------


def test_text_config_resolves_to_nanogpt_shakespeare_char(text_file: Path) -> None:
    c = TrainConfig(dataset=f"text:{text_file}")
    assert c.is_text and isinstance(task_for(c), LanguageModelling)
    assert (c.batch_size, c.weight_decay, c.decay_1d, c.schedule, c.grad_clip, c.betas) == (
        12, 0.1, False, "cosine", 1.0, [0.9, 0.99])
    assert (c.max_iters, c.eval_interval, c.warmup_iters, c.block_size, c.tokenizer) == (2000, 250, 100, 64, "char")
    assert c.min_lr == pytest.approx(c.lr / 10)
    assert (c.model, c.n_layer, c.n_head, c.n_embd, c.dropout, c.gpt_activation) == ("gpt", 4, 4, 128, 0.0, "gelu")
    assert c.candidates == list(LM_CANDIDATES) and "prelu" not in c.candidates
    assert c.epochs == 8  # one "epoch" per evaluation interval: 2000 / 250
    assert LM_DEFAULTS["batch_size"] == 12 and GPT_DEFAULTS["n_layer"] == 4
    # Given settings are kept; a short budget keeps nanoGPT's warm-up share (100 of 2000).
    c = TrainConfig(dataset=f"text:{text_file}", max_iters=1000, eval_interval=300, batch_size=4, lr=6e-4)
    assert (c.epochs, c.warmup_iters, c.batch_size) == (4, 50, 4)  # ceil(1000 / 300)
    assert c.min_lr == pytest.approx(6e-5)
    assert TrainConfig(dataset=f"text:{text_file}", max_iters=30, eval_interval=10).warmup_iters == 1
    assert TrainConfig(dataset=f"text:{text_file}", max_iters=10, eval_interval=10).warmup_iters == 0
    assert TrainConfig(dataset=f"text:{text_file}", max_iters=30, eval_interval=10, epochs=3).epochs == 3


def test_image_config_resolves_as_before() -> None:
    c = TrainConfig()
    assert not c.is_text
    assert (c.epochs, c.batch_size, c.weight_decay, c.schedule, c.model) == (15, 64, 0.01, "none", "convnet")
    assert c.max_iters is None and c.block_size is None and c.tokenizer is None and c.candidates is None
    assert c.grad_clip is None and c.betas is None and c.decay_1d is None and c.min_lr is None
    assert task_for(c).metric == "acc"


@pytest.mark.parametrize("kwargs, message", [
    ({"channels": [4, 8, 8, 8]}, "channels applies only to image datasets"),
    ({"image_size": 32, "hflip": True}, "image_size, hflip apply only to image datasets"),
    ({"model": "convnet"}, "it needs a language model"),
    ({"model": "torchvision:resnet18"}, "it needs a language model"),
    ({"model": "transformers:gpt2", "n_layer": 2}, "n_layer shape --model gpt"),
    ({"model_config": "n_layer=2"}, "--model-config configures a transformers:NAME model"),
    ({"model": "transformers:gpt2", "model_config": "n_layer"}, "expected key=value"),
    ({"epochs": 3}, "budget is in optimizer steps"),
    ({"max_iters": 10, "warmup_iters": 10}, "warmup_iters must be in [0, max_iters=10)"),
    ({"min_lr": 1.0}, "min_lr must be in [0, lr="),
    ({"block_size": 0}, "block_size must be an integer >= 1"),
    ({"tokenizer": "bpe"}, "unknown tokenizer 'bpe'"),
    ({"dropout": 1.0}, "dropout must be in [0, 1)"),
])
def test_text_config_errors(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(UserError) as err:
        TrainConfig(dataset="text:some.txt", **kwargs)
    assert message in str(err.value)


@pytest.mark.parametrize("kwargs, message", [
    ({"max_iters": 100}, "max_iters applies only to text datasets"),
    ({"block_size": 16, "tokenizer": "char"}, "tokenizer, block_size apply only to text datasets"),
    ({"model": "gpt"}, "--model gpt is a language model"),
    ({"model": "transformers:gpt2"}, "is a language model"),
])
def test_image_config_refuses_text_settings(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(UserError) as err:
        TrainConfig(dataset="digits", **kwargs)
    assert message in str(err.value)


def test_lr_factor_warms_up_then_cosine_to_min_lr() -> None:
    c = TrainConfig(dataset="text:some.txt", max_iters=200, eval_interval=50, warmup_iters=10, lr=1e-3)
    floor = c.min_lr / c.lr  # 0.1
    f = [lr_factor(c, s, 50) for s in range(c.max_iters + 1)]
    assert f[:10] == pytest.approx([(s + 1) / 10 for s in range(10)])  # linear, 1 at the warm-up's last step
    assert f[10] == pytest.approx(1.0)
    assert all(a >= b for a, b in itertools.pairwise(f[10:]))  # then never rises
    mid = 10 + (200 - 10) // 2
    assert f[mid] == pytest.approx(floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * (mid - 10) / 190)))
    assert f[200] == pytest.approx(floor)  # the floor min_lr / lr at step max_iters ...
    # ... so the last step the loop takes (max_iters - 1, 0-based) is a hair above it.
    assert f[199] == pytest.approx(floor, abs=1e-3) and f[199] >= floor
    assert min(f) == pytest.approx(floor) and f[-1] >= floor
    # Warm-up of 0 steps starts at the peak.
    c0 = TrainConfig(dataset="text:some.txt", max_iters=10, eval_interval=5)
    assert c0.warmup_iters == 0 and lr_factor(c0, 0, 5) == 1.0


# --- 5. training end to end --------------------------------------------------------------------


def _lm_config(text_file: Path, **kw: Any) -> TrainConfig:
    base: dict[str, Any] = {"dataset": f"text:{text_file}", "activation": "adact", "max_iters": 30,
                            "eval_interval": 10, "val_fraction": 0.2, "seed": 3, **TINY_GPT}
    return TrainConfig(**{**base, **kw})


def test_train_language_model_result_json(text_file: Path, tmp_path: Path) -> None:
    config = _lm_config(text_file)
    result = train(config, tmp_path, quiet=True)
    assert result == read_json(tmp_path / "result.json")
    assert result["status"] == "done" and result["metric"] == "loss" and result["higher_is_better"] is False
    assert result["epochs_run"] == 3 and result["config"]["max_iters"] == 30
    assert not any("acc" in k for k in result)
    rows = _rows(tmp_path)
    assert [int(r["epoch"]) for r in rows] == [1, 2, 3]
    assert {"train_loss", "test_loss", "val_loss", "tokens_per_s"} <= set(rows[0])
    test = [float(r["test_loss"]) for r in rows]
    val = [float(r["val_loss"]) for r in rows]
    assert all(0 < t < math.log(64) for t in test)
    # The best is the MIN held-out loss, and its epoch the argmin.
    assert result["best_test_loss"] == min(test)
    assert result["best_epoch"] == test.index(min(test)) + 1
    assert result["final_test_loss"] == test[-1]
    assert result["val_best_epoch"] == val.index(min(val)) + 1
    assert result["val_selected_test_loss"] == test[val.index(min(val))]
    assert result["best_test_ppl"] == pytest.approx(math.exp(result["best_test_loss"]))
    # It learned something in 30 steps: below a uniform guess over the vocabulary.
    vocab = load_text(text_file).vocab_size
    assert result["best_test_loss"] < math.log(vocab)
    gap = result["discretization_gap"]
    assert set(gap) == {"mixture_loss", "argmax_loss", "gap", "bn_batches", "metric", "epoch"}
    assert gap["metric"] == "loss" and gap["epoch"] == result["best_epoch"]
    assert gap["gap"] == pytest.approx(gap["argmax_loss"] - gap["mixture_loss"])
    assert gap["mixture_loss"] == pytest.approx(result["best_test_loss"], rel=1e-5)
    # Two AdAct units (one per block's MLP), each 7 logits: the language-model pool has no PReLU slope.
    assert result["n_adact_units"] == 2
    assert result["n_adact_params"] == 2 * len(LM_CANDIDATES) == 14
    assert set(result["dominant"]) == {"transformer.h.0.mlp.act", "transformer.h.1.mlp.act"}
    assert all(choice[0] in LM_CANDIDATES for choice in result["dominant"].values())
    model, ckpt = load_checkpoint(tmp_path / "best.pt")
    assert isinstance(model, GPT) and ckpt["epoch"] == result["best_epoch"]
    assert [tuple(unit.candidates) for _, unit in adact_units(model)] == [LM_CANDIDATES] * 2
    # A finished run is returned as it is.
    assert train(config, tmp_path, quiet=True) == result


def test_train_language_model_resumes_to_the_same_numbers(text_file: Path, tmp_path: Path, kill_at_step: Any) -> None:
    config = _lm_config(text_file, max_iters=25, seed=7)  # 3 evaluations: after 10, 20 and 25 steps
    straight = train(config, tmp_path / "straight", quiet=True)

    disarm = kill_at_step(10 + 3)  # the 3rd step of the second interval
    killed = tmp_path / "killed"
    with pytest.raises(KeyboardInterrupt):
        train(config, killed, quiet=True)
    assert not (killed / "result.json").exists() and len(_rows(killed)) == 1
    disarm()
    resumed = train(config, killed, quiet=True)

    strip = lambda rows: [{k: v for k, v in r.items() if k not in TIMING} for r in rows]
    assert strip(_rows(killed)) == strip(_rows(tmp_path / "straight"))
    for key in ("best_test_loss", "best_epoch", "final_test_loss", "val_selected_test_loss", "best_test_ppl",
                "dominant", "weights", "best_weights", "discretization_gap", "epochs_run"):
        assert resumed[key] == straight[key], key
    a = torch.load(tmp_path / "straight" / "best.pt", weights_only=True)["model"]  # what a finished run keeps
    b = torch.load(killed / "best.pt", weights_only=True)["model"]
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


# --- 6. per-feature units ----------------------------------------------------------------------


def test_gpt_channel_granularity_mixes_per_mlp_feature() -> None:
    gpt = GPT(vocab_size=11, block_size=8, n_layer=2, n_head=2, n_embd=8, activation="adact",
              adact_kwargs={"granularity": "channel", "candidates": list(LM_CANDIDATES), "fused": False})
    units = gpt.activations()
    assert all(isinstance(u, AdAct) for u in units)
    for unit in units:
        assert unit.granularity == "channel" and unit.num_channels == 32 and unit.channel_dim == -1
        assert tuple(unit.logits.shape) == (32, len(LM_CANDIDATES))
    # Each feature (the last dim of (B, T, 4C)) follows its own mixture: one-hot logits pick one candidate each.
    unit = units[0]
    picks = [i % len(LM_CANDIDATES) for i in range(32)]
    with torch.no_grad():
        unit.logits.fill_(-50.0)
        unit.logits[torch.arange(32), picks] = 50.0
    x = torch.randn(2, 5, 32)
    out = unit(x)
    for j, k in enumerate(picks):
        want = ACTIVATIONS[LM_CANDIDATES[k]]()(x[..., j])
        assert torch.allclose(out[..., j], want, atol=1e-5), (j, LM_CANDIDATES[k])
    assert gpt(torch.randint(11, (2, 8))).shape == (2, 8, 11)


def test_gpt_channel_granularity_trains(text_file: Path, tmp_path: Path) -> None:
    config = _lm_config(text_file, granularity="channel", max_iters=6, eval_interval=3, val_fraction=0.0)
    result = train(config, tmp_path, quiet=True)
    assert result["status"] == "done" and result["epochs_run"] == 2
    assert result["n_adact_units"] == 2 and result["n_adact_params"] == 2 * 4 * 32 * len(LM_CANDIDATES)
    model, _ = load_checkpoint(tmp_path / "best.pt")
    for _, unit in adact_units(model):
        assert tuple(unit.logits.shape) == (4 * 32, len(LM_CANDIDATES))
        assert unit.logits.std(0).sum() > 0  # the features' mixtures moved apart: they are trained, not shared


@pytest.mark.parametrize("written", ["gelu", "relu", "relu2"])
def test_gpt_choices_travel_to_a_plain_gpt(written: str, tmp_path: Path) -> None:
    """save_choices of a GPT built with AdAct units (not adactified) applies to the GPT as written."""
    gpt = GPT(vocab_size=11, block_size=8, n_layer=3, n_head=2, n_embd=8, activation="adact",
              adact_kwargs={"candidates": list(LM_CANDIDATES), "fused": False})
    picks = ["relu2", "gelu", "leaky_relu"]  # two of them are not in the paper's (adactify's default) pool
    with torch.no_grad():
        for unit, name in zip(gpt.activations(), picks):
            unit.logits.zero_()
            unit.logits[LM_CANDIDATES.index(name)] = 5.0
    adact.save_choices(gpt, tmp_path / "choices.json")
    fixed = adact.apply_choices(GPT(vocab_size=11, block_size=8, n_layer=3, n_head=2, n_embd=8, activation=written),
                                tmp_path / "choices.json")
    assert [type(m) for m in fixed.activations()] == [ACTIVATIONS[name] for name in picks]
    assert not adact_units(fixed)


def test_gpt_baseline_is_its_written_activation(text_file: Path) -> None:
    from adact.training.build import build_model, model_spec

    data = load_text(text_file)
    config = TrainConfig(dataset=f"text:{text_file}", activation="baseline", gpt_activation="relu2", **TINY_GPT)
    model = build_model(model_spec(config, data))
    assert isinstance(model, GPT) and [type(m) for m in model.activations()] == [ACTIVATIONS["relu2"]] * 2
    relu = build_model(model_spec(TrainConfig(dataset=f"text:{text_file}", activation="relu", **TINY_GPT), data))
    assert [type(m) for m in relu.activations()] == [torch.nn.ReLU] * 2
    with pytest.raises(UserError, match="unknown gpt_activation"):
        TrainConfig(dataset=f"text:{text_file}", gpt_activation="swish")


# --- 7. a Hugging Face model -------------------------------------------------------------------


def test_transformers_gpt2_trains_with_units_in_its_mlps(text_file: Path, tmp_path: Path) -> None:
    pytest.importorskip("transformers")
    config = TrainConfig(dataset=f"text:{text_file}", model="transformers:gpt2", activation="adact",
                         model_config="n_layer=2,n_head=2,n_embd=32,n_positions=32", block_size=16, max_iters=10,
                         eval_interval=5, device="cpu", fused=False)
    result = train(config, tmp_path, quiet=True)
    assert result["status"] == "done" and result["metric"] == "loss" and result["epochs_run"] == 2
    paths = ["lm.transformer.h.0.mlp.act", "lm.transformer.h.1.mlp.act"]
    assert list(result["dominant"]) == paths and result["n_adact_units"] == 2
    assert result["n_adact_params"] == 2 * len(LM_CANDIDATES)
    model, _ = load_checkpoint(tmp_path / "best.pt")
    assert [p for p, _ in adact_units(model)] == paths
    assert model(torch.zeros(1, 16, dtype=torch.long)).shape == (1, 16, load_text(text_file).vocab_size)


# --- 8. adact search ---------------------------------------------------------------------------


def test_search_language_model(text_file: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                               capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "search"
    argv = ["search", "--dataset", f"text:{text_file}", "--baselines", "relu", "relu2", "--seeds", "0", "1",
            "--max-iters", "20", "--eval-interval", "10", "--n-layer", "1", "--n-embd", "32", "--n-head", "2",
            "--block-size", "16", "--jobs", "1", "--quiet", "--reference", "--device", "cpu", "--out", str(out)]
    assert main(argv) == 0
    slug = DatasetSpec.parse(f"text:{text_file}").slug
    assert slug == "text-tiny"
    models = ("adact", "baseline", "relu", "relu2", "optimized")
    for seed in (0, 1):
        for model in models:
            result = read_json(out / slug / f"seed{seed}" / model / "result.json")
            assert result["status"] == "done" and result["metric"] == "loss", (seed, model)
            assert result["n_adact_units"] == (1 if model == "adact" else 0)
    base = read_json(out / slug / "seed0" / "baseline" / "result.json")
    assert base["config"]["activation"] == "baseline" and base["config"]["gpt_activation"] == "gelu"

    table = (out / "table.md").read_text()
    assert "loss" in table and "lower is better" in table and "accuracy" not in table.lower()
    with open(out / "table.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    best = {r["metric"]: r for r in rows}["best_test_loss"]  # one row per dataset and metric
    assert "best_test_acc" not in {r["metric"] for r in rows}
    for model in models:
        losses = [read_json(out / slug / f"seed{s}" / model / "result.json")["best_test_loss"] for s in (0, 1)]
        assert float(best[f"{model}_mean"]) == pytest.approx(sum(losses) / 2), model
        assert int(best[f"{model}_n"]) == 2
    for name in ("choices.md", "choices.json", "report.md", "results.json"):
        assert (out / name).is_file(), name

    vocab = load_text(text_file).vocab_size
    summary = read_json(out / "choices.json")
    for seed in (0, 1):
        path = out / slug / f"seed{seed}" / "choices.json"
        assert path.is_file()
        chosen = read_json(out / slug / f"seed{seed}" / "optimized" / "result.json")["config"]["activation"]
        assert summary[next(iter(summary))]["per_seed"][str(seed)]["choices"] == chosen
        gpt = GPT(vocab, block_size=16, n_layer=1, n_head=2, n_embd=32, activation="gelu")
        fixed = adact.apply_choices(gpt, path)
        act = fixed.get_submodule("transformer.h.0.mlp.act")
        assert type(act) is ACTIVATIONS[chosen[0]], (type(act), chosen)
        assert not adact_units(fixed)
        assert fixed(torch.zeros(1, 16, dtype=torch.long)).shape == (1, 16, vocab)

    # A rerun trains nothing: every run is skipped.
    def no_training(*args: object, **kwargs: object) -> None:
        raise AssertionError("a finished run was trained again")

    capsys.readouterr()
    with monkeypatch.context() as m:
        m.setattr(adact.experiments.workers, "train", no_training)
        assert main(argv) == 0
    assert capsys.readouterr().out.count("already done, skipped") == 2 * len(models)
