"""Which tensors a file stores as the transpose of the source checkpoint's matrix (SPEC §7), decided once.

Quantized codecs store matrices ``[out, in]``; GPT-2-style ``Conv1D`` weights are
``[in, out]`` in the checkpoint, so the converter quantizes their transpose. The
file says so with ``spqrfmt.transposed`` (the names) and ``spqrfmt.conv1d =
"out_in"``. A file with ``spqrfmt.conv1d = "out_in"`` and *no* list (earlier
writers) means every quantized Conv1D weight is stored ``[out, in]``; with
neither key, Conv1D weights are stored as in the checkpoint.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from . import constants as K

# transformers' Conv1D users; models that merely reuse the names with nn.Linear (gpt_bigcode, gpt_neo,
# starcoder2) are not listed.
CONV1D_MODEL_TYPES = frozenset({"gpt2", "openai-gpt", "imagegpt", "decision_transformer", "clvp", "clvp_decoder"})
CONV1D_WEIGHT = re.compile(r"(^|\.)(c_attn|q_attn|c_proj|c_fc)\.weight$")


def conv1d_weights(config: Mapping[str, Any] | None, names: Iterable[str]) -> set[str]:
    """The names among ``names`` that are Conv1D weights ([in, out]) for a checkpoint with this config.json."""
    model_type = (config or {}).get("model_type")
    if not isinstance(model_type, str) or model_type not in CONV1D_MODEL_TYPES:
        return set()
    return {n for n in names if CONV1D_WEIGHT.search(n)}


def transposed_names(metadata: Mapping[str, Any]) -> set[str] | None:
    """Metadata ``spqrfmt.transposed`` as a set of names (None when absent); ValueError unless a list of str."""
    listed = metadata.get(K.TRANSPOSED)
    if listed is None:
        return None
    if not isinstance(listed, list) or not all(isinstance(n, str) for n in listed):
        raise ValueError(f"metadata {K.TRANSPOSED!r} is not a list of tensor names")
    return set(listed)


@dataclass(frozen=True)
class StoredTransposed:
    """The rule of SPEC §7 for one file's metadata."""

    listed: frozenset[str] | None  # spqrfmt.transposed, when present
    conv1d_out_in: bool  # spqrfmt.conv1d == "out_in"

    @classmethod
    def of(cls, metadata: Mapping[str, Any]) -> StoredTransposed:
        """ValueError when ``spqrfmt.transposed`` is not a list of names."""
        listed = transposed_names(metadata)
        return cls(None if listed is None else frozenset(listed), metadata.get(K.CONV1D) == K.CONV1D_OUT_IN)

    def applies(self, name: str, quantized_conv1d_weight: bool) -> bool:
        """Is tensor ``name`` stored transposed? ``quantized_conv1d_weight``: it is a quantized Conv1D weight
        (what the no-list rule covers)."""
        if self.listed is not None:
            return name in self.listed
        return self.conv1d_out_in and quantized_conv1d_weight

    def names(self, quantized: Mapping[str, bool], config: Mapping[str, Any] | None) -> set[str]:
        """Every stored-transposed tensor among ``quantized`` ({name: is quantized}); Conv1D weights are told
        by ``config`` (the file's hf.config) for the no-list rule."""
        conv = conv1d_weights(config, [n for n, q in quantized.items() if q]) if self.listed is None else set()
        return {n for n in quantized if self.applies(n, n in conv)}


def stored_transposed(f: Any) -> set[str]:
    """The tensors of open file ``f`` stored transposed (ValueError for a malformed list)."""
    from . import codecs

    rule = StoredTransposed.of(f.metadata)
    if rule.listed is not None:
        return set(rule.listed)
    if not rule.conv1d_out_in:
        return set()
    try:
        config = json.loads(f.metadata.get(K.HF_CONFIG) or "{}")
    except (TypeError, ValueError, RecursionError):
        config = None
    quantized = {}
    for n, t in f.tensors.items():
        codec = codecs.by_id(t.codec)
        quantized[n] = codec is None or bool(codec.quantized)  # an unknown codec is not one stored as it is
    return rule.names(quantized, config if isinstance(config, dict) else None)
