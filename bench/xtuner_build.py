"""XTuner 0.2.0's ``process_hf_dataset`` on bench/data.py's rows, timed: the XTuner baseline of bench/data.py.

Run by the bench-only XTuner interpreter (``make bench-xtuner`` creates it), not by xt's .venv:

    .venv-xtuner/bin/python bench/xtuner_build.py --rows ROWS.json --tokenizer DIR [--max-length 2048]
        [--repeats 1] [--pack]
    .venv-xtuner/bin/python bench/xtuner_build.py --versions

The build is what an XTuner alpaca config asks for: ``process_hf_dataset`` loads the rows through
``load_dataset("json")`` itself, maps them with ``alpaca_map_fn`` and ``template_map_fn_factory`` with
``PROMPT_TEMPLATE.default`` (``<|User|>:{input}\\n<|Bot|>:``, the XTuner template nearest to xt's ``default``,
``<|user|>\\n{content}\\n<|assistant|>\\n``; both add BOS and EOS), tokenizes with ``AutoTokenizer`` (the fast
Rust tokenizer, as bench/data.py's), truncates to the same ``max_length``, with ``pack_to_max_length=False``
(and, with ``--pack``, separately, ``True``), no shuffle, ``map_num_proc=1``, and a fresh cache folder with
datasets' caching off, so nothing is reused. Only the build is timed (imports and the tokenizer load are
not); ``bound`` is bench/data.py's tokenizer-only bound (the bare batched tokenizer call on every prompt
and reply) with this interpreter's tokenizers. One JSON line per repeat.

``xtuner.dataset``'s package ``__init__`` is not run: it imports XTuner's multimodal datasets, and InternVL's
needs torchvision, whose registry wheels are CUDA builds that do not load beside the CPU torch.
``process_hf_dataset`` and the map functions are XTuner's own, imported from their modules.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import platform
import sys
import tempfile
import time
from importlib.metadata import version
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from data import bound  # noqa: E402

TEMPLATE = "PROMPT_TEMPLATE.default"
VERSIONED = ("xtuner", "transformers", "tokenizers", "datasets", "torch")
HOW_TO_GET_XTUNER = "build its environment with `make bench-xtuner` and run this script with .venv-xtuner/bin/python"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", help="the JSON list of alpaca rows bench/data.py writes")
    parser.add_argument("--tokenizer", help="the tokenizer folder (bench/data.py's is shared/tokenizers/llama2)")
    parser.add_argument("--max-length", type=int, default=2048)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--pack", action="store_true", help="also build with pack_to_max_length=True")
    parser.add_argument("--versions", action="store_true", help="print the package versions as JSON and exit")
    args = parser.parse_args(argv)
    if args.versions:
        return args
    if not args.rows or not Path(args.rows).is_file():
        sys.exit(f"xtuner_build.py: rows file {args.rows} not found; pass --rows with the JSON list of "
                 "alpaca rows bench/data.py writes")
    if not args.tokenizer or not Path(args.tokenizer).is_dir():
        sys.exit(f"xtuner_build.py: tokenizer folder {args.tokenizer} not found; pass --tokenizer "
                 "(bench/data.py uses shared/tokenizers/llama2)")
    if args.max_length < 1 or args.repeats < 1:
        sys.exit(f"xtuner_build.py: --max-length ({args.max_length}) and --repeats ({args.repeats}) must be "
                 "at least 1")
    return args


def import_xtuner() -> dict:
    """XTuner's dataset functions, or exit with one sentence saying it is not importable here."""
    try:
        spec = importlib.util.find_spec("xtuner.dataset")
        if spec is None:
            raise ImportError("no module named 'xtuner'")
        sys.modules.setdefault("xtuner.dataset", importlib.util.module_from_spec(spec))  # skip its __init__
        from datasets import disable_caching, disable_progress_bars, load_dataset
        from xtuner.dataset.huggingface import process_hf_dataset
        from xtuner.dataset.map_fns import alpaca_map_fn, template_map_fn_factory
        from xtuner.utils import PROMPT_TEMPLATE
    except ImportError as exc:
        sys.exit(f"xtuner_build.py: xtuner is not importable by {sys.executable} ({exc}); {HOW_TO_GET_XTUNER}.")
    disable_caching()
    disable_progress_bars()
    return {"process_hf_dataset": process_hf_dataset, "load_dataset": load_dataset, "alpaca_map_fn": alpaca_map_fn,
            "template_map_fn": {"type": template_map_fn_factory, "template": PROMPT_TEMPLATE.default}}


def versions() -> dict:
    return {"python": platform.python_version(), **{name: version(name) for name in VERSIONED}}


def build(xtuner: dict, rows_path: str, tokenizer, max_length: int, pack: bool) -> tuple[float, dict]:
    """Seconds of one ``process_hf_dataset`` call from the JSON file, and its sample and token counts."""
    with tempfile.TemporaryDirectory() as cache_dir:
        source = {"type": xtuner["load_dataset"], "path": "json", "data_files": {"train": rows_path},
                  "cache_dir": cache_dir}
        start = time.perf_counter()
        dataset = xtuner["process_hf_dataset"](
            dataset=source, tokenizer=tokenizer, max_length=max_length, dataset_map_fn=xtuner["alpaca_map_fn"],
            template_map_fn=xtuner["template_map_fn"], remove_unused_columns=True, shuffle_before_pack=False,
            pack_to_max_length=pack, map_num_proc=1)
        seconds = time.perf_counter() - start
        return seconds, {"samples": len(dataset), "tokens": sum(dataset["length"])}


def timed_bound(rows: list[dict], tokenizer) -> tuple[float, int]:
    start = time.perf_counter()
    tokens = bound(rows, tokenizer)
    return time.perf_counter() - start, tokens


def record(repeat: int, rows: int, max_length: int, build_s: float, counts: dict, bound_s: float, bound_tokens: int,
           packed: tuple[float, dict] | None, package_versions: dict) -> dict:
    """The JSON line of one repeat (what bench/data.py reads)."""
    return {"bench": "xtuner_build", "repeat": repeat, "template": TEMPLATE, "versions": package_versions,
            "rows": rows, "max_length": max_length, "build_s": build_s, **counts,
            "bound_s": bound_s, "bound_tokens": bound_tokens,
            "packed": None if packed is None else {"build_s": packed[0], **packed[1]}}


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    xtuner = import_xtuner()
    if args.versions:
        print(json.dumps(versions()))
        return
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(args.tokenizer, padding_side="right")
    rows = json.loads(Path(args.rows).read_text(encoding="utf-8"))
    package_versions = versions()
    for repeat in range(1, args.repeats + 1):
        bound_s, bound_tokens = timed_bound(rows, tokenizer)
        build_s, counts = build(xtuner, args.rows, tokenizer, args.max_length, pack=False)
        packed = build(xtuner, args.rows, tokenizer, args.max_length, pack=True) if args.pack else None
        print(json.dumps(record(repeat, len(rows), args.max_length, build_s, counts, bound_s, bound_tokens, packed,
                                package_versions)), flush=True)


if __name__ == "__main__":
    main()
