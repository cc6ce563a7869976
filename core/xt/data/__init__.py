"""The data pipeline: load -> map -> template/tokenize -> length policy -> pack or group -> collate.

See ``docs/data.md``. Nothing here imports torch at import time (only the collate function does).
"""

from xt.data.cache import tokenizer_fingerprint
from xt.data.pipeline import DataOptions, build_dataset, choose_template, load_conversations
from xt.data.sampler import ResumableBatchSampler

__all__ = [
    "DataOptions",
    "ResumableBatchSampler",
    "build_dataset",
    "choose_template",
    "load_conversations",
    "tokenizer_fingerprint",
]
