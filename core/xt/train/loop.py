"""The training loop: one function, top to bottom, over ``deepspeed.initialize``.

The loss of an optimizer step is the mean over every label token of its accumulation window on all
ranks: the label tokens of the window are counted first, then each micro-batch contributes
``sum of its token losses * world_size / tokens of the window`` (DeepSpeed averages gradients over
ranks, and ``scale_wrt_gas=False`` stops it dividing by the accumulation steps again). So the update
equals the one on the concatenated batch, whatever the packed rows hold.
"""

from __future__ import annotations

import math
import os
import random
import shutil
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


def resolve_resume(cfg: TrainConfig, resume: str | bool | None) -> tuple[Path, Path | None]:
    """(run dir, checkpoint to resume from or None)."""
    from xt.train.checkpoint import STATE_FILE, latest_checkpoint

    run_dir = Path(cfg.output) if cfg.output else default_output(cfg)
    if not resume:
        return run_dir, None
    if isinstance(resume, str):
        target = Path(resume)
        if (target / STATE_FILE).is_file():  # a checkpoint folder itself
            return target.parent.parent, target
        run_dir = target
    ckpt = latest_checkpoint(run_dir / "checkpoints")
    if ckpt is None:
        raise XtError(f"Nothing to resume in '{run_dir}': it has no complete checkpoint under checkpoints/; "
                      f"start a new run without --resume.")
    return run_dir, ckpt


def prepare_run_dir(run_dir: Path, resuming: bool, overwrite: bool, create: bool = True) -> None:
    """Create the run dir; refuse to mix runs unless --overwrite (only an xt run dir is ever deleted).

    ``create=False`` only checks, so a refusal comes before the model and data load.
    """
    from xt.run import is_run_dir

    if resuming:
        return
    if run_dir.exists() and any(run_dir.iterdir()):
        if not overwrite:
            raise XtError(f"Output folder '{run_dir}' already holds a run; pass --overwrite to replace it, "
                          f"--resume to continue it, or --output NEW_DIR.")
        if not is_run_dir(run_dir):
            raise XtError(f"Output folder '{run_dir}' is not empty and not an xt run; refusing to delete it "
                          f"with --overwrite. Choose another --output.")
        if create:
            shutil.rmtree(run_dir)
    if not create:
        return
    run_dir.mkdir(parents=True, exist_ok=True)


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
    from xt.train.evaluation import RowSubset

    def options(split: str) -> Any:
        return DataOptions(data_files=cfg.data_files or None, split=split, max_length=cfg.max_length,
                           length_policy=cfg.length_policy, pack=cfg.pack, skip_bad_rows=cfg.skip_bad_rows,
                           num_proc=cfg.num_proc, cache_dir=cfg.data_cache_dir, use_cache=cfg.use_data_cache,
                           seed=cfg.seed, micro_batch_size=cfg.micro_batch_size, attention_weight=attention_weight)

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


def safe_pad_id(tokenizer: Any, model: Any) -> int:
    """The tokenizer's pad id when the model can embed it, else EOS / 0.

    Some tokenizers name a pad token outside the model's vocabulary (Llama-2's ``<pad>`` is id 32000
    of a 32000-row embedding); packed rows carry no attention mask, so pads do reach the embedding.
    """
    rows = model.get_input_embeddings().num_embeddings if hasattr(model, "get_input_embeddings") else None
    for candidate in (tokenizer.pad_token_id, tokenizer.eos_token_id, 0):
        if candidate is not None and (rows is None or 0 <= candidate < rows):
            return int(candidate)
    return 0


def _to_device(batch: dict[str, Any], device: Any) -> dict[str, Any]:
    return {k: (v.to(device) if hasattr(v, "to") else v) for k, v in batch.items()}


def _real_tokens(batch: dict[str, Any]) -> int:
    mask = batch.get("attention_mask")
    return int(mask.sum()) if mask is not None else int(batch["input_ids"].numel())


def train(cfg: TrainConfig, *, resume: str | bool | None = None, overwrite: bool = False) -> Path:
    """Train as ``cfg`` says; returns the run directory. Runs the same on 1 or N processes."""
    import deepspeed
    from tqdm.auto import tqdm

    from xt import __version__
    from xt.data import ResumableBatchSampler
    from xt.data.layout import attention_weight
    from xt.data.pipeline import choose_template
    from xt.model.saving import save_final
    from xt.model.setup import build_model, count_parameters
    from xt.plugins import get_registry
    from xt.run import RunInfo
    from xt.train.checkpoint import load_checkpoint, save_checkpoint
    from xt.train.dist import all_reduce_sum, barrier, broadcast_object, init_distributed
    from xt.train.evaluation import batch_loss_sum, heldout_prompts, label_tokens, run_generation_eval, validation_loss
    from xt.train.metrics import MetricsLog, plot_loss
    from xt.train.optim import build_ds_config, make_optimizer, make_scheduler

    # ---- processes, run directory, seeds
    dist = init_distributed()
    rank, world, device, main = dist.rank, dist.world_size, dist.device, dist.is_main
    run_dir, resume_ckpt = resolve_resume(cfg, resume)
    cfg.output = str(run_dir)
    if main:
        prepare_run_dir(run_dir, resume_ckpt is not None, overwrite, create=False)
    seed_everything(cfg.seed)
    if cfg.image_folder:
        os.environ["XT_IMAGE_FOLDER"] = str(cfg.image_folder)

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

    # ---- the run directory: written only once model and data loaded, so a bad name, an unreachable
    # hub or a malformed file leaves nothing behind
    error = None
    if main:
        try:
            prepare_run_dir(run_dir, resume_ckpt is not None, overwrite)
            cfg.save(run_dir / "config.yaml")
        except XtError as exc:
            error = str(exc)
    error = broadcast_object(error)
    if error:
        raise XtError(error)
    collator_name = cfg.collator if cfg.collator != "default" else model_spec.extra.get("collator", "default")
    collate = registry.get("collators", collator_name).factory(
        tokenizer=tokenizer, pad_token_id=safe_pad_id(tokenizer, model), attn_implementation=loaded.attn)
    grouped = cfg.group_by_length and not train_rows.stats["packed"] or train_rows.stats.get("layout") == "grouped"
    make_sampler = model_spec.extra.get("batch_sampler")  # e.g. modality-grouped batches for multimodal models
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
    metrics = MetricsLog(run_dir, enabled=main, resume_step=start_step if resume_ckpt is not None else None,
                         report_to=cfg.report_to, config=cfg.to_dict())
    info = RunInfo(model=cfg.model, model_source=loaded.source, template=template.name, method=cfg.method,
                   dataset=cfg.dataset, kind=model_spec.kind, adapter=loaded.adapter, xt_version=__version__,
                   model_args=dict(cfg.model_args),
                   extra={"total_steps": total_steps, "world_size": world})
    total_params, trainable_params = count_parameters(engine.module)
    if main:
        info.save(run_dir)
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
                    tqdm.write(f"[eval step {step}] {r['prompt'][-80:]!r} -> {r['prediction'][:120]!r}",
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
                f"The last good checkpoint is in {run_dir / 'checkpoints'}; lower lr or check the data, "
                f"then --resume.")
        engine.step()
        elapsed = time.perf_counter() - started
        tokens_seen += int(global_tokens)
        grad_norm = engine.get_global_grad_norm()
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


def env_flag(name: str) -> bool:
    return os.environ.get(name, "").lower() in ("1", "true", "yes")
