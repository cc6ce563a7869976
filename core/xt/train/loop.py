"""The training recipe: ``setup(cfg) -> Run``, then ``fit(run)``, over ``deepspeed.initialize``.

``setup`` does everything that can fail before the first step (processes, run folder checks,
objective, model, data, sampler, engine, resume) and returns a :class:`Run` holding it; ``fit`` is
the loop itself: for each optimizer step take a window of micro-batches, back-propagate each one's
share of the window's loss as the objective computes it (the maths is in :mod:`xt.train.loss`),
step, log, evaluate and checkpoint on schedule; then save the result. ``train(cfg)`` is the two in a row.
"""

from __future__ import annotations

import math
import random
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from xt.config import TrainConfig
from xt.errors import XtError

VAL_SPLITS = ("validation", "test")
REAL_TOKENS = "xt_real_tokens"  # tokens of the rows a micro-batch was collated from (padding excluded)


class NonFiniteLossError(XtError):
    """The loss became NaN or infinite; the run stopped without saving the bad state."""


@dataclass
class Run:
    """Everything a training run needs once set up: what ``fit`` reads, and the state it advances."""

    cfg: TrainConfig
    dist: Any               # rank, world size, device (xt.train.dist.DistInfo)
    run_dir: Path
    model_spec: Any
    dataset_spec: Any
    objective: Any          # the ObjectiveSpec; its context (options, reference model) below
    objective_context: Any
    template: Any
    loaded: Any             # the built model: tokenizer, dtype, attention, adapter or not (LoadedModel)
    train_rows: Any
    val_rows: Any           # None without eval
    collate: Any
    sampler: Any
    engine: Any             # the DeepSpeed engine around the model, with the optimizer
    scheduler: Any
    total_steps: int
    metrics: Any            # MetricsLog
    info: Any               # RunInfo, saved as run.json
    start_step: int = 0
    history: dict[str, Any] = field(default_factory=dict)  # tokens seen and last loss, kept in checkpoints
    heldout: list[Any] = field(default_factory=list)        # (prompt ids, reference ids) for generation eval
    val_collate: Any = None  # validation batches, when they differ from training's (precomputed reference values)

    @property
    def main(self) -> bool:
        return self.dist.is_main

    @property
    def zero3(self) -> bool:
        return self.engine.zero_optimization_stage() == 3


# ---------------------------------------------------------------------------------------------- setup


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


def seed_everything(seed: int) -> None:
    import numpy as np
    import torch

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def build_data(cfg: TrainConfig, dataset_spec: Any, template: Any, tokenizer: Any, rank: int,
               world: int, attention_weight: float = 0.0, objective: Any = None,
               causal_share: float = 0.5) -> tuple[Any, Any]:
    """(train rows, validation rows or None): the dataset's validation split, else a val_ratio slice."""
    from xt.data import build_dataset
    from xt.train.evaluation import RowSubset

    def rows(split: str) -> Any:
        options = cfg.data_options(split, rank=rank, world_size=world, attention_weight=attention_weight,
                                   causal_share=causal_share)
        options.objective = objective
        return build_dataset(dataset_spec, template, tokenizer, options, rank=rank, world_size=world)

    train = rows("train")
    wants_eval = cfg.eval_steps > 0 or cfg.eval_samples > 0 or cfg.val_ratio > 0
    split = cfg.eval_split or next((s for s in VAL_SPLITS if s in dataset_spec.splits), None)
    if wants_eval and split is not None and cfg.val_ratio == 0:
        return train, rows(split)
    if cfg.val_ratio > 0:
        order = list(range(len(train)))
        random.Random(cfg.seed).shuffle(order)
        n_val = max(1, int(round(cfg.val_ratio * len(train))))
        if n_val >= len(train):
            raise XtError(f"val_ratio {cfg.val_ratio} leaves no training rows out of {len(train)}; lower it.")
        return RowSubset(train, sorted(order[n_val:])), RowSubset(train, sorted(order[:n_val]))
    return train, None


def build_collate(cfg: TrainConfig, registry: Any, model_spec: Any, loaded: Any, objective: Any = None) -> Any:
    """The collate function: ``cfg.collator``, else the objective's, else the model spec's, else ``default``."""
    from xt.data.collate import make_collate
    from xt.model.loading import safe_pad_id

    name = cfg.collator if cfg.collator != "default" else \
        (getattr(objective, "collator", None) or model_spec.collator or "default")
    return make_collate(registry.get("collators", name), tokenizer=loaded.tokenizer,
                        pad_token_id=safe_pad_id(loaded.tokenizer, loaded.model), attn_implementation=loaded.attn)


def build_sampler(cfg: TrainConfig, model_spec: Any, train_rows: Any, rank: int, world: int) -> Any:
    """Micro-batches of row indices: the model spec's batch sampler (e.g. modality-grouped), else xt's."""
    from xt.data import ResumableBatchSampler

    grouped = cfg.group_by_length and not train_rows.stats["packed"] or train_rows.stats.get("layout") == "grouped"
    if model_spec.batch_sampler is not None:
        return model_spec.batch_sampler(train_rows, cfg.micro_batch_size, rank=rank, world_size=world, seed=cfg.seed,
                                        shuffle=True, group_by_length=grouped, drop_last=True)
    return ResumableBatchSampler(train_rows.lengths, cfg.micro_batch_size, rank=rank, world_size=world,
                                 seed=cfg.seed, shuffle=True, group_by_length=grouped)


def count_steps(cfg: TrainConfig, sampler: Any, rows: int, world: int) -> tuple[int, int]:
    """(optimizer steps per epoch, total steps): ``max_steps`` when set, else ``epochs`` worth."""
    steps_per_epoch = len(sampler) // cfg.grad_accum
    if steps_per_epoch == 0:
        raise XtError(f"The dataset has {rows} rows, fewer than one optimizer step needs "
                      f"(micro_batch_size {cfg.micro_batch_size} x grad_accum {cfg.grad_accum} x {world} processes); "
                      f"lower them or add data.")
    return steps_per_epoch, cfg.max_steps or max(1, math.ceil(cfg.epochs * steps_per_epoch))


def build_engine(cfg: TrainConfig, loaded: Any, total_steps: int, world: int) -> tuple[Any, Any]:
    """(DeepSpeed engine, LR scheduler): torch AdamW with warm-up + cosine, under the generated config."""
    import deepspeed

    from xt.train.optim import build_ds_config, make_optimizer, make_scheduler

    optimizer = make_optimizer(loaded.model, cfg)
    scheduler = make_scheduler(optimizer, cfg, total_steps)
    engine, _, _, scheduler = deepspeed.initialize(model=loaded.model, optimizer=optimizer, lr_scheduler=scheduler,
                                                   config=build_ds_config(cfg, loaded.dtype, world),
                                                   dist_init_required=False)
    if world == 1 and engine.zero_optimization_stage() == 0:
        engine.enable_backward_allreduce = False  # one process: nothing to reduce, skip flatten + all-reduce
    return engine, scheduler


def run_info(cfg: TrainConfig, model_spec: Any, template: Any, loaded: Any, total_steps: int, world: int,
             objective: Any) -> Any:
    from xt import __version__
    from xt.run import RunInfo

    return RunInfo(model=cfg.model, model_source=loaded.source, template=template.name, method=cfg.method,
                   dataset=cfg.dataset, kind=model_spec.kind, adapter=loaded.adapter, xt_version=__version__,
                   objective=objective.name,
                   model_args=dict(cfg.model_args), extra={"total_steps": total_steps, "world_size": world})


def setup(cfg: TrainConfig, *, resume: str | bool | None = None, overwrite: bool = False,
          locks: list[Any] | None = None) -> Run:
    """Everything before the first step, as a :class:`Run`; the run folder's lock goes into ``locks``.

    The run folder is written only once model, data, collator and engine are set up, in a hidden
    sibling renamed into place (an ``--overwrite``n run is replaced only then), so a bad name, file
    or setting leaves nothing behind and never costs the old run.
    """
    from xt.data.layout import attention_weight, causal_share
    from xt.data.pipeline import choose_template
    from xt.model.setup import build_model, check_token_ids
    from xt.plugins import get_registry
    from xt.run import RunLock, check_new_run_dir, start_run_dir
    from xt.train.checkpoint import load_checkpoint
    from xt.train.dist import init_distributed
    from xt.train.evaluation import heldout_prompts
    from xt.train.metrics import MetricsLog
    from xt.train.objective import objective_name, resolve_objective

    # ---- processes, run folder, seeds
    dist = init_distributed()
    rank, world, main = dist.rank, dist.world_size, dist.is_main
    locks = [] if locks is None else locks

    def claim(folder: Path) -> None:  # a run being resumed is locked before its checkpoints are read
        if folder.is_dir():  # else there is nothing to resume, which resolve_resume says
            locks.extend(filter(None, [on_main(main, lambda: RunLock(folder, "train --resume"))]))

    run_dir, resume_ckpt = resolve_resume(cfg, resume, claim)
    cfg.output = str(run_dir)
    if resume_ckpt is None:
        on_main(main, lambda: check_new_run_dir(run_dir, overwrite))
    seed_everything(cfg.seed)

    # ---- objective, model, tokenizer, template, data
    registry = get_registry()
    model_spec = registry.resolve_model(cfg.model)
    dataset_spec = registry.get("datasets", cfg.dataset)
    objective, objective_args = resolve_objective(objective_name(cfg.objective, dataset_spec), cfg.objective_args)
    loaded = build_model(cfg, model_spec)
    context, frozen = prepare_objective(cfg, objective, objective_args, loaded)
    # 'auto' becomes the template read from the tokenizer's own chat template
    template = choose_template(model_spec, dataset_spec, cfg.template).for_tokenizer(loaded.tokenizer)
    train_rows, val_rows = build_data(cfg, dataset_spec, template, loaded.tokenizer, rank, world,
                                      attention_weight(loaded.model) if cfg.pack == "auto" else 0.0, objective,
                                      causal_share(dist.device.type))
    check_token_ids(loaded.model, train_rows, val_rows)  # ids past the embedding rows: refused before any write

    # ---- batches, schedule, engine
    collate = build_collate(cfg, registry, model_spec, loaded, objective)
    sampler = build_sampler(cfg, model_spec, train_rows, rank, world)
    steps_per_epoch, total_steps = count_steps(cfg, sampler, len(train_rows), world)
    engine, scheduler = build_engine(cfg, loaded, total_steps, world)
    context.reference = reference_of(objective, loaded, engine, frozen)
    del frozen  # held by the context's reference only, so precomputing can free it
    collate, val_collate = precomputed_collates(cfg, objective, objective_args, context, loaded, train_rows, val_rows,
                                                collate, dist)

    # ---- resume
    start_step, history = 0, {}
    if resume_ckpt is not None:
        state = load_checkpoint(engine, resume_ckpt, rank=rank, exclude_frozen=loaded.adapter)
        sampler.load_state_dict(state["sampler"])
        start_step, history = int(state["step"]), state.get("metrics", {})
    info = run_info(cfg, model_spec, template, loaded, total_steps, world, objective)

    # ---- the run folder, written only now that everything above is valid
    def write_run(folder: Path) -> None:
        cfg.save(folder / "config.yaml")
        info.save(folder)

    if resume_ckpt is not None:
        on_main(main, lambda: write_run(run_dir))
    else:
        locks.extend(filter(None, [on_main(main, lambda: start_run_dir(run_dir, overwrite, write_run))]))
    metrics = MetricsLog(run_dir, enabled=main, resume_step=start_step if resume_ckpt is not None else None,
                         report_to=cfg.report_to, config=cfg.to_dict())
    run = Run(cfg=cfg, dist=dist, run_dir=run_dir, model_spec=model_spec, dataset_spec=dataset_spec,
              objective=objective, objective_context=context, template=template, loaded=loaded, train_rows=train_rows, val_rows=val_rows, collate=collate,
              sampler=sampler, engine=engine, scheduler=scheduler, total_steps=total_steps, metrics=metrics,
              info=info, start_step=start_step, history=history, val_collate=val_collate)
    if val_rows is not None and cfg.eval_samples:
        run.heldout = heldout_prompts(val_rows, cfg.eval_samples)
    if main:
        print_banner(run, steps_per_epoch)
    return run


def prepare_objective(cfg: TrainConfig, objective: Any, args: dict[str, Any], loaded: Any) -> tuple[Any, Any]:
    """(the objective's context, a frozen reference copy or None); ``prepare_model`` runs here, before the engine.

    A full-training objective that needs a reference gets a copy of the model as loaded; under
    LoRA/QLoRA the reference is the trained model with its adapter disabled (no copy).
    """
    from xt.errors import plugin_call
    from xt.model.loading import safe_pad_id
    from xt.train.objective import frozen_copy, objective_context

    frozen = frozen_copy(loaded.model) if objective.reference and not loaded.adapter else None
    context = objective_context(objective, args, tokenizer=loaded.tokenizer,
                                pad_token_id=safe_pad_id(loaded.tokenizer, loaded.model), z_loss=cfg.z_loss,
                                reference=None)
    if objective.prepare_model is not None:
        with plugin_call(objective, "prepare_model"):
            objective.prepare_model(loaded.model, context)
    return context, frozen


def reference_of(objective: Any, loaded: Any, engine: Any, frozen: Any) -> Any:
    """The reference-model factory for the objective's context (None when it needs none)."""
    from xt.train.objective import reference_model

    if not objective.reference:
        return None
    if frozen is not None:
        frozen.to(next(engine.module.parameters()).device)
    return reference_model(loaded.adapter, lambda: engine.module, frozen)


def precomputed_collates(cfg: TrainConfig, objective: Any, args: dict[str, Any], context: Any, loaded: Any,
                         train_rows: Any, val_rows: Any, collate: Any, dist: Any) -> tuple[Any, Any]:
    """(training collate, validation collate or None): with ``precompute_reference``, batches that carry the
    reference values computed once (:mod:`xt.train.precompute`), and the reference model released."""
    from xt.train.precompute import attach, reference_table, table_key

    if not cfg.precompute_reference:
        return collate, None
    if objective.precompute is None:
        raise XtError(f"precompute_reference is set, but objective '{objective.name}' has nothing to precompute "
                      f"(no precompute); drop it.")
    identity = {"model": cfg.model, "source": loaded.source, "model_args": cfg.model_args,
                "quantized": cfg.method == "qlora" or cfg.load_in_8bit, "dtype": str(loaded.dtype)}
    tables = {}
    for part, rows in (("train", train_rows), ("validation", val_rows)):
        if rows is not None:
            tables[part] = reference_table(objective, context, rows, collate, cfg.micro_batch_size, dist.device,
                                           dist.rank, dist.world_size, f"{table_key(identity, objective, args)}-{part}")
    context.reference = None  # every batch carries its reference values; a frozen copy is freed here

    def with_table(table: Any) -> Any:
        return lambda samples: attach(collate(samples), table)

    return with_table(tables["train"]), with_table(tables["validation"]) if "validation" in tables else None


def print_banner(run: Run, steps_per_epoch: int) -> None:
    from xt.model.setup import count_parameters

    cfg, loaded = run.cfg, run.loaded
    total_params, trainable_params = count_parameters(run.engine.module)
    objective = f" with objective {run.objective.name}" if run.objective.name != "sft" else ""
    print(f"xt train: {cfg.model} on {cfg.dataset}{objective} ({run.template.name} template), {cfg.method}, {loaded.dtype}, "
          f"attn {loaded.attn}, ZeRO-{cfg.zero_stage}, {run.dist.world_size} process(es); {trainable_params:,} of "
          f"{total_params:,} parameters trainable; {len(run.train_rows)} rows, {steps_per_epoch} steps/epoch, "
          f"{run.total_steps} steps -> {run.run_dir}", file=sys.stderr)


# ---------------------------------------------------------------------------------------------- the loop


def train(cfg: TrainConfig, *, resume: str | bool | None = None, overwrite: bool = False) -> Path:
    """Train as ``cfg`` says; returns the run directory. Runs the same on 1 or N processes.

    A run that stops on an exception or a signal is marked failed in ``run.json`` with the reason.
    """
    from xt.errors import first_line
    from xt.run import mark_failed
    from xt.train.launch import use_per_env_extensions_dir

    use_per_env_extensions_dir()  # before DeepSpeed builds its comm op
    locks: list[Any] = []  # the run folder's lock, once taken (rank 0)
    try:
        return fit(setup(cfg, resume=resume, overwrite=overwrite, locks=locks))
    except BaseException as exc:
        if locks and cfg.output:
            reason = f"interrupted {exc}".strip() if isinstance(exc, KeyboardInterrupt) else \
                f"{type(exc).__name__}: {first_line(exc)}"
            mark_failed(Path(cfg.output), reason)
        raise
    finally:
        for lock in locks:
            lock.release()


def fit(run: Run) -> Path:
    """The loop: one optimizer step at a time, eval and checkpoints on schedule, then the result."""
    from tqdm.auto import tqdm

    cfg = run.cfg
    batches = micro_batches(run)
    run.engine.train()
    bar = tqdm(total=run.total_steps, initial=run.start_step, disable=not run.main, desc="train",
               dynamic_ncols=True, file=sys.stderr)
    step = run.start_step
    for step in range(run.start_step + 1, run.total_steps + 1):
        record = optimizer_step(run, batches, step)
        if run.main:
            if step % cfg.log_steps == 0 or step == run.total_steps:
                run.metrics.log(record)
            bar.set_postfix(loss=f"{record['loss']:.4f}", lr=f"{record['lr']:.2e}",
                            tok_s=f"{record['tokens_per_s']:.0f}", refresh=False)
            bar.update(1)
        if cfg.eval_steps and step % cfg.eval_steps == 0:
            evaluate(run, step)
        if cfg.save_steps and step % cfg.save_steps == 0 and step != run.total_steps:
            checkpoint(run, step)
    bar.close()
    finish(run, step)
    return run.run_dir


def micro_batches(run: Run) -> Any:
    """Collated micro-batches, epoch after epoch, in the sampler's (resumable) order."""
    while True:
        for indices in run.sampler:
            rows = [run.train_rows[i] for i in indices]
            batch = run.collate(rows)
            batch[REAL_TOKENS] = sum(len(row["input_ids"]) for row in rows)  # packed batches have no mask to count
            yield batch


def optimizer_step(run: Run, batches: Any, step: int) -> dict[str, Any]:
    """One optimizer step over a window of ``grad_accum`` micro-batches; returns its metrics record."""
    from xt.train.dist import all_reduce_sum
    from xt.train.loss import micro_batch_objective, window_loss
    from xt.train.objective import call_loss, count_units

    engine, device, world, objective = run.engine, run.dist.device, run.dist.world_size, run.objective
    started, started_cpu = time.perf_counter(), time.process_time()
    window = [next(batches) for _ in range(run.cfg.grad_accum)]  # moved to the device one at a time below
    (window_units,) = all_reduce_sum([float(sum(count_units(objective, b) for b in window))], device)
    lr = run.scheduler.get_last_lr()[0]
    loss_sum, step_tokens, metric_sums = 0.0, 0, {}
    for i, batch in enumerate(window):
        batch = _to_device(batch, device)
        batch_sum, metrics = call_loss(objective, engine, batch, run.objective_context)
        engine.backward(micro_batch_objective(batch_sum, world, window_units), scale_wrt_gas=False)
        loss_sum += float(batch_sum.detach())
        for key, value in metrics.items():
            metric_sums[key] = metric_sums.get(key, 0.0) + value
        step_tokens += _real_tokens(batch)
        if i < len(window) - 1:
            engine.step()  # inside the window DeepSpeed only accumulates
    names = sorted(metric_sums)  # every rank reports the same metrics, so the reduction lines up
    global_loss_sum, global_tokens, *global_metrics = all_reduce_sum(
        [loss_sum, float(step_tokens), *(metric_sums[k] for k in names)], device)
    loss = window_loss(global_loss_sum, window_units)
    if not math.isfinite(loss):
        fail_non_finite(run, step, loss)
    local_norm = grad_l2_norm(engine.module) if engine.zero_optimization_stage() == 0 else None
    engine.step()
    elapsed = time.perf_counter() - started
    grad_norm = engine.get_global_grad_norm()
    grad_norm = local_norm if grad_norm is None else grad_norm  # DeepSpeed reports none at ZeRO-0 (fp32)
    record = {"step": step, "loss": loss, "lr": lr, "tokens": int(global_tokens),
              "tokens_per_s": global_tokens / max(elapsed, 1e-9), "epoch": run.sampler.epoch,
              "cpu_s": time.process_time() - started_cpu}
    if grad_norm is not None:
        record["grad_norm"] = float(grad_norm)
    record.update({key: window_loss(value, window_units) for key, value in zip(names, global_metrics)})
    run.history = {"tokens": int(run.history.get("tokens", 0)) + int(global_tokens), "last_loss": loss}
    return record


def fail_non_finite(run: Run, step: int, loss: float) -> None:
    """Mark the run failed and stop before the optimizer applies the bad gradients."""
    if run.main:
        run.info.status = "failed"
        run.info.extra["error"] = f"non-finite loss at step {step}"
        run.info.save(run.run_dir)
    run.metrics.close()
    raise NonFiniteLossError(
        f"The loss became {loss} at step {step}; training stopped and the bad state was not saved. "
        f"The last good checkpoint is in {run.run_dir / 'checkpoints'}; check the data, or lower lr and "
        f"start again with --overwrite (--resume keeps the run's settings).")


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
    if REAL_TOKENS in batch:
        return int(batch[REAL_TOKENS])
    mask = batch.get("attention_mask")
    return int(mask.sum()) if mask is not None else int(batch["input_ids"].numel())


def evaluate(run: Run, step: int) -> None:
    """Validation loss and generations (configured prompts, held-out samples); every rank calls it."""
    from tqdm.auto import tqdm

    from xt.train.evaluation import run_generation_eval, tail_words, validate

    cfg, main = run.cfg, run.main
    record: dict[str, Any] = {"step": step}
    if run.val_rows is not None and len(run.val_rows):
        record.update(validate(run.engine.module, run.val_rows, run.val_collate or run.collate, cfg.micro_batch_size,
                               run.dist.device,
                               run.dist.rank, run.dist.world_size, run.objective, run.objective_context))
    if cfg.eval_prompts or run.heldout:
        result = run_generation_eval(
            run.engine.module, run.loaded.tokenizer, run.template, prompts=cfg.eval_prompts, heldout=run.heldout,
            scorer=run.dataset_spec.scorer, max_new_tokens=cfg.eval_max_new_tokens,
            out_file=run.run_dir / "eval" / f"step-{step}.jsonl" if main else None,
            synced_gpus=run.zero3 and run.dist.world_size > 1, step=step)
        if "accuracy" in result:
            record["eval_accuracy"] = result["accuracy"]
        if main:
            run.metrics.log_samples(result.get("records", []), step)
            for r in result.get("records", [])[:4]:
                tqdm.write(f"[eval step {step}] {tail_words(r['prompt'])!r} -> {r['prediction'][:120]!r}",
                           file=sys.stderr)
    if main and len(record) > 1:
        parts = [f"eval_loss: {record['eval_loss']:.4f}"] if "eval_loss" in record else []
        parts += [f"{key[len('eval_'):].replace('_', ' ')}: {100 * value:.1f}%" for key, value in record.items()
                  if key.startswith("eval_") and key.endswith("accuracy")]  # the scorer's, an objective's
        if parts:
            tqdm.write(f"step {step}: " + ", ".join(parts), file=sys.stderr)
        run.metrics.log(record)


def checkpoint(run: Run, step: int) -> None:
    from xt.train.checkpoint import save_checkpoint

    state = {"step": step, "sampler": run.sampler.state_dict(), "metrics": run.history,
             "total_steps": run.total_steps}
    save_checkpoint(run.engine, run.run_dir / "checkpoints", step, state, rank=run.dist.rank,
                    keep=run.cfg.save_total_limit, exclude_frozen=run.loaded.adapter)


def finish(run: Run, step: int) -> None:
    """The last eval and checkpoint, the result in ``final/``, the loss plot and ``run.json``."""
    from xt.model.saving import save_final
    from xt.train.dist import barrier
    from xt.train.metrics import plot_loss

    cfg = run.cfg
    if (step % cfg.eval_steps != 0) if cfg.eval_steps else bool(cfg.eval_samples or cfg.eval_prompts or run.val_rows):
        evaluate(run, step)
    if cfg.save_total_limit > 0:
        checkpoint(run, step)
    save_final(run.engine.module, run.loaded.tokenizer, run.template, run.run_dir / "final",
               adapter=run.loaded.adapter, zero3=run.zero3, rank=run.dist.rank,
               objective=run.objective, context=run.objective_context)
    barrier()
    if run.main:
        run.metrics.close()
        plot_loss(run.run_dir / "metrics.jsonl", run.run_dir / "loss.png")
        run.info.status, run.info.final_dir = "finished", "final"
        run.info.adapter = (run.run_dir / "final" / "adapter_config.json").is_file()  # an objective may save merged
        run.info.save(run.run_dir)
        print(f"xt train: finished {step} steps; result in {run.run_dir / 'final'}", file=sys.stderr)
    run.metrics.close()
