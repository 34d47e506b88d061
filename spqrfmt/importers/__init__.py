"""Importers: checkpoints of other SpQR / SqueezeLLM / QuIP# implementations -> one ``.spqr`` file.

Each importer reads its source format with numpy only (safetensors parsed by
``spqrfmt.safetensors_io``; PyTorch ``.pt`` files only through
``torch.load(weights_only=True)``), maps every field onto a codec of this
format and writes the file with the streaming :class:`spqrfmt.Writer`.
``docs/importers.md`` says, per source format, which fields map to which
sections and whether decoding is bit-exact with the source's own
dequantization.

Modules:

* :mod:`.spqr_quant` -- the SpQR authors' inference format (``spqr_quant``,
  transformers' ``quant_method: "spqr"``) -> codec ``spqr``.
* :mod:`.squeezellm` -- SqueezeLLM packed checkpoints -> codec ``squeezellm``.
* :mod:`.quipsharp` -- QuIP# Hugging Face-style safetensors -> codec ``quip``.
"""

from __future__ import annotations

IMPORTERS = {
    "spqr_quant": "spqrfmt.importers.spqr_quant",
    "squeezellm": "spqrfmt.importers.squeezellm",
    "quipsharp": "spqrfmt.importers.quipsharp",
}

__all__ = ["IMPORTERS"]
