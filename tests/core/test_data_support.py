"""Helpers shared by the data pipeline tests (real tokenizers from shared/, a test plugin)."""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path
from typing import Any

import pytest
from xt import hookimpl
from xt.specs import DatasetSpec, ModelSpec, RowError

SHARED = Path(os.environ.get("XT_SHARED", Path(__file__).resolve().parents[2].parent / "shared")).resolve()
TEST_MODEL = "xt-test-llama2"
TEST_DATASET = "xt-test-alpaca"


def shared_file(*parts: str) -> Path:
    path = SHARED.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"{path} is not available (set XT_SHARED to the shared/ folder)")
    return path


@lru_cache(maxsize=1)
def llama_tokenizer() -> Any:
    from transformers import LlamaTokenizer

    return LlamaTokenizer.from_pretrained(str(shared_file("tokenizers", "llama2")))


@lru_cache(maxsize=1)
def gpt2_tokenizer() -> Any:
    from transformers import PreTrainedTokenizerFast

    return PreTrainedTokenizerFast(tokenizer_file=str(shared_file("tokenizers", "gpt2", "tokenizer.json")),
                                   eos_token="<|endoftext|>", bos_token="<|endoftext|>")


def alpaca_map(row: dict[str, Any]) -> dict[str, Any]:
    """Alpaca row -> conversation (instruction + input -> user, output -> assistant)."""
    instruction, extra, output = row["instruction"], row.get("input", ""), row["output"]
    if not isinstance(instruction, str) or not isinstance(output, str) or not isinstance(extra, str):
        raise RowError("instruction, input and output must be strings")
    prompt = instruction + ("\n" + extra if extra else "")
    return {"messages": [{"role": "user", "content": prompt}, {"role": "assistant", "content": output}]}


def alpaca_spec(files: list[str] | None = None, **kw: Any) -> DatasetSpec:
    files = files if files is not None else [str(shared_file("data", "alpaca", "alpaca_en_demo.json"))]
    return DatasetSpec(name=TEST_DATASET, map_row=alpaca_map, data_files=files, **kw)


class DataTestPlugin:
    """Registers a model whose tokenizer is shared/tokenizers/llama2, and the alpaca test dataset."""

    @hookimpl
    def model_loader(self, register: Any) -> None:
        register(ModelSpec(name=TEST_MODEL, source="llama2", load_tokenizer=lambda source: llama_tokenizer()))

    @hookimpl
    def dataset_map(self, register: Any) -> None:
        register(alpaca_spec())


def register_test_plugin() -> None:
    from xt.plugins import get_plugin_manager

    get_plugin_manager().register(DataTestPlugin(), name="xt-test-data")
