"""The training loop: one function, top to bottom, over ``deepspeed.initialize``.

The loss of an optimizer step is the mean over every label token of its accumulation window on all
ranks: the label tokens of the window are counted first, then each micro-batch contributes
``sum of its token losses * world_size / tokens of the window`` (DeepSpeed averages gradients over
ranks, and ``scale_wrt_gas=False`` stops it dividing by the accumulation steps again). So the update
equals the one on the concatenated batch, whatever the packed rows hold.
"""

from __future__ import annotations

import math
import random
import sys
import time
from pathlib import Path
from typing import Any

from xt.config import TrainConfig
from xt.errors import XtError

VAL_SPLITS = ("validation", "test")


class NonFiniteLossError(XtError):
    """The loss became NaN or infinite; the run stopped without saving the bad state."""


def default_output(cfg: TrainConfig) -> Path:
    return Path("runs") / cfg.run_name


def resolve_resume(cfg: TrainConfig, resume: str | bool | None,
                   claim: Any = None) -> tuple[Path, Path | None]:
    """(run dir, checkpoint to resume from or None); ``claim(run_dir)`` runs before checkpoints are read."""
    from xt.train.checkpoint import STATE_FILE, latest_checkpoint

    run_dir = Path(cfg.output) if cfg.output else default_output(cfg)
    if not resume:
        return run_dir, None
    if isinstance(resume, str):
        target = Path(resume)
        if (target / STATE_FILE).is_file():  # a checkpoint folder itself
            if claim is not None:
                claim(target.parent.parent)
            return target.parent.parent, target
        run_dir = target
    if claim is not None:
        claim(run_dir)
    ckpt = latest_checkpoint(run_dir / "checkpoints")
    if ckpt is None:
        raise XtError(f"Nothing to resume in '{run_dir}': it has no complete checkpoint under checkpoints/; "
                      f"start a new run without --resume.")
    return run_dir, ckpt


def seed_everything(seed: int) -> None:
    import numpy as np
    import torch

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def build_data(cfg: TrainConfig, dataset_spec: Any, template: Any, tokenizer: Any, rank: int,
               world: int, attention_weight: float = 0.0) -> tuple[Any, Any]:
    """(train rows, validation rows or None): the dataset's validation split, else a val_ratio slice."""
    from xt.data import DataOptions, build_dataset
    from xt.specs import RunContext
    from xt.train.evaluation import RowSubset

    context = RunContext(image_folder=cfg.image_folder, model_args=dict(cfg.model_args), rank=rank,
                         world_size=world, run_dir=cfg.output)

    def options(split: str) -> Any:
        return DataOptions(data_files=cfg.data_files or None, split=split, max_length=cfg.max_length,
                           length_policy=cfg.length_policy, pack=cfg.pack, skip_bad_rows=cfg.skip_bad_rows,
                           num_proc=cfg.num_proc, cache_dir=cfg.data_cache_dir, use_cache=cfg.use_data_cache,
                           seed=cfg.seed, micro_batch_size=cfg.micro_batch_size, attention_weight=attention_weight,
                           context=context)

    train = build_dataset(dataset_spec, template, tokenizer, options("train"), rank=rank, world_size=world)
    wants_eval = cfg.eval_steps > 0 or cfg.eval_samples > 0 or cfg.val_ratio > 0
    split = cfg.eval_split or next((s for s in VAL_SPLITS if s in dataset_spec.splits), None)
    if wants_eval and split is not None and cfg.val_ratio == 0:
        return train, build_dataset(dataset_spec, template, tokenizer, options(split), rank=rank, world_size=world)
    if cfg.val_ratio > 0:
        order = list(range(len(train)))
        random.Random(cfg.seed).shuffle(order)
        n_val = max(1, int(round(cfg.val_ratio * len(train))))
        if n_val >= len(train):
            raise XtError(f"val_ratio {cfg.val_ratio} leaves no training rows out of {len(train)}; lower it.")
        return RowSubset(train, sorted(order[n_val:])), RowSubset(train, sorted(order[:n_val]))
    return train, None


def grad_l2_norm(model: Any) -> float | None:
    """The L2 norm of all gradients held in ``param.grad`` (None when there are none).

    At ZeRO-0 the gradients are already averaged over ranks after the last backward of a window, so
    this is the global norm before clipping, as DeepSpeed reports it for ZeRO 1-3.
    """
    import torch

    grads = [p.grad.detach().float() for p in model.parameters() if p.grad is not None]
    if not grads:
        return None
    return float(torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads])))


def _to_device(batch: dict[str, Any], device: Any) -> dict[str, Any]:
    return {k: (v.to(device) if hasattr(v, "to") else v) for k, v in batch.items()}


def _real_tokens(batch: dict[str, Any]) -> int:
    mask = batch.get("attention_mask")
    return int(mask.sum()) if mask is not None else int(batch["input_ids"].numel())


def train(cfg: TrainConfig, *, resume: str | bool | None = None, overwrite: bool = False) -> Path:
    """Train as ``cfg`` says; returns the run directory. Runs the same on 1 or N processes.

    A run that stops on an exception or a signal is marked failed in ``run.json`` with the reason.
    """
    from xt.errors import first_line
    from xt.run import mark_failed
    from xt.train.launch import use_per_env_extensions_dir

    use_per_env_extensions_dir()  # before DeepSpeed builds its comm op

    held: list[Any] = []  # the run folder's lock, once taken (rank 0)
    try:
        return _train(cfg, resume, overwrite, held)
    except BaseException as exc:
        if held and cfg.output:
            reason = f"interrupted {exc}".strip() if isinstance(exc, KeyboardInterrupt) else \
                f"{type(exc).__name__}: {first_line(exc)}"
            mark_failed(Path(cfg.output), reason)
        raise
    finally:
        for lock in held:
            lock.release()


def on_main(main: bool, action: Any) -> Any:
    """Run ``action()`` on rank 0 and raise its XtError on every rank; returns rank 0's result (else None)."""
    from xt.train.dist import broadcast_object

    result, error = None, None
    if main:
        try:
            result = action()
        except XtError as exc:
            error = str(exc)
    error = broadcast_object(error)
    if error:
        raise XtError(error)
    return result


def _train(cfg: TrainConfig, resume: str | bool | None, overwrite: bool, held: list[Any]) -> Path:
    import deepspeed
    from tqdm.auto import tqdm

    from xt import __version__
    from xt.data import ResumableBatchSampler
    from xt.data.collate import make_collate
    from xt.data.layout import attention_weight
    from xt.data.pipeline import choose_template
    from xt.model.loading import safe_pad_id
    from xt.model.saving import save_final
    from xt.model.setup import build_model, count_parameters
    from xt.plugins import get_registry
    from xt.run import RunInfo, RunLock, check_new_run_dir, start_run_dir
    from xt.train.checkpoint import load_checkpoint, save_checkpoint
    from xt.train.dist import all_reduce_sum, barrier, init_distributed
    from xt.train.evaluation import (
        batch_loss_sum,
        heldout_prompts,
        label_tokens,
        run_generation_eval,
        tail_words,
        validation_loss,
    )
    from xt.train.metrics import MetricsLog, plot_loss
    from xt.train.optim import build_ds_config, make_optimizer, make_scheduler

    # ---- processes, run directory, seeds
    dist = init_distributed()
    rank, world, device, main = dist.rank, dist.world_size, dist.device, dist.is_main
    # a run being resumed is locked before its checkpoints are read: nothing else may touch it
    def claim(folder: Path) -> None:
        if folder.is_dir():  # else there is nothing to resume, which resolve_resume says
            held.extend(filter(None, [on_main(main, lambda: RunLock(folder, "train --resume"))]))

    run_dir, resume_ckpt = resolve_resume(cfg, resume, claim)
    cfg.output = str(run_dir)
    if resume_ckpt is None:
        on_main(main, lambda: check_new_run_dir(run_dir, overwrite))
    seed_everything(cfg.seed)

    # ---- model, tokenizer, template, data
    registry = get_registry()
    model_spec = registry.resolve_model(cfg.model)
    dataset_spec = registry.get("datasets", cfg.dataset)
    template = choose_template(model_spec, dataset_spec, cfg.template)
    loaded = build_model(cfg, model_spec)
    model, tokenizer = loaded.model, loaded.tokenizer
    template = template.for_tokenizer(tokenizer)  # 'auto' becomes the template read from the tokenizer
    train_rows, val_rows = build_data(cfg, dataset_spec, template, tokenizer, rank, world,
                                      attention_weight(model) if cfg.pack == "auto" else 0.0)
    from xt.model.setup import check_token_ids  # ids past the embedding rows: refused before anything is written
    check_token_ids(model, train_rows, val_rows)

    collator_name = cfg.collator if cfg.collator != "default" else (model_spec.collator or "default")
    collate = make_collate(registry.get("collators", collator_name), tokenizer=tokenizer,
                           pad_token_id=safe_pad_id(tokenizer, model), attn_implementation=loaded.attn)
    grouped = cfg.group_by_length and not train_rows.stats["packed"] or train_rows.stats.get("layout") == "grouped"
    make_sampler = model_spec.batch_sampler  # e.g. modality-grouped batches for multimodal models
    if make_sampler is not None:
        sampler = make_sampler(train_rows, cfg.micro_batch_size, rank=rank, world_size=world, seed=cfg.seed,
                               shuffle=True, group_by_length=grouped, drop_last=True)
    else:
        sampler = ResumableBatchSampler(train_rows.lengths, cfg.micro_batch_size, rank=rank, world_size=world,
                                        seed=cfg.seed, shuffle=True, group_by_length=grouped)
    steps_per_epoch = len(sampler) // cfg.grad_accum
    if steps_per_epoch == 0:
        raise XtError(f"The dataset has {len(train_rows)} rows, fewer than one optimizer step needs "
                      f"(micro_batch_size {cfg.micro_batch_size} x grad_accum {cfg.grad_accum} x {world} processes); "
                      f"lower them or add data.")
    total_steps = cfg.max_steps or max(1, math.ceil(cfg.epochs * steps_per_epoch))

    # ---- DeepSpeed engine with torch AdamW and warm-up + cosine
    optimizer = make_optimizer(model, cfg)
    scheduler = make_scheduler(optimizer, cfg, total_steps)
    ds_config = build_ds_config(cfg, loaded.dtype, world)
    engine, optimizer, _, scheduler = deepspeed.initialize(model=model, optimizer=optimizer, lr_scheduler=scheduler,
                                                           config=ds_config, dist_init_required=False)
    zero3 = engine.zero_optimization_stage() == 3
    if world == 1 and engine.zero_optimization_stage() == 0:
        engine.enable_backward_allreduce = False  # one process: nothing to reduce, skip flatten + all-reduce
    exclude_frozen = loaded.adapter

    # ---- resume
    start_step, history = 0, {}
    if resume_ckpt is not None:
        state = load_checkpoint(engine, resume_ckpt, rank=rank, exclude_frozen=exclude_frozen)
        sampler.load_state_dict(state["sampler"])
        start_step, history = int(state["step"]), state.get("metrics", {})
    info = RunInfo(model=cfg.model, model_source=loaded.source, template=template.name, method=cfg.method,
                   dataset=cfg.dataset, kind=model_spec.kind, adapter=loaded.adapter, xt_version=__version__,
                   model_args=dict(cfg.model_args),
                   extra={"total_steps": total_steps, "world_size": world})
    total_params, trainable_params = count_parameters(engine.module)

    # ---- the run directory: written only once everything above is valid, so a bad name, file, collator
    # or setting leaves nothing behind, and an --overwrite'n run is replaced only now
    def write_run(folder: Path) -> None:
        cfg.save(folder / "config.yaml")
        info.save(folder)

    if resume_ckpt is not None:
        on_main(main, lambda: write_run(run_dir))
    else:
        held.extend(filter(None, [on_main(main, lambda: start_run_dir(run_dir, overwrite, write_run))]))
    metrics = MetricsLog(run_dir, enabled=main, resume_step=start_step if resume_ckpt is not None else None,
                         report_to=cfg.report_to, config=cfg.to_dict())
    if main:
        print(f"xt train: {cfg.model} on {cfg.dataset} ({template.name} template), {cfg.method}, {loaded.dtype}, "
              f"attn {loaded.attn}, ZeRO-{cfg.zero_stage}, {world} process(es); {trainable_params:,} of "
              f"{total_params:,} parameters trainable; {len(train_rows)} rows, {steps_per_epoch} steps/epoch, "
              f"{total_steps} steps -> {run_dir}", file=sys.stderr)
    heldout = heldout_prompts(val_rows, cfg.eval_samples) if (val_rows is not None and cfg.eval_samples) else []

    def evaluate(step: int) -> None:
        record: dict[str, Any] = {"step": step}
        if val_rows is not None and len(val_rows):
            record["eval_loss"] = validation_loss(engine.module, val_rows, collate, cfg.micro_batch_size, device,
                                                  rank, world)
        if cfg.eval_prompts or heldout:
            result = run_generation_eval(
                engine.module, tokenizer, template, prompts=cfg.eval_prompts, heldout=heldout,
                scorer=dataset_spec.scorer, max_new_tokens=cfg.eval_max_new_tokens,
                out_file=run_dir / "eval" / f"step-{step}.jsonl" if main else None,
                synced_gpus=zero3 and world > 1, step=step)
            if "accuracy" in result:
                record["eval_accuracy"] = result["accuracy"]
            if main:
                metrics.log_samples(result.get("records", []), step)
                for r in result.get("records", [])[:4]:
                    tqdm.write(f"[eval step {step}] {tail_words(r['prompt'])!r} -> {r['prediction'][:120]!r}",
                               file=sys.stderr)
        if main and len(record) > 1:
            parts = [f"eval_loss: {record['eval_loss']:.4f}"] if "eval_loss" in record else []
            if "eval_accuracy" in record:
                parts.append(f"accuracy: {100 * record['eval_accuracy']:.1f}%")
            if parts:
                tqdm.write(f"step {step}: " + ", ".join(parts), file=sys.stderr)
            metrics.log(record)

    def checkpoint(step: int) -> None:
        state = {"step": step, "sampler": sampler.state_dict(), "metrics": history, "total_steps": total_steps}
        save_checkpoint(engine, run_dir / "checkpoints", step, state, rank=rank, keep=cfg.save_total_limit,
                        exclude_frozen=exclude_frozen)

    def micro_batches() -> Any:
        while True:
            for indices in sampler:
                yield collate([train_rows[i] for i in indices])

    # ---- the loop
    batches = micro_batches()
    engine.train()
    bar = tqdm(total=total_steps, initial=start_step, disable=not main, desc="train", dynamic_ncols=True,
               file=sys.stderr)
    tokens_seen = int(history.get("tokens", 0))
    step = start_step
    for step in range(start_step + 1, total_steps + 1):
        started, started_cpu = time.perf_counter(), time.process_time()
        window = [next(batches) for _ in range(cfg.grad_accum)]
        (window_labels,) = all_reduce_sum([float(sum(label_tokens(b) for b in window))], device)
        lr = scheduler.get_last_lr()[0]
        loss_sum, step_tokens = 0.0, 0
        for i, batch in enumerate(window):
            batch = _to_device(batch, device)
            token_loss_sum, _ = batch_loss_sum(engine, batch, device, cfg.z_loss)
            engine.backward(token_loss_sum * world / max(window_labels, 1.0), scale_wrt_gas=False)
            loss_sum += float(token_loss_sum.detach())
            step_tokens += _real_tokens(batch)
            if i < len(window) - 1:
                engine.step()
        global_loss_sum, global_tokens = all_reduce_sum([loss_sum, float(step_tokens)], device)
        loss = global_loss_sum / max(window_labels, 1.0)
        if not math.isfinite(loss):
            if main:
                info.status = "failed"
                info.extra["error"] = f"non-finite loss at step {step}"
                info.save(run_dir)
            metrics.close()
            raise NonFiniteLossError(
                f"The loss became {loss} at step {step}; training stopped and the bad state was not saved. "
                f"The last good checkpoint is in {run_dir / 'checkpoints'}; check the data, or lower lr and "
                f"start again with --overwrite (--resume keeps the run's settings).")
        local_norm = grad_l2_norm(engine.module) if engine.zero_optimization_stage() == 0 else None
        engine.step()
        elapsed = time.perf_counter() - started
        tokens_seen += int(global_tokens)
        grad_norm = engine.get_global_grad_norm()
        grad_norm = local_norm if grad_norm is None else grad_norm  # DeepSpeed reports none at ZeRO-0 (fp32)
        record = {"step": step, "loss": loss, "lr": lr, "tokens": int(global_tokens),
                  "tokens_per_s": global_tokens / max(elapsed, 1e-9), "epoch": sampler.epoch,
                  "cpu_s": time.process_time() - started_cpu}
        if grad_norm is not None:
            record["grad_norm"] = float(grad_norm)
        history = {"tokens": tokens_seen, "last_loss": loss}
        if main:
            if step % cfg.log_steps == 0 or step == total_steps:
                metrics.log(record)
            bar.set_postfix(loss=f"{loss:.4f}", lr=f"{lr:.2e}", tok_s=f"{record['tokens_per_s']:.0f}", refresh=False)
            bar.update(1)
        if cfg.eval_steps and step % cfg.eval_steps == 0:
            evaluate(step)
        if cfg.save_steps and step % cfg.save_steps == 0 and step != total_steps:
            checkpoint(step)
    bar.close()

    # ---- end: final eval, checkpoint, result
    if (step % cfg.eval_steps != 0) if cfg.eval_steps else bool(cfg.eval_samples or cfg.eval_prompts or val_rows):
        evaluate(step)
    if cfg.save_total_limit > 0:
        checkpoint(step)
    save_final(engine.module, tokenizer, template, run_dir / "final", adapter=loaded.adapter, zero3=zero3, rank=rank)
    barrier()
    if main:
        metrics.close()
        plot_loss(run_dir / "metrics.jsonl", run_dir / "loss.png")
        info.status, info.final_dir = "finished", "final"
        info.save(run_dir)
        print(f"xt train: finished {step} steps; result in {run_dir / 'final'}", file=sys.stderr)
    metrics.close()
    return run_dir

