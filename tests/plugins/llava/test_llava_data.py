"""LLaVA rows -> conversations -> samples -> batches: formats, image tokens, bad input, the sampler."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from xt.errors import XtError


def _processor():
    from xt.plugins import get_registry

    return get_registry().get("models", "llava-tiny").load_tokenizer(None)


def _build(rows: list[dict], folder: Path | None, tmp_path: Path, **options):
    from xt.data import DataOptions, build_dataset
    from xt.plugins import get_registry
    from xt_llava.data import llava_dataset

    data = tmp_path / "rows.json"
    data.write_text(json.dumps(rows))
    spec = llava_dataset("test-llava", [str(data)], image_folder=str(folder) if folder else None)
    return build_dataset(spec, get_registry().get("templates", "default"), _processor(),
                         DataOptions(data_files=[str(data)], max_length=128, pack=False, use_cache=False, **options))


def _row(rid: str, image: str | None, question: str = "What is shown?\n<image>") -> dict:
    row = {"id": rid, "conversations": [{"from": "human", "value": question}, {"from": "gpt", "value": "A dog."}]}
    if image is not None:
        row["image"] = image
    return row


@pytest.fixture
def folder(images) -> Path:
    """The folder of the two drawn photos (conftest's ``images``)."""
    return images["dog"].parent


@pytest.fixture
def dog(images) -> str:
    return images["dog"].name


def test_llava_json_first_turn_is_normalised(folder, dog):
    from xt_llava.data import map_llava_row

    conv = map_llava_row(_row("r1", dog, "Look at this  <image>  please"), image_folder=str(folder))
    assert conv["messages"][0] == {"role": "user", "content": "<image>\nLook at this    please"}
    assert conv["images"] == [str(folder / dog)]
    conv = map_llava_row(_row("r2", dog, "No placeholder here"), image_folder=str(folder))
    assert conv["messages"][0]["content"] == "<image>\nNo placeholder here"


def test_openai_style_rows_map(folder, openai_llava_files):
    from xt_llava.data import map_llava_row

    for n_images, path in openai_llava_files.items():
        lines = path.read_text().splitlines()
        for line in lines:
            row = json.loads(line)
            conv = map_llava_row(row, image_folder=str(folder))  # 'resource/<name>' found by its file name
            placeholders = sum(m["content"].count("<image>") for m in conv["messages"])
            assert placeholders == len(conv["images"]) >= 1
            assert "<IMG_CONTEXT>" not in json.dumps(conv["messages"], ensure_ascii=False)
        first = map_llava_row(json.loads(lines[0]), image_folder=str(folder))
        assert len(first["images"]) == n_images and all(Path(p).is_file() for p in first["images"])
        assert first["messages"][0]["content"].startswith("<image>\n" * n_images)


def test_image_tokens_expand_to_the_encoder_grid(folder, dog, tmp_path):
    import torch
    from xt_llava.encoders import clip_image_processor, clip_large_336_config, tokens_per_image
    from xt_llava.processor import make_processor

    assert tokens_per_image(clip_large_336_config()) == 576
    big = make_processor(_processor().tokenizer, clip_image_processor(336), 14)
    assert big.tokens_per_image == 576

    rows = [_row("img", dog), _row("text", None, "Say hi.")]
    dataset = _build(rows, folder, tmp_path)
    processor = _processor()
    image_id = processor.tokenizer.convert_tokens_to_ids("<image>")
    assert [s["input_ids"].count(image_id) for s in (dataset[0], dataset[1])] == [1, 0]  # one token per image
    from xt.plugins import get_registry

    collate = get_registry().get("collators", "llava").factory(tokenizer=processor, pad_token_id=processor.pad_token_id)
    batch = collate([dataset[0], dataset[1]])  # an image row and a text-only row together
    assert batch["pixel_values"].shape == (1, 3, 28, 28)
    assert int((batch["input_ids"][0] == image_id).sum()) == 4 and int((batch["input_ids"][1] == image_id).sum()) == 0
    assert bool((batch["labels"][batch["input_ids"] == image_id] == -100).all())
    n = len(dataset[0]["input_ids"]) + 3
    assert batch["position_ids"][0, :n].tolist() == list(range(n))
    model = get_registry().get("models", "llava-tiny").load_model(None, dtype=torch.float32)
    out = model(**{k: v for k, v in batch.items() if k != "labels"}, labels=batch["labels"])
    assert torch.isfinite(out.loss)


def test_bad_rows_fail_naming_the_row(folder, dog, tmp_path, monkeypatch):
    from PIL import ImageFile

    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", True)  # as after importing lmdeploy
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"this is not a jpeg")
    truncated = tmp_path / "truncated.jpg"  # a whole header, a cut-off picture: only decoding finds it
    whole = (folder / dog).read_bytes()
    truncated.write_bytes(whole[:len(whole) // 2])
    cases = {
        "missing-1": (_row("missing-1", "000000999999.jpg"), "not found"),
        "twice-2": (_row("twice-2", dog, "<image> and <image> again"), "2 '<image>' placeholders for 1 image"),
        "broken-3": (_row("broken-3", str(broken)), "not a readable image"),
        "truncated-4": (_row("truncated-4", str(truncated)), f"image '{truncated}' is not a readable image (OSError"),
    }
    for rid, (row, reason) in cases.items():
        with pytest.raises(XtError) as info:
            _build([_row("good", dog), row], folder, tmp_path)
        message = str(info.value)
        assert rid in message and reason in message and "1 of 2 rows" in message, message
    dataset = _build([_row("good", dog)] + [r for r, _ in cases.values()], folder, tmp_path, skip_bad_rows=True)
    assert len(dataset) == 1 and dataset.stats["skipped"] == 4
    assert ImageFile.LOAD_TRUNCATED_IMAGES is True  # the permission is given back after the checks


def test_registered_dataset_takes_the_image_folder_from_the_run_context(folder, dog, monkeypatch):
    from xt.plugins import get_registry
    from xt.specs import RowError, RunContext

    spec = get_registry().get("datasets", "llava")
    assert spec.pass_context
    assert spec.map(_row("r", dog), RunContext(image_folder=str(folder)))["images"] == [str(folder / dog)]
    monkeypatch.setenv("XT_IMAGE_FOLDER", str(folder))  # the environment is not a side channel any more
    with pytest.raises(RowError, match="--image-folder"):
        spec.map(_row("r", dog), RunContext())


def test_changing_only_the_image_folder_rebuilds_the_data_cache(folder, dog, tmp_path):
    """The same rows and file names under two folders: the second build must not reuse the first."""
    import shutil

    from xt.data import DataOptions, build_dataset
    from xt.plugins import get_registry
    from xt.specs import RunContext

    first, second = tmp_path / "first", tmp_path / "second"
    for target in (first, second):
        target.mkdir()
        shutil.copy(folder / dog, target / dog)
    data = tmp_path / "rows.json"
    data.write_text(json.dumps([_row("r", dog)]))
    registry = get_registry()
    spec, template = registry.get("datasets", "llava"), registry.get("templates", "default")

    def build(image_folder: Path):
        options = DataOptions(data_files=[str(data)], max_length=128, pack=False, cache_dir=str(tmp_path / "cache"),
                              context=RunContext(image_folder=str(image_folder)))
        return build_dataset(spec, template, _processor(), options)

    a, again, b = build(first), build(first), build(second)
    assert not a.stats["cached"] and again.stats["cached"]
    assert not b.stats["cached"] and b.stats["cache_path"] != a.stats["cache_path"]
    assert again[0]["images"] == [str(first / dog)]
    assert b[0]["images"] == [str(second / dog)]  # not the stale path from the first folder


def test_modality_grouped_sampler_keeps_batches_pure_and_resumes():
    from xt_llava.sampler import ModalityGroupedBatchSampler

    has_image = [i % 3 != 0 for i in range(40)]
    lengths = [10 + i for i in range(40)]
    sampler = ModalityGroupedBatchSampler(lengths, 2, has_image=has_image, rank=1, world_size=2, seed=3,
                                          group_by_length=True)
    batches = list(sampler)
    assert len(batches) == len(sampler) == 13 // 4 + 27 // 4
    assert all(len({has_image[i] for i in b}) == 1 for b in batches)
    assert {has_image[b[0]] for b in batches} == {True, False}
    again = ModalityGroupedBatchSampler(lengths, 2, has_image=has_image, rank=1, world_size=2, seed=3,
                                        group_by_length=True)
    it = iter(again)
    first = [next(it) for _ in range(3)]
    state = again.state_dict()
    resumed = ModalityGroupedBatchSampler(lengths, 2, has_image=has_image, rank=1, world_size=2, seed=3,
                                          group_by_length=True)
    resumed.load_state_dict(state)
    assert first + list(resumed) == batches
