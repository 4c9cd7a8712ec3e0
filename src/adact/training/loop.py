"""Training one run with the AdAct paper's protocol: one loop you can read top to bottom.

:func:`train` checks everything, locks the run folder (:mod:`adact.runs`) and calls
:func:`_run`: per epoch, the training batches through the model, the task's loss
(:mod:`adact.training.task`), an optimizer step; then an evaluation, a row of ``metrics.csv``,
the best epoch's record and checkpoints. What is specific to image classification comes from
the task object; what is specific to torchrun is marked ``[distributed]``
(:mod:`adact.training.distributed`: no-ops in one process).

Protocol defaults are the paper's (see :class:`adact.config.TrainConfig`). A run resumes from
its last checkpoint with the same numbers as an uninterrupted one on CPU; a folder of other
settings is refused (:meth:`adact.runs.folder.RunFolder.check`) unless ``restart=True``.
"""

from __future__ import annotations

import csv
import io
import math
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from torch import nn

from adact.choice import UnitSnapshot, adact_units, snapshot, weights_record
from adact.config import ModelSpec, TrainConfig
from adact.data.fingerprint import data_record
from adact.dataspec import DatasetSpec
from adact.errors import AdactError
from adact.inputs import InputRecorder
from adact.model_zoo import adactify_summary
from adact.runs.checkpoint import best_checkpoint, make_checkpoint, prune, resume_point, save_last
from adact.runs.folder import RunFolder, check_not_foreign
from adact.runs.io import atomic_save, atomic_write_json, atomic_write_text, folder_lock, remove_stale_temps
from adact.runs.migrate import result_lacks_gap
from adact.training import distributed, sharpen
from adact.training.build import build_model, check_searchable, load_data, model_spec, resolve_device
from adact.training.gap import add_missing_gap, best_epoch_gap
from adact.training.task import Task, better, task_for

__all__ = ["DivergedError", "lr_factor", "train", "unit_weights"]


class DivergedError(AdactError, RuntimeError):
    """The loss became NaN or inf; the run stops and keeps its last good checkpoint."""


def train(config: TrainConfig, out_dir: str | Path, *, data: Any = None,
          quiet: bool = False, restart: bool = False, sync_bn: bool = False) -> dict[str, Any]:
    """Train one model with ``config`` into ``out_dir``; resumable, returns the result summary.

    A finished run (result.json with status "done") is returned without training (an AdAct run
    finished before the discretization gap was recorded gets it measured on its best.pt). An
    interrupted one resumes from last.pt (or last.prev.pt, kept with ``keep_checkpoints="all"``,
    if last.pt is damaged) and ends with the same numbers as an uninterrupted run on CPU. A done
    run keeps the checkpoints ``config.keep_checkpoints`` names (:func:`adact.runs.checkpoint.prune`).
    A NaN/inf loss stops the run, keeps
    the last good checkpoint, writes result.json with status "diverged" and raises
    :class:`DivergedError`.

    Everything is checked before the folder is touched: the device, the data (non-empty
    splits, labels within the classes, two classes or more, each with training images), the
    model (e.g. kernel size vs image size; an AdAct run of a model with no activation is
    refused), and the folder (one holding files adact did not write, or lying inside an
    image-folder dataset, is refused). The
    folder is then locked for the whole run (a second writer gets an error naming this
    process), and a folder holding a run with other settings or on other data (its data.json,
    :func:`adact.data.fingerprint.data_record`) is refused. ``restart=True``
    discards the folder's run files (:data:`adact.runs.folder.RUN_FILES`) and trains from scratch.

    Under ``torchrun`` every rank calls this with the same arguments (see
    :mod:`adact.training.distributed`): rank 0 alone locks and writes the folder, every rank
    resumes from its checkpoint, and ``sync_bn`` synchronises BatchNorm over the ranks (a no-op
    in one process, whose BatchNorm already sees the whole batch).
    """
    run = RunFolder(out_dir)
    DatasetSpec.parse(config.dataset).check_out(run.path, config.data_dir)
    check_not_foreign(run.path, run.started() or run.result.is_file())
    if data is None:
        data = load_data(config, quiet)
    # A finished run is reused only for the same data: the record is compared before anything else.
    record = data_record(data)
    if not restart and run.path.is_dir() and (prev := _finished(run, config, record)) is not None:
        if not result_lacks_gap(prev, run.path):
            return prev
    device = distributed.setup(resolve_device(config.device))  # [distributed] cuda:LOCAL_RANK, NCCL / gloo
    task = task_for(config)
    task.check(data, config)
    train_set = task.train_set(config, data)
    torch.manual_seed(config.seed)
    spec = model_spec(config, data)
    model = build_model(spec).to(device)  # raises for impossible settings, before anything is written
    check_searchable(model, spec)
    checked = adactify_summary(model)
    if checked and distributed.writer() and (not quiet or len(checked) > 1):  # problems show even when quiet
        print("\n".join(checked), flush=True)
    if sync_bn:  # [distributed]
        model = distributed.convert_sync_bn(model, device)
    with distributed.as_writer(folder_lock(run.path)):  # [distributed] only rank 0 locks and prepares the folder
        prev = None
        if distributed.writer():
            remove_stale_temps(run.path)
            if restart:
                run.discard()
            else:
                prev = _finished(run, config, record)  # finished (maybe while we prepared)
        prev = distributed.broadcast_object(prev)  # [distributed] every rank takes rank 0's branch
        if prev is not None:
            if result_lacks_gap(prev, run.path):
                return add_missing_gap(config, run, prev, train_set, data, device)
            return prev
        return _run(config, task, run, data, record, train_set, model, spec, device, quiet, sync_bn)


def _finished(run: RunFolder, config: TrainConfig, record: dict[str, Any]) -> dict[str, Any] | None:
    """This run's result if it is done (a diverged one trains on from its checkpoint); refuse other settings or data."""
    result = run.ended(config, record)
    return result if result is not None and result["status"] == "done" else None


def _run(config: TrainConfig, task: Task, run: RunFolder, data: Any, record: dict[str, Any], train_set: Any,
         model: nn.Module, spec: ModelSpec, device: torch.device, quiet: bool, sync_bn: bool = False) -> dict[str, Any]:
    write = distributed.writer()  # [distributed] rank 0 writes files and prints; a single process always
    quiet = quiet or not write
    m = task.metric  # "acc": the columns are train_acc, test_acc, val_acc
    # A task whose metric is its loss (language modelling) needs no count: the loop sums the loss itself.
    counts = m != "loss"
    opt = _optimizer(model, config)
    # Each group's own peak lr (the AdAct logits' may be scaled by adact_lr_mult), taken before a
    # checkpoint's state is loaded: the warm-up/cosine factor multiplies these every step.
    base_lrs = [float(g["lr"]) for g in opt.param_groups]
    loaders = task.loaders(config, data, train_set, device)

    metrics: list[dict[str, Any]] = []
    best: dict[str, Any] = {f"test_{m}": -1.0 if task.higher_is_better else math.inf, "epoch": 0}
    start_epoch = 0
    ckpt = resume_point(run, config, device)
    if ckpt is not None:
        model.load_state_dict(ckpt["model"])
        opt.load_state_dict(ckpt["optimizer"])
        metrics, best, start_epoch = ckpt["metrics"], ckpt["best"], ckpt["epoch"]
        torch.set_rng_state(ckpt["rng"])
        if ckpt.get("cuda_rng") is not None and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(ckpt["cuda_rng"])
        if write:
            print(f"{run.path}: resumed from epoch {start_epoch} of {config.epochs}", flush=True)
    if write:
        atomic_write_json(run.config, asdict(config))
        atomic_write_json(run.data, record)

    step_model = torch.compile(model) if config.compile else model
    step_model = distributed.wrap(step_model, device)  # [distributed] DDP; unchanged in one process
    has_units = bool(adact_units(model))
    steps = len(loaders.train)
    total = config.total_steps or config.epochs * steps
    schedule = (sharpen.TemperatureSchedule(*config.temperature_schedule, total_steps=total)
                if config.temperature_schedule and has_units else None)
    label = f"{DatasetSpec.parse(config.dataset).display} {config.activation_label}"
    wall0 = time.perf_counter() - sum(r["seconds"] for r in metrics)
    status, message = "done", ""
    for epoch in range(start_epoch + 1, config.epochs + 1):
        model.train()
        loaders.train.set_epoch(epoch)
        distributed.seed_epoch(config.seed, epoch)  # [distributed] per-rank RReLU noise, resumable
        t0 = time.perf_counter()
        loss_sum, counted, seen = 0.0, 0.0, 0
        step = (epoch - 1) * steps  # the schedules are functions of the step, so a resumed run needs no state
        bar = _progress(steps, f"{label} ep {epoch}/{config.epochs}", quiet)
        for x, y in loaders.train:
            if schedule is not None:
                sharpen.set_temperature(model, schedule(step))
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=config.bf16):
                out = step_model(x)  # (B, num_classes)
            # [distributed] the task's loss is scaled so DDP's average is the global batch's gradient,
            # and global_mean (the global batch's loss) is NaN on every rank if it is on any, so all
            # ranks stop together. The entropy penalty depends only on the (replicated) logits.
            task_loss = task.loss(out, y, loaders.train.global_batch, config)
            batch_loss = distributed.global_mean(task_loss)
            loss = (task_loss + config.entropy_weight * sharpen.mixture_entropy(model) if config.entropy_weight
                    else task_loss)
            if not (torch.isfinite(batch_loss) and torch.isfinite(loss)):
                status = "diverged"
                kept = (f"kept the checkpoint of epoch {epoch - 1}" if epoch > 1
                        else "no checkpoint kept (it diverged before finishing an epoch)")
                message = f"loss became {batch_loss.item()} in epoch {epoch}; {kept}"
                break
            factor = lr_factor(config, step, steps)
            for group, base_lr in zip(opt.param_groups, base_lrs):
                group["lr"] = base_lr * factor
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if config.grad_clip is not None:  # after backward: DDP's gradients are already averaged
                nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
            opt.step()
            step += 1
            loss_sum += batch_loss.item() * loaders.train.global_batch  # the task's loss only, as without a penalty
            if counts:
                counted += task.count(out, y)
            seen += loaders.train.global_batch
            if bar is not None:
                bar.update(1)
                bar.set_postfix_str(_postfix(model, seen, time.perf_counter() - t0, task.samples), refresh=False)
        if bar is not None:
            bar.close()
        if status == "diverged":
            break
        seconds = time.perf_counter() - t0
        counted = distributed.all_sum(counted)[0]  # [distributed] this rank counted its slices only
        distributed.sync_buffers(model)  # [distributed] every rank evaluates rank 0's (the saved) model
        eval_model = distributed.unwrap(step_model)  # [distributed] no DDP hooks: ranks differ in batch counts
        # Each unit's inputs are recorded over the test evaluation only (hooks that exist only here), so
        # the figures can draw its function over the range it sees; training never pays for them.
        with InputRecorder(adact_units(model)) as recorder:
            test_loss, test_metric = task.evaluate(eval_model, loaders.test, config.bf16)
        val_loss, val_metric = (task.evaluate(eval_model, loaders.val, config.bf16) if loaders.val is not None
                                else (None, None))
        # This epoch's units (their inputs included), read once for metrics.csv and the best epochs' records.
        units = snapshot(model, inputs=recorder.stats())
        # A task whose metric is its loss (language modelling) has one column of each: the training
        # objective's (label smoothing included) beside the held-out losses.
        row: dict[str, Any] = {
            "epoch": epoch,
            "train_loss": loss_sum / seen,
            **({f"train_{m}": counted / seen} if counts else {}),
            "test_loss": test_loss,
            f"test_{m}": test_metric,
            "val_loss": val_loss,
            f"val_{m}": val_metric,
            "seconds": seconds,  # training time of this epoch, evaluation excluded
            f"{task.samples}_per_s": seen * (config.block_size or 1) / seconds,  # text: blocks of tokens
            **(_sharpness(model) if has_units else {}),
            **_flat_weights(units),
        }
        metrics.append(row)
        if not quiet:
            val = f" val {val_metric:.4f}" if val_metric is not None else ""
            unit = "img/s" if task.samples == "images" else f"{task.samples}/s"
            rate = row[f"{task.samples}_per_s"]
            what = "epoch" if not config.is_text else f"iter {min(epoch * steps, total)}, eval"
            print(f"{what} {epoch:>2}: loss {row['train_loss']:.4f} test {m} {test_metric:.4f}{val} "
                  f"({rate:.0f} {unit})", flush=True)
        improved = better(task, test_metric, best[f"test_{m}"])
        units_record = weights_record(units)  # one table, shared by the best records and the checkpoint
        if improved:
            # The weights of the best epoch travel in result.json too, so the choices can be read
            # (and ConvNet-Optimized built) from a run folder whose checkpoints were not kept.
            best = {**best, f"test_{m}": test_metric, "epoch": epoch, "weights": units_record}
        if val_metric is not None and better(task, val_metric, best.get(f"val_{m}")):
            # The honest selection: the weights of the epoch the validation split picks.
            best = {**best, f"val_{m}": val_metric, "val_epoch": epoch, "val_weights": units_record}
        ckpt = make_checkpoint(model, opt, config, spec, epoch, metrics, best,
                               units=units_record if has_units else None)
        if improved and write:
            atomic_save(best_checkpoint(ckpt), run.best)  # no optimizer state: evaluation and analysis need none
        # last.pt is the resume point, so it is written after metrics and best are consistent.
        if write:
            _write_metrics_csv(run.metrics, metrics)
            save_last(ckpt, run, keep_prev=config.keep_checkpoints == "all")

    result = _summary(task, config, metrics, model, status, message, time.perf_counter() - wall0, best)
    if status == "done" and has_units:
        distributed.barrier()  # [distributed] rank 0's last best.pt is on disk before any rank reads it
        result["discretization_gap"] = best_epoch_gap(run, spec, device, loaders.train, loaders.test, config.bf16,
                                                      task)
    result["config"] = asdict(config)
    result["data"] = record
    result["processes"] = distributed.shard()["world_size"]  # [distributed] how it ran, not what it is
    result["sync_bn"] = sync_bn and result["processes"] > 1
    if write:
        atomic_write_json(run.result, result)
        if status == "done":  # a diverged run keeps its last good checkpoint
            prune(run, config.keep_checkpoints)
    distributed.barrier()  # [distributed] the next run (reproduce) reads result.json on every rank
    if status == "diverged":
        raise DivergedError(f"{run.path}: {message}")
    return result


def _optimizer(model: nn.Module, config: TrainConfig) -> torch.optim.Optimizer:
    assert config.weight_decay is not None  # resolved by TrainConfig
    groups = sharpen.param_groups(model, config.weight_decay, config.decay_adact, config.adact_lr_mult, config.lr)
    if config.decay_1d is False:
        groups = _no_decay_1d(groups)
    if config.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=config.lr, momentum=0.9, nesterov=True, weight_decay=config.weight_decay)
    betas = tuple(config.betas) if config.betas is not None else (0.9, 0.999)
    return torch.optim.AdamW(groups, lr=config.lr, weight_decay=config.weight_decay, betas=betas)  # type: ignore[arg-type]


def _no_decay_1d(groups: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """nanoGPT's grouping: only tensors of 2 or more dimensions (matmul weights, embeddings) are decayed.

    Biases, norm weights, AdAct logits and PReLU slopes move to a twin group without decay.
    """
    out: list[dict[str, Any]] = []
    for g in groups:
        params = list(g["params"])
        out.append({**g, "params": [p for p in params if p.dim() >= 2]})
        flat = [p for p in params if p.dim() < 2]
        if flat:
            out.append({**g, "params": flat, "weight_decay": 0.0})
    return [g for g in out if g["params"]]


def lr_factor(config: TrainConfig, step: int, steps_per_epoch: int) -> float:
    """The multiple of ``config.lr`` at optimizer step ``step`` (0-based): warm-up, then the schedule.

    Warm-up rises linearly over ``warmup_epochs`` (text: ``warmup_iters`` steps), reaching 1 at
    its last step (nanoGPT's rises as ``(step + 1) / (warmup + 1)``: 1% lower over the first 100
    of 2000 steps); ``cosine`` then falls to ``min_lr / lr`` (0 when unset) at step ``total``
    (``max_iters`` for text), just after the last step taken: nanoGPT's loop also takes step
    ``max_iters``, at ``min_lr``, while adact's last one is at step ``max_iters - 1``, within
    0.1% of it. With the image defaults it is always 1 (the paper's).
    """
    total = config.total_steps or config.epochs * steps_per_epoch
    warm = config.warmup_iters if config.warmup_iters is not None else round(config.warmup_epochs * steps_per_epoch)
    if step < warm:
        return (step + 1) / warm
    if config.schedule == "cosine":
        floor = (config.min_lr or 0.0) / config.lr
        return floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * min(1.0, (step - warm) / max(1, total - warm))))
    return 1.0


def unit_weights(model: nn.Module) -> dict[str, float]:
    """Flat ``{"mix/<path>/<name>": softmax weight, "raw/<path>/<name>": logit}`` for every unit (metrics.csv).

    From :func:`adact.choice.snapshot`: per-channel units report the channel mean of each.
    """
    return _flat_weights(snapshot(model))


def _flat_weights(units: list[UnitSnapshot]) -> dict[str, float]:
    out: dict[str, float] = {}
    for unit in units:
        for name, w, r in zip(unit.candidates, unit.mix, unit.raw):
            out[f"mix/{unit.path}/{name}"] = w
            out[f"raw/{unit.path}/{name}"] = r
    return out


def _sharpness(model: nn.Module) -> dict[str, float]:
    """metrics.csv columns of an AdAct model: its softmax temperature and mean normalised entropy."""
    with torch.no_grad():
        entropy = float(sharpen.mixture_entropy(model))
    return {"temperature": float(adact_units(model)[0][1].temperature), "mixture_entropy": entropy}


def _summary(task: Task, config: TrainConfig, metrics: list[dict[str, Any]], model: nn.Module, status: str,
             message: str, wall_s: float, selected: dict[str, Any]) -> dict[str, Any]:
    """result.json's content (the schema :func:`adact.runs.folder.result_keys` checks)."""
    m = task.metric
    pick = max if task.higher_is_better else min
    best = pick(metrics, key=lambda r: r[f"test_{m}"]) if metrics else None
    has_val = bool(metrics) and metrics[0].get(f"val_{m}") is not None
    val_best = pick(metrics, key=lambda r: r[f"val_{m}"]) if has_val else None
    units = adact_units(model)
    return {
        "status": status,  # "done" or "diverged"
        "message": message,
        "metric": m,  # the task's metric: the keys below are best_test_<metric>, ...
        "higher_is_better": task.higher_is_better,
        "dataset": config.dataset,
        "activation": config.activation,
        "seed": config.seed,
        "epochs_run": len(metrics),
        f"best_test_{m}": best[f"test_{m}"] if best else None,  # the paper's number (optimistic)
        "best_epoch": best["epoch"] if best else None,
        f"final_test_{m}": metrics[-1][f"test_{m}"] if metrics else None,
        f"val_selected_test_{m}": val_best[f"test_{m}"] if val_best else None,  # honest selection
        "val_best_epoch": val_best["epoch"] if val_best else None,
        "dominant": {path: list(unit.choice()) for path, unit in units},  # last epoch
        "best_weights": selected.get("weights"),  # choices and weights at the best epoch (adact.choice.weights_record)
        "val_best_weights": selected.get("val_weights"),  # ... at the best epoch by validation accuracy
        "weights": unit_weights(model),
        "n_adact_units": len(units),
        "n_adact_params": sum(p.numel() for _, u in units for p in u.parameters()),
        "n_params": sum(p.numel() for p in model.parameters()),
        "wall_s": wall_s,
        **task.extras(best[f"test_{m}"] if best else None),
    }


def _write_metrics_csv(path: Path, rows: list[dict[str, Any]]) -> None:
    keys: list[str] = []
    for row in rows:
        keys += [k for k in row if k not in keys]
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=keys)
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(path, buf.getvalue())


def _progress(total: int, desc: str, quiet: bool) -> Any:
    # A bar redraws one line; in a redirected log it becomes one very long line per epoch,
    # and the per-epoch summary line already says everything.
    if quiet or not sys.stderr.isatty():
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, leave=False, dynamic_ncols=True)


def _postfix(model: nn.Module, seen: int, seconds: float, samples: str) -> str:
    short = " ".join(unit.choice()[0] for _, unit in adact_units(model))
    rate = "img/s" if samples == "images" else f"{samples}/s"
    return f"{seen / max(seconds, 1e-9):.0f} {rate}" + (f" | {short}" if short else "")
