"""One-line refusals of bad models and data, through the real ``xt`` in a subprocess: token ids past
the model's vocabulary, a truncated JPEG, vision encoders trained on their own, unsafe ``.bin`` pickles.

Each command fails before training: non-zero exit, no traceback, a sentence naming the problem, and
nothing written or changed on disk.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
from test_run_safety import (  # noqa: E402
    DRIVER,
    TRAIN,
    Payload,
    assert_one_line_error,
    checksums,
    signal_rank_one,
    xt_run,
)
from test_train_support import driver_env, llama_config, make_model_dir  # noqa: E402

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def cli(tmp_path_factory):
    """(folder, command prefix, environment) of the test driver that registers the tiny Llama."""
    folder = tmp_path_factory.mktemp("errors")
    model_dir = make_model_dir(folder / "tiny-llama")
    driver = folder / "xt_driver.py"
    driver.write_text(DRIVER.format(tests=str(Path(__file__).resolve().parent), model_dir=str(model_dir)))
    return folder, [sys.executable, str(driver)], driver_env(folder / "cache")


def small_vocab_model(folder: Path, vocab_size: int) -> Path:
    """The tiny tokenizer saved beside a Llama with only ``vocab_size`` embedding rows."""
    import torch
    from transformers import LlamaForCausalLM
    from xt.tokenizers import tiny_tokenizer

    torch.manual_seed(0)
    LlamaForCausalLM(llama_config(vocab_size)).save_pretrained(str(folder), safe_serialization=True)
    tiny_tokenizer().save_pretrained(str(folder))
    return folder


def test_token_ids_past_the_embedding_rows_are_refused_before_training(cli):
    folder, xt, env = cli
    model = small_vocab_model(folder / "small-vocab", vocab_size=12)
    before = checksums(model)
    out = folder / "vocab-run"
    result = xt_run(xt, env, *TRAIN, "--model-path", model, "--output", out)
    assert_one_line_error(result, "but the model has only 12 embedding rows (ids 0-11)", "the model's own tokenizer")
    largest = int(re.search(r"The data holds token id (\d+)", result.stderr).group(1))
    assert largest >= 12
    assert not out.exists() and not list(folder.glob(".run.*")) and checksums(model) == before


def test_check_token_ids_reads_the_built_samples_not_the_tokenizer_length():
    """Llama-2's ``<pad>`` is id 32000 of 32000 rows: legitimate, as the data never holds it."""
    from torch import nn
    from xt.data.dataset import ProcessedDataset
    from xt.errors import XtError
    from xt.model.setup import check_token_ids
    from xt.train.evaluation import RowSubset

    class Embedded(nn.Module):
        def __init__(self, rows: int) -> None:
            super().__init__()
            self.embed = nn.Embedding(rows, 4)

        def get_input_embeddings(self) -> nn.Module:
            return self.embed

    def rows(*samples: list[int]) -> ProcessedDataset:
        built = [{"input_ids": ids, "labels": ids} for ids in samples]
        return ProcessedDataset.from_samples(built, [[i] for i in range(len(built))], {"packed": False})

    check_token_ids(Embedded(8), rows([1, 7, 3], [-200, 2]), None)  # ids up to rows - 1, a negative placeholder
    with pytest.raises(XtError, match=r"token id 9, but the model has only 8 embedding rows \(ids 0-7\)"):
        check_token_ids(Embedded(8), rows([1, 2]), rows([5], [9, 0]))  # found in the validation rows too
    with pytest.raises(XtError, match="token id 8,"):
        check_token_ids(Embedded(8), RowSubset(rows([1], [8, 2]), [0]))  # a val_ratio split checks its base


def test_a_truncated_jpeg_is_a_bad_row_and_skipped_with_skip_bad_rows(cli, images, tmp_path):
    folder, xt, env = cli
    pictures = tmp_path / "pictures"
    pictures.mkdir()
    whole = images["dog"].read_bytes()
    (pictures / "dog.jpg").write_bytes(whole)
    (pictures / "cut.jpg").write_bytes(whole[:len(whole) // 2])
    rows = [{"id": f"row-{i}", "image": "cut.jpg" if i == 3 else "dog.jpg",
             "conversations": [{"from": "human", "value": "<image>\nWhat is it?"}, {"from": "gpt", "value": "A dog."}]}
            for i in range(6)]
    data = tmp_path / "rows.json"
    data.write_text(json.dumps(rows))
    before = checksums(pictures)
    args = ["train", "--model", "llava-tiny", "--dataset", "llava", "--data-files", data, "--image-folder", pictures,
            "--set", "max_steps=1", "--set", "micro_batch_size=1", "--set", "use_data_cache=false", "--set", "pack=false"]
    failed = xt_run(xt, env, *args, "--output", tmp_path / "bad")
    assert_one_line_error(failed, "row-3", f"image '{pictures / 'cut.jpg'}' is not a readable image", "1 of 6 rows")
    assert not (tmp_path / "bad").exists()
    done = xt_run(xt, env, *args, "--set", "skip_bad_rows=true", "--output", tmp_path / "good")
    assert done.returncode == 0, done.stderr[-3000:]
    assert "skipped 1 bad rows" in done.stderr and " 5 rows," in done.stderr, done.stderr[-3000:]
    assert checksums(pictures) == before


@pytest.mark.parametrize(("method", "needles"), [
    ("full", ["'clip-tiny' is a vision encoder and is not trained on its own",
              "--set model_args.vision_encoder=clip-tiny"]),
    ("qlora", ["QLoRA of 'clip-tiny' is refused: it is a vision encoder", "loads the LLM in 4 bit"]),
])
def test_vision_encoders_are_not_trained_on_their_own(cli, method, needles):
    folder, xt, env = cli
    out = folder / f"encoder-{method}"
    result = xt_run(xt, env, "train", "--model", "clip-tiny", "--dataset", "tiny-sums", "--method", method,
                    "--output", out)
    assert_one_line_error(result, *needles)
    assert not out.exists()


def test_chat_refuses_a_bin_pickle_that_fails_the_safe_load(cli):
    import torch
    from safetensors.torch import load_file

    folder, xt, env = cli
    model = folder / "pickled"
    model.mkdir()
    source = folder / "tiny-llama"
    for name in ("config.json", "tokenizer.json", "tokenizer_config.json"):
        (model / name).write_bytes((source / name).read_bytes())
    weights = load_file(source / "model.safetensors")
    marker = folder / "payload-ran"
    torch.save({**weights, "extra": Payload(marker)}, model / "pytorch_model.bin")
    before = checksums(model)
    result = xt_run(xt, env, "chat", model, "--prompt", "hi")
    assert_one_line_error(result, f"Refused to load '{model / 'pytorch_model.bin'}' as unsafe",
                          "convert it to safetensors")
    assert "UnpicklingError" not in result.stderr
    assert not marker.exists() and checksums(model) == before


def test_a_stopped_rank_ends_a_two_process_run_within_the_collective_timeout(cli):
    import signal

    folder, xt, env = cli
    out, log_path = folder / "stopped", folder / "stopped.log"
    returncode, took = signal_rank_one(xt, env, out, log_path, signal.SIGSTOP, collective_timeout=15)
    stderr = log_path.read_text()
    assert returncode != 0 and took < 90, (took, stderr[-3000:])
    assert "Traceback" not in stderr, stderr[-3000:]
    assert "[rank 0] no answer from the other processes within XT_COLLECTIVE_TIMEOUT=15 s" in stderr, stderr[-3000:]
    assert "process rank 0 stopped first" in stderr, stderr[-3000:]
    info = json.loads((out / "run.json").read_text())
    assert info["status"] == "failed" and "Timed out" in info["extra"]["error"], info
