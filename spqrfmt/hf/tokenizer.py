"""The tokenizer of a ``.spqr`` file: the checkpoint's tokenizer files, kept verbatim as metadata.

The converter stores them as ``hf.files/<name>``; :func:`load_tokenizer` writes them (and config.json)
to a temporary folder and hands that to ``AutoTokenizer``. Its own module because evaluation and text
generation both need it (and generation needs evaluation's causal-LM check).
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

from ..reader import open_file as _open
from .checkpoint import FILES_PREFIX


def _stored_files(metadata: Any) -> dict[str, Any]:
    return {k[len(FILES_PREFIX):]: v for k, v in metadata.items() if k.startswith(FILES_PREFIX)}


def _has_tokenizer(files: Any) -> bool:
    return any(n.startswith(("tokenizer", "vocab", "merges")) for n in files)


def has_stored_tokenizer(metadata: Any) -> bool:
    """Whether a file's metadata carries tokenizer files (``hf.files/tokenizer*``, ``vocab*``, ``merges*``)."""
    return _has_tokenizer(_stored_files(metadata))


def load_tokenizer(path: str | os.PathLike[str], tokenizer_dir: str | os.PathLike[str] | None = None) -> Any:
    """A transformers tokenizer: from ``tokenizer_dir`` if given, else from the file's ``hf.files/*`` metadata."""
    if tokenizer_dir is not None:
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(str(tokenizer_dir), trust_remote_code=False)
    with _open(path) as f:
        files = _stored_files(f.metadata)
        config = f.metadata.get("hf.config")
    if not _has_tokenizer(files):
        raise ValueError(f"{path}: no tokenizer files in the metadata; pass a tokenizer folder (--tokenizer DIR)")
    from transformers import AutoTokenizer

    with tempfile.TemporaryDirectory(prefix="spqr-tok-") as d:
        for name, data in files.items():
            if "/" in name or "\\" in name or name.startswith("."):  # metadata names are never paths
                continue
            Path(d, name).write_bytes(data if isinstance(data, bytes) else str(data).encode("utf-8"))
        if config is not None:
            Path(d, "config.json").write_text(config if isinstance(config, str) else config.decode("utf-8"),
                                              encoding="utf-8")
        return AutoTokenizer.from_pretrained(d, trust_remote_code=False)


__all__ = ["has_stored_tokenizer", "load_tokenizer"]
