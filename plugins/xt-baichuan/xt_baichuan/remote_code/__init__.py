"""Baichuan2's configuration, modeling and tokenization files, shipped in every saved result.

These three modules import only torch, transformers and sentencepiece (each other relatively), so
``save_pretrained`` copies them next to the weights with an ``auto_map`` and plain transformers
loads the folder with ``trust_remote_code=True``, without xt installed. This package imports
transformers first, so the Auto-class registration it triggers (``xt_baichuan.auto``) runs before
any of the modules below is half-imported.
"""

import transformers  # noqa: F401
