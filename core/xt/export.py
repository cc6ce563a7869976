"""Merge LoRA adapters into their base model and write merged Hugging Face folders.

``merge_adapter`` backs ``xt merge BASE ADAPTER --out DIR``; ``export_hf`` backs the core's ``hf``
exporter (``xt export RUN --to hf``). Both load the base **unquantized** in the chosen dtype (also for
adapters trained with QLoRA on a 4-bit base), merge with peft's ``merge_and_unload`` and save
safetensors with the tokenizer, ``generation_config.json`` (stop ids of the template) and the chat
template. Output is written to a temporary sibling folder and renamed into place, so an existing
folder is never half-overwritten.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from xt.errors import XtError, plugin_call

MERGE_DTYPES = ("bf16", "fp16", "fp32")
TEMPLATE_FILE = "xt_template.json"
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model")
EXPORT_MARK = ".xt-export"  # in every folder xt export / xt merge wrote: --overwrite may replace it


@dataclass
class RunModel:
    """What a run directory (or base + adapter pair) needs to be rebuilt: base, weights, template."""

    model: str              # registered model name, folder or hub id of the base
    source: str | None      # where the base weights come from (None: built from a config)
    final_dir: Path | None  # the adapter folder, or the full model folder
    adapter: bool           # final_dir holds a PEFT adapter
    template: str | None    # registered template name
    kind: str = "causal-lm"
    model_args: dict[str, Any] = field(default_factory=dict)  # load_model kwargs the run used


def torch_dtype_of(name: str) -> Any:
    """``bf16`` / ``fp16`` / ``fp32`` -> the torch dtype."""
    import torch

    if name not in MERGE_DTYPES:
        raise XtError(f"Unknown dtype '{name}'; choose one of {', '.join(MERGE_DTYPES)}.")
    return {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[name]


def is_adapter_dir(path: str | os.PathLike) -> bool:
    return (Path(path) / "adapter_config.json").is_file()


def describe_run(run_dir: str | os.PathLike) -> RunModel:
    """Base model, final folder and template of a finished run (clear errors otherwise)."""
    from xt.run import load_run

    info = load_run(run_dir)
    if not info.final_dir:
        raise XtError(f"Run '{run_dir}' has no final result yet (status '{info.status}'); wait for 'xt train' "
                      f"to finish, or pass a model folder instead.")
    final = Path(run_dir) / info.final_dir
    if not final.is_dir():
        raise XtError(f"Run '{run_dir}' names final folder '{info.final_dir}', which does not exist; the run "
                      f"directory is incomplete.")
    check_generative(final, info.objective, run_dir)
    return RunModel(model=info.model, source=info.model_source, final_dir=final, adapter=bool(info.adapter),
                    template=info.template, kind=info.kind,
                    model_args=dict(info.model_args))


def check_generative(final: Path, objective: str, run_dir: Any) -> None:
    """Refuse a run whose result is not a language model (e.g. a reward model saved as a classifier)."""
    import json

    config = final / "config.json"
    architectures = json.loads(config.read_text()).get("architectures") or [] if config.is_file() else []
    if architectures and all(a.endswith("ForSequenceClassification") for a in architectures):
        raise XtError(f"Run '{run_dir}' trained objective '{objective}': its result {final} is a sequence classifier "
                      f"({architectures[0]}), not a language model to chat with, merge or export; load it with "
                      f"transformers' AutoModelForSequenceClassification.")


def resolve_base(model: str, source: str | None = None) -> tuple[Any, str | None]:
    """The model spec for a registered name / folder / hub id, and the source to load it from."""
    from xt.plugins import get_registry

    spec = get_registry().resolve_model(model)
    return spec, source if source is not None else spec.source


def load_base(spec: Any, source: str | None, dtype: Any, model_args: dict[str, Any] | None = None,
              **kwargs: Any) -> Any:
    """Call the spec's model loader (or the generic one) unquantized in ``dtype`` with the run's
    ``model_args``; ``kwargs`` are further ``from_pretrained`` keywords."""
    from xt.model.loading import call_model_loader

    return call_model_loader(spec, source, model_args, dtype=dtype, **kwargs)


def check_carries_weights(model: Any, folder: str | os.PathLike, spec: Any) -> None:
    """Refuse a model that does not hold the weights saved in ``folder`` (a run's full-model result).

    Every saved tensor whose name and shape the loaded model has in floating point is compared after
    casting to the loaded dtype; one difference means the loader did not load from the folder it was
    given.
    """
    import torch
    from safetensors import safe_open

    state = model.state_dict()
    compared, differing = 0, []
    for file in sorted(Path(folder).glob("*.safetensors")):
        with safe_open(str(file), framework="pt") as handle:
            for key in handle.keys():  # noqa: SIM118 (safe_open is not a mapping)
                loaded = state.get(key)
                if loaded is None or loaded.is_meta or not loaded.is_floating_point() or \
                        tuple(loaded.shape) != tuple(handle.get_slice(key).get_shape()):
                    continue  # not in this model, or quantized on load (--bits): nothing to compare
                compared += 1
                saved = handle.get_tensor(key).to(loaded.dtype)
                if not torch.equal(loaded.detach().cpu(), saved):
                    differing.append(key)
    if differing:
        raise XtError(
            f"The loader of model '{spec.name}' ({spec.plugin or 'unknown plugin'}) did not load the weights saved "
            f"in '{folder}': {len(differing)} of {compared} tensors differ (first: '{differing[0]}'). Its load_model "
            f"must load from the source folder it is given; xt will not use untrained weights in their place.")


def load_saved_model(spec: Any, folder: str | os.PathLike, dtype: Any, **kwargs: Any) -> Any:
    """A full model xt saved (a run's result folder) through the spec's loader, checked by
    :func:`check_carries_weights`."""
    model = load_base(spec, str(folder), dtype, **kwargs)
    check_carries_weights(model, folder, spec)
    return model


def load_run_model(run_dir: str | os.PathLike, *, dtype: str = "fp32", merge: bool = True, **kwargs: Any) -> Any:
    """The model a finished run produced, in ``dtype`` (bf16 | fp16 | fp32).

    A LoRA / QLoRA run: its base through the model's loader (with the run's ``model_args``) and the
    adapter applied, merged into plain weights when ``merge`` (else a ``PeftModel``). A full run: the
    result folder through the model's loader, refused unless it carries the saved weights. ``kwargs``
    go to the loader (``from_pretrained`` keywords such as ``attn_implementation``).
    """
    run = describe_run(run_dir)
    spec, source = resolve_base(run.model, run.source)
    torch_dtype = torch_dtype_of(dtype)
    if not run.adapter:
        return load_saved_model(spec, run.final_dir, torch_dtype, **kwargs)
    base = load_base(spec, source, torch_dtype, run.model_args, **kwargs)
    return apply_adapter(base, run.final_dir, merge=merge)


def load_tokenizer_for(spec: Any, source: str | None, prefer: str | os.PathLike | None = None,
                       model_args: dict[str, Any] | None = None) -> Any:
    """The tokenizer saved next to an adapter / final model when there is one, else the spec's."""
    from xt.model.loading import ensure_pad_token, load_hf_tokenizer
    from xt.model.setup import load_tokenizer

    if prefer is not None and any((Path(prefer) / f).is_file() for f in TOKENIZER_FILES):
        try:
            with plugin_call(spec, "load_tokenizer"):
                tokenizer = (spec.load_tokenizer or load_hf_tokenizer)(str(prefer))
        except XtError:
            tokenizer = load_hf_tokenizer(str(prefer))
    else:
        return load_tokenizer(spec, source, model_args=model_args)
    ensure_pad_token(tokenizer)
    return tokenizer


def template_for(name: str | None, folders: tuple[Any, ...] = (), spec: Any = None) -> Any:
    """A TemplateSpec: ``name`` from the registry, else ``xt_template.json`` in one of ``folders``,
    else the model spec's default template, else ``default``. For ``auto`` (named or the model's
    default) a saved ``xt_template.json`` wins: it is the template the run read from the tokenizer."""
    from xt.auto_template import AutoTemplateSpec
    from xt.plugins import get_registry

    registry = get_registry()
    if name:
        try:
            registered = registry.get("templates", name)
        except XtError:
            saved = _saved_template(folders)
            if saved is not None and name in (saved.name, *saved.aliases):
                return saved  # the plugin that registered it is gone; the run kept a copy
            raise
        if not isinstance(registered, AutoTemplateSpec):
            return registered
    saved = _saved_template(folders)  # 'auto' too: the run kept the template it read from the tokenizer
    if saved is not None:
        return saved
    default = name or getattr(spec, "default_template", None) or "default"
    return registry.get("templates", default)


def _saved_template(folders: tuple[Any, ...]) -> Any:
    for folder in folders:
        if folder is None:
            continue
        path = Path(folder) / TEMPLATE_FILE
        if path.is_file():
            from xt.model.saving import template_from_json

            return template_from_json(json.loads(path.read_text()))
    return None


def _model_identity(name: str) -> str:
    """A registered model's canonical name (aliases resolved), else the absolute folder, else the hub id."""
    from xt.plugins import get_registry

    registry = get_registry()
    if name in registry.names("models"):
        return registry.get("models", name).name
    path = Path(name).expanduser()
    return str(path.resolve()) if path.is_dir() else name


def check_adapter_base(base: str, adapter_dir: str | os.PathLike) -> None:
    """Refuse an adapter whose run (``run.json`` beside or above it) trained on another base model."""
    from xt.run import is_run_dir, load_run

    adapter_dir = Path(adapter_dir)
    run_dir = next((d for d in (adapter_dir, adapter_dir.parent) if is_run_dir(d)), None)
    if run_dir is None:
        return
    trained = load_run(run_dir).model
    if _model_identity(trained) != _model_identity(base):
        raise XtError(f"The adapter in '{adapter_dir}' was trained on '{trained}' (see {run_dir / 'run.json'}), not "
                      f"'{base}'; pass '{trained}' as the base model.")


def apply_adapter(base: Any, adapter_dir: str | os.PathLike, *, merge: bool) -> Any:
    """Wrap ``base`` with the PEFT adapter in ``adapter_dir``; merged into plain weights when ``merge``."""
    from peft import PeftModel

    if not is_adapter_dir(adapter_dir):
        raise XtError(f"'{adapter_dir}' is not a PEFT adapter folder (no adapter_config.json); pass the final/ "
                      f"folder of a LoRA run or a run directory.")
    try:
        model = PeftModel.from_pretrained(base, str(adapter_dir), is_trainable=False)
    except (ValueError, KeyError, RuntimeError) as exc:
        raise XtError(f"The adapter in '{adapter_dir}' does not fit this base model ({type(exc).__name__}: "
                      f"{str(exc).splitlines()[0]}); pass the base it was trained on.") from exc
    return model.merge_and_unload() if merge else model


def check_output_dir(out_dir: str | os.PathLike, overwrite: bool, protect: tuple[Any, ...] = ()) -> Path:
    """Refuse an output folder xt does not own.

    Never the current folder, one above it, or a ``protect``ed folder (the run read from) or one above
    it; a non-empty folder only with ``overwrite`` and only when it holds a previous xt export.
    """
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise XtError(f"Output path '{out}' is a file; choose a folder path for --out.")
    target = out.resolve()
    for kept in (Path.cwd(), *(Path(p) for p in protect if p is not None)):
        kept = kept.resolve()
        if target == kept or target in kept.parents:
            raise XtError(f"--out '{out}' would replace '{kept}' (or a folder holding it); choose a new folder.")
    if out.is_dir() and any(out.iterdir()):
        if not overwrite:
            raise XtError(f"Output folder '{out}' exists and is not empty; choose a new folder or pass --overwrite.")
        if not (out / EXPORT_MARK).is_file():
            raise XtError(f"Output folder '{out}' is not empty and was not written by 'xt export' / 'xt merge'; "
                          f"refusing to replace it even with --overwrite. Choose a new folder.")
    return out


@contextmanager
def staged_output(out_dir: str | os.PathLike, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary sibling folder; on success it replaces ``out_dir`` in one rename.

    On any error the temporary folder is removed and ``out_dir`` is left as it was.
    """
    from xt.files import make_sibling, swap_in

    out = check_output_dir(out_dir, overwrite).absolute()
    tmp = make_sibling(out, "tmp")
    try:
        yield tmp
        (tmp / EXPORT_MARK).write_text(json.dumps({"written_by": "xt"}))
        swap_in(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def save_merged(model: Any, tokenizer: Any, template: Any, out: Path, base_generation_config: Any = None) -> None:
    """Safetensors weights + config + tokenizer + generation config + chat template into ``out``."""
    from xt.model.saving import write_tokenizer_files

    config = model.config
    config.use_cache = True
    if hasattr(config, "quantization_config"):
        delattr(config, "quantization_config")
    model.save_pretrained(str(out), safe_serialization=True)
    write_tokenizer_files(out, tokenizer, template, base_generation_config)


def merge_adapter(base: str, adapter_dir: str | os.PathLike, out_dir: str | os.PathLike, *, dtype: str = "fp32",
                  overwrite: bool = False, template: str | None = None, source: str | None = None,
                  trust_remote_code: bool = False, model_args: dict[str, Any] | None = None,
                  finish: Callable[[Path], Any] | None = None) -> Path:
    """``xt merge``: base (name, folder or hub id) + LoRA / QLoRA adapter -> merged full-precision folder.

    ``finish(folder)`` may add files (e.g. the model card) before the folder is moved into place."""
    adapter = Path(adapter_dir)
    from xt.run import is_run_dir

    if is_run_dir(adapter):
        run = describe_run(adapter)
        if not run.adapter:
            raise XtError(f"Run '{adapter}' trained the full model, there is no adapter to merge; use its "
                          f"final/ folder directly or 'xt export {adapter} --to hf'.")
        adapter, template = run.final_dir, template or run.template
        model_args = {**run.model_args, **(model_args or {})}
    if not adapter.is_dir():
        raise XtError(f"Adapter folder '{adapter}' does not exist; pass the final/ folder of a LoRA run.")
    if not is_adapter_dir(adapter):
        raise XtError(f"'{adapter}' is not a PEFT adapter folder (no adapter_config.json); pass the final/ "
                      f"folder of a LoRA run or a run directory.")
    check_output_dir(out_dir, overwrite, protect=(adapter,))
    check_adapter_base(base, adapter)
    spec, base_source = resolve_base(base, source)
    torch_dtype = torch_dtype_of(dtype)
    tmpl = template_for(template, (adapter,), spec)
    kwargs = {"trust_remote_code": True} if trust_remote_code else {}
    with staged_output(out_dir, overwrite) as tmp:
        tokenizer = load_tokenizer_for(spec, base_source, prefer=adapter, model_args=model_args)
        model = load_base(spec, base_source, torch_dtype, model_args, **kwargs)
        generation_config = getattr(model, "generation_config", None)
        merged = apply_adapter(model, adapter, merge=True).to(torch_dtype)
        save_merged(merged, tokenizer, tmpl, tmp, generation_config)
        if finish is not None:
            finish(tmp)
    return Path(out_dir)


def export_hf(run_dir: str | os.PathLike, out_dir: str | os.PathLike, **options: Any) -> Path:
    """The ``hf`` exporter: a finished run -> a merged Hugging Face folder (safetensors).

    Options: ``dtype`` (bf16 | fp16 | fp32, default fp32), ``overwrite`` (bool), ``license`` (the model
    card's license id, default ``other``). The folder is hub-ready: it gets a model card (README.md).
    """
    from functools import partial

    from xt.hub import write_model_card

    unknown = set(options) - {"dtype", "overwrite", "license"}
    if unknown:
        raise XtError(f"Unknown option(s) for exporter 'hf': {', '.join(sorted(unknown))}; known: dtype, overwrite, "
                      f"license.")
    card = partial(write_model_card, run_dir=Path(run_dir), adapter=False, model_id=str(out_dir),
                   license_id=str(options.get("license", "other")))
    dtype = str(options.get("dtype", "fp32"))
    overwrite = as_bool(options.get("overwrite", False), "overwrite")
    run = describe_run(run_dir)
    if run.adapter:
        return merge_adapter(run.model, run.final_dir, out_dir, dtype=dtype, overwrite=overwrite,
                             template=run.template, source=run.source, model_args=run.model_args, finish=card)
    check_output_dir(out_dir, overwrite)
    spec, _ = resolve_base(run.model, run.source)
    tmpl = template_for(run.template, (run.final_dir,), spec)
    with staged_output(out_dir, overwrite) as tmp:
        tokenizer = load_tokenizer_for(spec, str(run.final_dir), prefer=run.final_dir)
        model = load_run_model(run_dir, dtype=dtype)
        save_merged(model, tokenizer, tmpl, tmp, getattr(model, "generation_config", None))
        card(tmp)
    return Path(out_dir)


def as_bool(value: Any, key: str) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("1", "true", "yes", "on"):
        return True
    if text in ("0", "false", "no", "off", ""):
        return False
    raise XtError(f"Option '{key}' must be true or false, got '{value}'.")
