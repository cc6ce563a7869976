"""``TrainConfig``: every setting of ``xt train``, validated, with its YAML round trip.

Precedence, lowest first: field defaults, the model plugin's stage defaults (for keys the user did
not set), the YAML file, CLI flags, ``--set key=value`` overrides. The resolved config is written
to ``RUN/config.yaml``; ``xt train RUN/config.yaml`` repeats the run.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Union

from xt.errors import XtError


@dataclass
class TrainConfig:
    """All settings of a training run (see docs/training.md for each key)."""

    # ---- model: what to load and how to make it trainable
    model: str = ""
    model_path: str | None = None
    model_args: dict[str, Any] = field(default_factory=dict)
    trust_remote_code: bool = False
    template: str | None = None
    collator: str = "default"  # "default" uses the model spec's collator when it names one
    stage: str | None = None
    method: Literal["lora", "qlora", "full"] = "lora"
    load_in_8bit: bool = False
    lora_r: int = 8
    lora_alpha: int = 16
    lora_dropout: float = 0.05
    lora_targets: str | list[str] | None = None
    modules_to_save: list[str] = field(default_factory=list)
    train_patterns: list[str] = field(default_factory=list)
    freeze_patterns: list[str] = field(default_factory=list)
    dtype: Literal["auto", "bf16", "fp16", "fp32"] = "auto"
    attn: Literal["auto", "sdpa", "eager", "flash_attention_2"] = "auto"
    gradient_checkpointing: bool = False
    # ---- data: the dataset and exactly what the data pipeline takes (see data_options)
    dataset: str = ""
    data_files: list[str] = field(default_factory=list)
    image_folder: str | None = None  # where rows' images live (reaches plugins in their RunContext)
    max_length: int = 2048
    pack: bool | Literal["auto"] = True
    length_policy: Literal["truncate", "drop"] = "truncate"
    skip_bad_rows: bool = False
    num_proc: int = 1
    data_cache_dir: str | None = None
    use_data_cache: bool = True
    # ---- train: objective, batches, optimizer, schedule, DeepSpeed, seed
    objective: str | None = None  # a registered objective (xt list objectives); None: the dataset's, else sft
    objective_args: dict[str, Any] = field(default_factory=dict)  # its options, e.g. beta for dpo
    precompute_reference: bool = False  # reference values computed once before training, cached with the data
    micro_batch_size: int = 1
    grad_accum: int = 1
    group_by_length: bool = False
    epochs: float = 1.0
    max_steps: int | None = None
    lr: float = 2e-4
    weight_decay: float = 0.0
    warmup_ratio: float = 0.03
    warmup_steps: int | None = None
    min_lr_ratio: float = 0.0
    max_grad_norm: float = 1.0
    adam_beta1: float = 0.9
    adam_beta2: float = 0.999
    z_loss: float = 0.0
    zero_stage: Literal[0, 1, 2, 3] = 0
    offload: Literal["none", "cpu"] = "none"
    deepspeed_config: str | None = None
    seed: int = 42
    # ---- eval: validation loss and generations during training
    eval_steps: int = 0
    eval_split: str | None = None
    val_ratio: float = 0.0
    eval_prompts: list[str] = field(default_factory=list)
    eval_samples: int = 0
    eval_max_new_tokens: int = 64
    # ---- output: the run folder, checkpoints, logging
    output: str | None = None
    save_steps: int = 500
    save_total_limit: int = 2
    log_steps: int = 1
    report_to: list[str] = field(default_factory=lambda: ["tensorboard"])  # tensorboard | wandb | mlflow

    # ------------------------------------------------------------------ helpers
    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def save(self, path: str | Path) -> None:
        """Write the resolved config as YAML (atomically)."""
        import yaml

        path = Path(path)
        tmp = path.with_suffix(path.suffix + ".tmp")
        tmp.write_text(yaml.safe_dump(self.to_dict(), sort_keys=False, allow_unicode=True))
        tmp.replace(path)

    def section(self, name: str) -> dict[str, Any]:
        """The keys of one section (``model``, ``data``, ``train``, ``eval``, ``output``) and their values."""
        return {key: getattr(self, key) for key in SECTIONS[name]}

    def data_options(self, split: str = "train", *, rank: int = 0, world_size: int = 1,
                     attention_weight: float = 0.0, causal_share: float = 0.5) -> Any:
        """The data pipeline's options for ``split``: the data section, plus the batch size and seed.

        ``attention_weight`` and ``causal_share`` (the model's attention cost and the device's share
        of a causal square, for ``pack: auto``; xt.data.layout) are known only once a model is built
        and placed, so the caller passes them.
        """
        from xt.data.pipeline import DataOptions
        from xt.specs import RunContext

        context = RunContext(image_folder=self.image_folder, model_args=dict(self.model_args), rank=rank,
                             world_size=world_size, run_dir=self.output)
        own = {option: getattr(self, key) for key, option in DATA_OPTION_OF.items()}
        own["data_files"] = own["data_files"] or None
        return DataOptions(split=split, micro_batch_size=self.micro_batch_size, seed=self.seed,
                           attention_weight=attention_weight, causal_share=causal_share, context=context, **own)

    @property
    def run_name(self) -> str:
        model = Path(self.model.rstrip("/")).name or "model"
        dataset = Path(self.dataset.rstrip("/")).name or "data"
        return f"{model}-{dataset}-{self.method}"


FIELD_NAMES = [f.name for f in dataclasses.fields(TrainConfig)]


#: the config's sections -> their keys, in the order of the class body (YAML and --set stay flat)
SECTIONS: dict[str, tuple[str, ...]] = {
    "model": ("model", "model_path", "model_args", "trust_remote_code", "template", "collator", "stage", "method",
             "load_in_8bit", "lora_r", "lora_alpha", "lora_dropout", "lora_targets", "modules_to_save",
             "train_patterns", "freeze_patterns", "dtype", "attn", "gradient_checkpointing"),
    "data": ("dataset", "data_files", "image_folder", "max_length", "pack", "length_policy", "skip_bad_rows",
             "num_proc", "data_cache_dir", "use_data_cache"),
    "train": ("objective", "objective_args", "precompute_reference", "micro_batch_size", "grad_accum", "group_by_length", "epochs", "max_steps", "lr", "weight_decay",
             "warmup_ratio", "warmup_steps", "min_lr_ratio", "max_grad_norm", "adam_beta1", "adam_beta2",
             "z_loss", "zero_stage", "offload", "deepspeed_config", "seed"),
    "eval": ("eval_steps", "eval_split", "val_ratio", "eval_prompts", "eval_samples", "eval_max_new_tokens"),
    "output": ("output", "save_steps", "save_total_limit", "log_steps", "report_to"),
}

#: data-section keys -> the ``DataOptions`` field each sets (``dataset`` names the spec itself and
#: ``image_folder`` reaches plugins through the ``RunContext``)
DATA_OPTION_OF = {"data_files": "data_files", "max_length": "max_length", "pack": "pack",
                  "length_policy": "length_policy", "skip_bad_rows": "skip_bad_rows", "num_proc": "num_proc",
                  "data_cache_dir": "cache_dir", "use_data_cache": "use_cache"}

_HINTS = typing.get_type_hints(TrainConfig)


# Names other trainers use for xt's keys: a near miss of one of them suggests the xt key.
SYNONYMS = {"learning_rate": "lr", "num_train_epochs": "epochs", "output_dir": "output",
            "per_device_train_batch_size": "micro_batch_size", "gradient_accumulation_steps": "grad_accum",
            "max_seq_length": "max_length", "lora_rank": "lora_r"}


def _suggest(key: str, known: list[str]) -> str:
    aliases = {k: v for k, v in SYNONYMS.items() if v in known}
    near = difflib.get_close_matches(key, [*known, *aliases], n=1, cutoff=0.5)
    return f" Did you mean '{aliases.get(near[0], near[0])}'?" if near else ""


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is Literal:
        return " | ".join(repr(a) for a in typing.get_args(tp))
    if origin in (Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(tp))
    if origin is list:
        return "a list"
    if origin is dict:
        return "a mapping"
    if tp is type(None):
        return "null"
    return getattr(tp, "__name__", str(tp))


def _coerce(value: Any, tp: Any) -> tuple[bool, Any]:
    """(ok, converted value) for ``value`` checked against the annotation ``tp``."""
    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType):
        for arg in typing.get_args(tp):
            ok, out = _coerce(value, arg)
            if ok:
                return True, out
        return False, value
    if origin is Literal:
        for choice in typing.get_args(tp):
            if value == choice and type(value) is type(choice):
                return True, value
            if isinstance(choice, int) and isinstance(value, str) and value.strip().isdigit() and int(value) == choice:
                return True, choice
        return False, value
    if origin is list:
        (item_tp,) = typing.get_args(tp) or (Any,)
        if isinstance(value, (tuple, list)):
            items = []
            for v in value:
                ok, out = _coerce(v, item_tp)
                if not ok:
                    return False, value
                items.append(out)
            return True, items
        if isinstance(value, str) and item_tp is str:
            return True, [value]  # a single path / name where a list is expected
        return False, value
    if origin is dict:
        return (isinstance(value, dict), dict(value) if isinstance(value, dict) else value)
    if tp is Any:
        return True, value
    if tp is type(None):
        return value is None, value
    if tp is bool:
        if isinstance(value, bool):
            return True, value
        if isinstance(value, str) and value.lower() in ("true", "false", "yes", "no", "on", "off"):
            return True, value.lower() in ("true", "yes", "on")
        return False, value
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return True, value
        if isinstance(value, float) and value.is_integer():
            return True, int(value)
        if isinstance(value, str):
            try:
                return True, int(value)
            except ValueError:
                return False, value
        return False, value
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return True, float(value)
        if isinstance(value, str):
            try:
                return True, float(value)  # YAML reads '1e-4' as a string
            except ValueError:
                return False, value
        return False, value
    if tp is str:
        return isinstance(value, str), value
    return isinstance(value, tp), value


def _check_values(cfg: TrainConfig, where: str) -> None:
    """Cross-field checks that types alone cannot express."""
    def bad(msg: str) -> XtError:
        return XtError(f"{where}: {msg}")

    for name, value in vars(cfg).items():
        if isinstance(value, float) and not math.isfinite(value):
            raise bad(f"{name} must be a finite number, got {value}.")
    positive = ("micro_batch_size", "grad_accum", "max_length", "lora_r", "num_proc", "log_steps")
    for name in positive:
        if getattr(cfg, name) < 1:
            raise bad(f"{name} must be at least 1, got {getattr(cfg, name)}.")
    for name in ("lr", "weight_decay", "min_lr_ratio", "warmup_ratio", "val_ratio", "lora_dropout", "max_grad_norm",
                 "z_loss", "epochs", "save_steps", "save_total_limit", "eval_steps", "eval_samples"):
        if getattr(cfg, name) < 0:
            raise bad(f"{name} must not be negative, got {getattr(cfg, name)}.")
    if cfg.val_ratio >= 1 or cfg.warmup_ratio > 1 or cfg.min_lr_ratio > 1:
        raise bad("val_ratio must be below 1 and warmup_ratio / min_lr_ratio at most 1.")
    if cfg.max_steps is not None and cfg.max_steps < 1:
        raise bad(f"max_steps must be at least 1 (or null to use epochs), got {cfg.max_steps}.")
    if cfg.max_steps is None and cfg.epochs <= 0:
        raise bad("set epochs above 0 or max_steps.")
    if cfg.method == "qlora" and cfg.load_in_8bit:
        raise bad("method 'qlora' loads 4-bit weights; drop load_in_8bit (or use method 'lora' with load_in_8bit).")
    if cfg.method == "full" and cfg.load_in_8bit:
        raise bad("full fine-tuning cannot train 8-bit weights; use method 'lora' with load_in_8bit.")
    if isinstance(cfg.lora_targets, str) and cfg.lora_targets != "all-linear":
        cfg.lora_targets = [cfg.lora_targets]
    if cfg.offload == "cpu" and cfg.zero_stage == 0:
        raise bad("offload 'cpu' needs zero_stage 1, 2 or 3.")
    from xt.train.metrics import check_trackers

    try:
        check_trackers(cfg.report_to)
    except XtError as exc:
        raise bad(str(exc)) from None


def from_dict(values: dict[str, Any], where: str = "config") -> TrainConfig:
    """Build and validate a config; unknown keys and wrong types raise :class:`XtError`."""
    kwargs: dict[str, Any] = {}
    for key, value in values.items():
        if key not in _HINTS:
            raise XtError(f"{where}: unknown key '{key}'.{_suggest(key, FIELD_NAMES)} "
                          f"See docs/training.md for the list of keys.")
        ok, converted = _coerce(value, _HINTS[key])
        if not ok:
            raise XtError(f"{where}: '{key}' must be {_type_name(_HINTS[key])}, got {value!r}.")
        kwargs[key] = converted
    cfg = TrainConfig(**kwargs)
    _check_values(cfg, where)
    return cfg


def read_yaml(path: str | Path) -> dict[str, Any]:
    """A YAML config file as a dict (clear errors for missing or malformed files)."""
    import yaml

    path = Path(path)
    if not path.is_file():
        raise XtError(f"Config file '{path}' does not exist; pass a YAML file written by hand or a RUN/config.yaml.")
    try:
        data = yaml.load(path.read_text(), Loader=_unique_key_loader()) or {}
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f" line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        raise XtError(f"Config file '{path}' is not valid YAML at{where}: {exc.problem or exc.context}.") from exc
    except yaml.YAMLError as exc:
        raise XtError(f"Config file '{path}' is not valid YAML: {str(exc).splitlines()[0]}.") from exc
    if not isinstance(data, dict):
        raise XtError(f"Config file '{path}' must hold a mapping of keys to values, got {type(data).__name__}.")
    return data


def _unique_mapping(loader: Any, node: Any, deep: bool = False) -> dict[Any, Any]:
    """A YAML mapping that refuses a key given twice, naming both lines."""
    import yaml

    seen: dict[Any, int] = {}
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        line = key_node.start_mark.line + 1
        if key in seen:
            raise yaml.constructor.ConstructorError(
                None, None, f"key '{key}' is given twice (lines {seen[key]} and {line})", key_node.start_mark)
        seen[key] = line
    return yaml.SafeLoader.construct_mapping(loader, node, deep=deep)


def _unique_key_loader() -> type:
    import yaml

    class Loader(yaml.SafeLoader):
        pass

    Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _unique_mapping)
    return Loader


def parse_value(raw: str) -> Any:
    """A ``--set`` value as YAML reads it: ``1e-4`` -> float, ``true`` -> bool, ``[a, b]`` -> list."""
    import yaml

    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        return raw
    if isinstance(value, str) and re.fullmatch(r"[-+]?\d+(\.\d*)?[eE][-+]?\d+", value.strip()):
        return float(value)  # YAML 1.1 reads 1e-4 (no dot) as a string
    return value


def parse_key_values(pairs: list[str] | tuple[str, ...], option: str = "--set") -> list[tuple[str, Any]]:
    """``["k=v", ...]`` -> ``[(key, parsed value), ...]``; every command's ``--set`` goes through here."""
    out = []
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep or not key.strip():
            raise XtError(f"{option} '{pair}' is not key=value; write e.g. {option} lr=1e-4.")
        out.append((key.strip(), parse_value(raw)))
    return out


def parse_overrides(pairs: list[str] | tuple[str, ...]) -> dict[str, Any]:
    """``["lr=1e-4", "model_args.rope_theta=1e6"]`` -> a nested dict (values parsed as YAML scalars)."""
    out: dict[str, Any] = {}
    for key, value in parse_key_values(pairs):
        head, *rest = key.split(".")
        if head not in _HINTS:
            raise XtError(f"--set: unknown key '{head}'.{_suggest(head, FIELD_NAMES)}")
        if rest:
            if typing.get_origin(_HINTS[head]) is not dict:
                raise XtError(f"--set: '{head}' is not a mapping, so '{key}' cannot set a sub-key.")
            node = out.setdefault(head, {})
            if not isinstance(node, dict):
                raise XtError(f"--set: '{head}' is given both as a value and with sub-keys.")
            for part in rest[:-1]:
                node = node.setdefault(part, {})
            node[rest[-1]] = value
        else:
            out[head] = value
    return out


def deep_merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    """``base`` updated with ``over``; nested dicts are merged key by key (``over`` wins)."""
    merged = dict(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def stage_defaults(model: str, stage: str | None) -> dict[str, Any]:
    """Config defaults a model plugin supplies for ``stage`` (``ModelSpec.stages[stage]``)."""
    if not stage or not model:
        return {}
    from xt.plugins import get_registry

    try:
        spec = get_registry().resolve_model(model)
    except XtError:
        return {}
    stages = spec.stages
    if stage not in stages:
        known = ", ".join(sorted(stages)) or "none"
        raise XtError(f"Model '{model}' has no training stage '{stage}'.{_suggest(stage, sorted(stages))} "
                      f"Its stages: {known}.")
    return dict(stages[stage])


def resolve_config(config_file: str | Path | None = None, cli: dict[str, Any] | None = None,
                   overrides: list[str] | tuple[str, ...] = ()) -> TrainConfig:
    """YAML file, then CLI flags (``None`` values ignored), then ``--set`` overrides -> a TrainConfig."""
    values: dict[str, Any] = {}
    if config_file:
        values = deep_merge(values, read_yaml(config_file))
        where = str(config_file)
        for key in values:
            if key not in _HINTS:
                raise XtError(f"{where}: unknown key '{key}'.{_suggest(key, FIELD_NAMES)} "
                              f"See docs/training.md for the list of keys.")
    values = deep_merge(values, {k: v for k, v in (cli or {}).items() if v is not None and v != ()})
    values = deep_merge(values, parse_overrides(list(overrides)))
    stage = values.get("stage")
    defaults = stage_defaults(str(values.get("model", "")), stage if isinstance(stage, str) else None)
    values = deep_merge(defaults, values)  # the user's own keys win over the stage's defaults
    cfg = from_dict(values, where=str(config_file) if config_file else "config")
    if cfg.model_path and not Path(cfg.model_path).expanduser().is_dir():
        raise XtError(f"--model-path '{cfg.model_path}' is not a folder; pass the local folder holding the model's "
                      f"weights, or drop it to use the model's own source.")
    if not cfg.model:
        raise XtError("No model given; pass --model NAME (see 'xt list models') or set 'model' in the config file.")
    if not cfg.dataset:
        raise XtError("No dataset given; pass --dataset NAME (see 'xt list datasets') or set 'dataset' in the config file.")
    return cfg
