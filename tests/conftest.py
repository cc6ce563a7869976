"""Shared test fixtures. A bare clone runs the whole suite: tests build the assets they need.

Session fixtures (each built once per test run under pytest's temporary folder; see tests/assets.py):

    sp_tokenizer_dir   folder with a Llama-2 style SentencePiece ``tokenizer.model`` + LlamaTokenizer files
    sp_tokenizer       that folder loaded with transformers' LlamaTokenizer (unk 0, bos 1, eos 2, ``<pad>``)
    bpe_tokenizer_file a GPT-2 style byte-level BPE ``tokenizer.json`` (``<|endoftext|>`` as BOS and EOS)
    bpe_tokenizer      that file loaded as a PreTrainedTokenizerFast
    alpaca_file        a JSON file of 300 alpaca-format rows (instruction, input, output)
    images             {"dog": Path, "two_cats": Path}: two JPEG photos drawn with PIL, in one folder
    llava_file         a LLaVA-Instruct style JSON file of 8 rows naming those images (row i shows image i % 2)
    openai_llava_files {1: Path, 2: Path}: XTuner OpenAI-style JSONL rows with 1 or 2 images per row
    baichuan_checkpoint(variant)  a function: "tiny-7b-rope" | "tiny-13b-alibi" -> a folder holding a tiny
                       random Baichuan2 in the official Hugging Face layout (config, generation config,
                       model.safetensors); treat it as read-only (copy it to change it)

Only a test of one specific real file reads ``../shared`` (or $XT_SHARED): call
``shared_path("tokenizers", "llama2", "tokenizer.model")`` from ``tests.conftest``. When the file is
missing the test skips with a reason that starts with ``missing shared file:`` and names it, and the end
of the run counts those skips (a full run, as in CI, shows 0).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path

import pytest

from tests import assets

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("XT_SHARED", ROOT.parent / "shared")).resolve()
MISSING_SHARED = "missing shared file:"


def shared_path(*parts: str) -> Path:
    """The real file or folder ``shared/<parts>``; skips the calling test, naming it, when it is absent."""
    path = SHARED.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"{MISSING_SHARED} {path} (set XT_SHARED to the shared/ folder)")
    return path


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_terminal_summary(terminalreporter):
    """After the short summary, say how many tests skipped for a missing shared file, so that a partial
    run is not taken for a full one."""
    result = yield
    skipped = [r for r in terminalreporter.stats.get("skipped", [])
               if isinstance(r.longrepr, tuple) and MISSING_SHARED in str(r.longrepr[2])]
    for report in skipped:
        terminalreporter.write_line(f"  {report.nodeid}: {str(report.longrepr[2]).split(MISSING_SHARED)[1].strip()}")
    tests = "test" if len(skipped) == 1 else "tests"
    terminalreporter.write_line(f"{len(skipped)} {tests} skipped for a missing shared file (shared folder: {SHARED})")
    return result


@pytest.fixture(autouse=True)
def _fresh_plugins():
    """Every test starts and ends with a freshly loaded plugin manager."""
    from xt import plugins

    plugins.reset()
    yield
    plugins.reset()


# ---------------------------------------------------------------------------------------------- built assets


@pytest.fixture(scope="session")
def sp_tokenizer_dir(tmp_path_factory) -> Path:
    return assets.train_sentencepiece(tmp_path_factory.mktemp("sp-tokenizer"))


@pytest.fixture(scope="session")
def sp_tokenizer(sp_tokenizer_dir):
    return assets.load_sentencepiece(sp_tokenizer_dir)


@pytest.fixture(scope="session")
def bpe_tokenizer_file(tmp_path_factory) -> Path:
    return assets.train_bpe(tmp_path_factory.mktemp("bpe-tokenizer") / "tokenizer.json")


@pytest.fixture(scope="session")
def bpe_tokenizer(bpe_tokenizer_file):
    return assets.load_bpe(bpe_tokenizer_file)


def _write_json(path: Path, rows: list) -> Path:
    path.write_text(json.dumps(rows, ensure_ascii=False, indent=1))
    return path


@pytest.fixture(scope="session")
def alpaca_file(tmp_path_factory) -> Path:
    return _write_json(tmp_path_factory.mktemp("alpaca") / "alpaca.json", assets.alpaca_rows())


@pytest.fixture(scope="session")
def images(tmp_path_factory) -> dict[str, Path]:
    return assets.draw_images(tmp_path_factory.mktemp("images"))


@pytest.fixture(scope="session")
def llava_file(tmp_path_factory, images) -> Path:
    rows = assets.llava_rows([path.name for path in images.values()])
    return _write_json(tmp_path_factory.mktemp("llava") / "llava.json", rows)


@pytest.fixture(scope="session")
def openai_llava_files(tmp_path_factory, images) -> dict[int, Path]:
    folder = tmp_path_factory.mktemp("llava-openai")
    files = {}
    for count in (1, 2):
        files[count] = folder / f"{count}-image.jsonl"
        files[count].write_text("".join(json.dumps(row, ensure_ascii=False) + "\n"
                                        for row in assets.openai_rows(images, count)))
    return files


@pytest.fixture(scope="session")
def baichuan_checkpoint(tmp_path_factory) -> Callable[[str], Path]:
    folders: dict[str, Path] = {}

    def checkpoint(variant: str) -> Path:
        if variant not in folders:
            folders[variant] = assets.save_baichuan_checkpoint(tmp_path_factory.mktemp(variant), variant)
        return folders[variant]

    return checkpoint
