"""Hub sharing: the model card of an exported folder or a run's result, and ``xt push``.

``model_card`` writes README.md with YAML metadata (base_model, datasets, library_name, license, tags,
pipeline_tag), the training config and eval results of the run when present, and a snippet that loads
the folder with plain transformers (merged / full models) or peft (adapters). ``push`` uploads a folder
(or a run's ``final/`` with a card added) to the Hugging Face Hub with ``huggingface_hub`` in one commit.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

from xt.errors import XtError

CARD_FILE = "README.md"
MODEL_ID_LINE = re.compile(r'^model_id = ".*"  # (this folder|the hub repo).*$', re.MULTILINE)
HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def is_hub_id(name: str | None) -> bool:
    """``org/name`` that is not a local path (only those belong in the card's metadata)."""
    return bool(name) and bool(HUB_ID.match(name)) and not Path(name).exists()


def _dataset_source(name: str | None) -> str | None:
    if not name:
        return None
    if is_hub_id(name):
        return name
    try:
        from xt.plugins import get_registry

        return getattr(get_registry().get("datasets", name), "source", None)
    except XtError:
        return None  # the plugin that registered it is not installed here


def card_metadata(run_dir: Path | None, *, adapter: bool, license_id: str) -> dict[str, Any]:
    """The YAML front matter of the card."""
    from xt.run import load_run

    info = load_run(run_dir) if run_dir is not None else None
    meta: dict[str, Any] = {}
    base = (info.model_source or info.model) if info else None
    if is_hub_id(base):
        meta["base_model"] = base
    dataset = _dataset_source(info.dataset if info else None)
    if is_hub_id(dataset):
        meta["datasets"] = [dataset]
    meta["library_name"] = "peft" if adapter else "transformers"
    meta["license"] = license_id
    meta["pipeline_tag"] = "text-generation"
    meta["tags"] = ["xt", *([info.method] if info else [])]
    return meta


def loading_snippet(model_id: str, *, adapter: bool, remote_code: bool) -> str:
    """Python that loads the folder / repo and answers one chat message (no xt needed)."""
    extra = ", trust_remote_code=True" if remote_code else ""
    loader = ("from peft import AutoPeftModelForCausalLM\n" if adapter else
              "from transformers import AutoModelForCausalLM\n")
    model_line = (f"model = AutoPeftModelForCausalLM.from_pretrained(model_id{extra})" if adapter else
                  f"model = AutoModelForCausalLM.from_pretrained(model_id{extra})")
    return (f"{loader}from transformers import AutoTokenizer\n\n"
            f'model_id = "{model_id}"  # this folder, or the hub repo it was pushed to\n'
            f"tokenizer = AutoTokenizer.from_pretrained(model_id{extra})\n"
            f"{model_line}\n"
            'messages = [{"role": "user", "content": "Hello!"}]\n'
            "inputs = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors=\"pt\",\n"
            "                                       return_dict=True)\n"
            "output = model.generate(**inputs, max_new_tokens=64)\n"
            'print(tokenizer.decode(output[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True))\n')


def eval_section(run_dir: Path | None) -> str:
    from xt.run import EVAL_RESULTS_DIR

    path = run_dir / EVAL_RESULTS_DIR / "results.json" if run_dir is not None else None
    if path is None or not path.is_file():
        return ""
    results = json.loads(path.read_text()).get("results", {})
    lines = ["## Evaluation", "", "| task | metric | value |", "|---|---|---:|"]
    lines += [f"| {task} | {metric} | {value:.4f} |" for task, metrics in results.items()
              for metric, value in metrics.items()]
    return "\n".join(lines) + "\n\n"


def model_card(folder: Path, run_dir: Path | None, *, adapter: bool, model_id: str | None = None,
               license_id: str = "other") -> str:
    """README.md text for ``folder`` (a merged / full model or an adapter) trained by ``run_dir``."""
    import yaml

    from xt.run import load_run

    meta = card_metadata(run_dir, adapter=adapter, license_id=license_id)
    config_file = folder / "config.json"
    remote_code = config_file.is_file() and "auto_map" in json.loads(config_file.read_text())
    info = load_run(run_dir) if run_dir is not None else None
    model_id = model_id or str(folder)
    data = f" on `{info.dataset}`" if info and info.dataset else ""
    about = (f"Fine-tuned from `{info.model_source or info.model}`{data} with xt "
             f"({info.method}, chat template `{info.template}`).\n\n" if info else "")
    config_path = run_dir / "config.yaml" if run_dir is not None else None
    config = (f"## Training config\n\n```yaml\n{config_path.read_text()}```\n\n"
              if config_path is not None and config_path.is_file() else "")
    kind = "a LoRA adapter (load it with peft)" if adapter else "a full model in safetensors"
    snippet = loading_snippet(model_id, adapter=adapter, remote_code=remote_code)
    return (f"---\n{yaml.safe_dump(meta, sort_keys=False)}---\n\n# {Path(model_id).name}\n\n{about}"
            f"This repository holds {kind}; its tokenizer carries the chat template used in training and "
            f"`generation_config.json` its stop tokens.\n\n## Load it\n\n```python\n{snippet}```\n\n"
            f"{eval_section(run_dir)}{config}")


def write_model_card(folder: Path, run_dir: Path | None, *, adapter: bool, model_id: str | None = None,
                     license_id: str = "other") -> Path:
    """Write README.md into ``folder``; ``model_id`` is the path or repo the loading snippet names."""
    path = folder / CARD_FILE
    path.write_text(model_card(folder, run_dir, adapter=adapter, model_id=model_id, license_id=license_id))
    return path


def upload_operations(target: str | os.PathLike, repo: str) -> list[Any]:
    """``CommitOperationAdd`` for every file to upload: a folder as it is (its card's ``model_id`` set to
    ``repo``; a card is written when it has none), or a run's ``final/`` with xt's model card (replacing
    the placeholder card peft saves next to an adapter)."""
    from huggingface_hub import CommitOperationAdd

    from xt.run import is_run_dir, load_run

    target = Path(target)
    run_dir = target if is_run_dir(target) else None
    if run_dir is not None:
        info = load_run(run_dir)
        if not info.final_dir:
            raise XtError(f"Run '{run_dir}' has no final result yet (status '{info.status}'); push it when "
                          f"'xt train' has finished.")
        folder = run_dir / info.final_dir
    elif target.is_dir():
        folder, info = target, None
    else:
        raise XtError(f"'{target}' is neither a run directory nor a folder; pass a run or the --out folder of "
                      f"'xt export --to hf'.")
    files = sorted(p for p in folder.rglob("*") if p.is_file() and not any(
        part.startswith(".") for part in p.relative_to(folder).parts))
    operations = [CommitOperationAdd(path_in_repo=p.relative_to(folder).as_posix(), path_or_fileobj=str(p))
                  for p in files if p.name != CARD_FILE or p.parent != folder]
    card = folder / CARD_FILE
    if card.is_file() and run_dir is None:
        text = MODEL_ID_LINE.sub(f'model_id = "{repo}"  # the hub repo, or a local copy of it', card.read_text())
    else:
        adapter = (folder / "adapter_config.json").is_file()
        text = model_card(folder, run_dir, adapter=adapter, model_id=repo)
    operations.append(CommitOperationAdd(path_in_repo=CARD_FILE, path_or_fileobj=text.encode()))
    return operations


def push(target: str | os.PathLike, repo: str, *, private: bool = False) -> str:
    """Upload to ``repo`` (token from ``HF_TOKEN`` or ``hf auth login``; ``HF_ENDPOINT`` is honoured)."""
    if not HUB_ID.match(repo):
        raise XtError(f"--repo '{repo}' is not ORG/NAME; write e.g. --repo my-org/my-model.")
    operations = upload_operations(target, repo)
    from huggingface_hub import HfApi, get_token

    if get_token() is None:
        raise XtError("No Hugging Face token found; run 'hf auth login' or set HF_TOKEN, then push again.")
    api = HfApi()
    try:
        api.create_repo(repo, private=private, exist_ok=True)
        commit = api.create_commit(repo, operations=operations, commit_message="Upload with xt push")
    except Exception as exc:  # noqa: BLE001 - network, auth and hub errors all end in one sentence
        raise XtError(f"Pushing to '{repo}' at {api.endpoint} failed: {hub_error(exc)}.") from exc
    return commit.commit_url


def hub_error(exc: BaseException) -> str:
    """One readable clause for a failed hub request."""
    status = getattr(getattr(exc, "response", None), "status_code", None)
    if status in (401, 403):
        return f"the hub refused the token (HTTP {status}); run 'hf auth login' with a token that can write to it"
    if status is not None:
        return f"the hub answered HTTP {status}"
    first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    if unreachable(exc):
        return f"it could not be reached ({first}); check the network or HF_ENDPOINT"
    return f"{type(exc).__name__}: {first}"


def unreachable(exc: BaseException | None) -> bool:
    """A connection or timeout error anywhere in the exception's chain."""
    while exc is not None:
        if isinstance(exc, (ConnectionError, TimeoutError)) or any(
                word in type(exc).__name__ for word in ("Connect", "Timeout", "NetworkError")):
            return True
        exc = exc.__cause__ or exc.__context__
    return False
