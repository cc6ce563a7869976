"""Helpers for the data pipeline tests: the alpaca map and a test plugin (tokenizers come from conftest fixtures)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from xt import hookimpl
from xt.specs import DatasetSpec, ModelSpec, RowError

TEST_MODEL = "xt-test-llama2"
TEST_DATASET = "xt-test-alpaca"


def alpaca_map(row: dict[str, Any]) -> dict[str, Any]:
    """Alpaca row -> conversation (instruction + input -> user, output -> assistant)."""
    instruction, extra, output = row["instruction"], row.get("input", ""), row["output"]
    if not isinstance(instruction, str) or not isinstance(output, str) or not isinstance(extra, str):
        raise RowError("instruction, input and output must be strings")
    prompt = instruction + ("\n" + extra if extra else "")
    return {"messages": [{"role": "user", "content": prompt}, {"role": "assistant", "content": output}]}


def alpaca_spec(files: Sequence[str | Path] = (), **kw: Any) -> DatasetSpec:
    return DatasetSpec(name=TEST_DATASET, map_row=alpaca_map, data_files=[str(f) for f in files], **kw)


class DataTestPlugin:
    """Registers a model with the given tokenizer, and the alpaca test dataset reading ``data_file``."""

    def __init__(self, tokenizer: Any, data_file: Path) -> None:
        self.tokenizer, self.data_file = tokenizer, data_file

    @hookimpl
    def model_loader(self, register: Any) -> None:
        register(ModelSpec(name=TEST_MODEL, source="llama2", load_tokenizer=lambda source: self.tokenizer))

    @hookimpl
    def dataset_map(self, register: Any) -> None:
        register(alpaca_spec([self.data_file]))


def register_test_plugin(tokenizer: Any, data_file: Path) -> None:
    from xt.plugins import get_plugin_manager

    get_plugin_manager().register(DataTestPlugin(tokenizer, data_file), name="xt-test-data")
