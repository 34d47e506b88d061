"""Names the spec defines, in one place (spec/SPEC.md §7 metadata keys, §8 section roles).

Code that reads or writes one of these spells it through this module, so a
rename in the spec is a one-line change here.
"""

from __future__ import annotations

# ---- metadata keys (SPEC §7) ------------------------------------------------------------
SOURCE_MODEL = "source.model"  # where the weights came from (a folder or hub name)
SOURCE_FORMAT = "source.format"  # the importer's source format
HF_CONFIG = "hf.config"  # the checkpoint's config.json text
HF_FILES = "hf.files/"  # prefix: tokenizer / generation files, verbatim
RESERVED_PREFIX = "spqrfmt."  # keys the reference tools write; --metadata may not set them
CONVERT = "spqrfmt.convert"  # JSON of the converter settings used
CALIBRATION = "spqrfmt.calibration"  # JSON: calibration text, its digest, windows
REL_ERROR = "spqrfmt.rel_error"  # {tensor: relative Frobenius error against the source}
TRANSPOSED = "spqrfmt.transposed"  # [tensor names] stored as the transpose of the source matrix
CONV1D = "spqrfmt.conv1d"  # "out_in": Conv1D weights are stored [out, in]
CONV1D_OUT_IN = "out_in"
FUSED = "spqrfmt.fused"  # {fused tensor: [[part, rows], ...]}

# ---- section roles shared by codecs (SPEC §8, spec/codecs/*.md) ----------------------------
DATA = "data"  # raw: the tensor's bytes
BIAS = "bias"  # optional layer bias of a quantized codec
CODES = "codes"
PERM = "perm"
OUTLIER_ROW_PTR = "outlier_row_ptr"
OUTLIER_COL = "outlier_col"
OUTLIER_VAL = "outlier_val"

# ---- param names shared by codecs -------------------------------------------------------
BITS = "bits"

# Codec limits of the spec that encoders check before writing (the codec modules enforce them on read).
QUIP_MAX_FACTOR = 256  # spec/codecs/quip.md §2: the odd factors a_m, a_n of a quip tensor's dimensions
