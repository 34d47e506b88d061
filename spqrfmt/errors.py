"""The one exception a reader raises for bad input, with the spec's stable error codes.

Codes are the names in spec/SPEC.md §10 so that readers in other languages
and the conformance suite can compare them as plain strings.
"""

from __future__ import annotations

import enum


class ErrorCode(str, enum.Enum):
    """Stable reject codes (spec/SPEC.md §10). The value is the name itself."""

    TRUNCATED = "TRUNCATED"
    BAD_MAGIC = "BAD_MAGIC"
    UNSUPPORTED_VERSION = "UNSUPPORTED_VERSION"
    HEADER_TOO_LARGE = "HEADER_TOO_LARGE"
    TRAILING_DATA = "TRAILING_DATA"
    HEADER_CHECKSUM = "HEADER_CHECKSUM"
    BAD_HEADER = "BAD_HEADER"
    LIMIT_EXCEEDED = "LIMIT_EXCEEDED"
    BAD_NAME = "BAD_NAME"
    DUPLICATE_NAME = "DUPLICATE_NAME"
    BAD_DTYPE = "BAD_DTYPE"
    BAD_SHAPE = "BAD_SHAPE"
    SHAPE_OVERFLOW = "SHAPE_OVERFLOW"
    SECTION_LENGTH_MISMATCH = "SECTION_LENGTH_MISMATCH"
    SECTION_MISALIGNED = "SECTION_MISALIGNED"
    SECTION_OUT_OF_BOUNDS = "SECTION_OUT_OF_BOUNDS"
    SECTION_OVERLAP = "SECTION_OVERLAP"
    UNKNOWN_CODEC = "UNKNOWN_CODEC"
    UNSUPPORTED_CODEC_VERSION = "UNSUPPORTED_CODEC_VERSION"
    BAD_PARAMS = "BAD_PARAMS"
    BAD_SECTION_SET = "BAD_SECTION_SET"
    BAD_SECTION_LAYOUT = "BAD_SECTION_LAYOUT"
    SECTION_CHECKSUM = "SECTION_CHECKSUM"
    BAD_CSR = "BAD_CSR"
    BAD_INDEX = "BAD_INDEX"
    BAD_PERMUTATION = "BAD_PERMUTATION"
    BAD_VALUE = "BAD_VALUE"
    BAD_METADATA = "BAD_METADATA"
    BAD_SPLIT = "BAD_SPLIT"

    def __str__(self) -> str:
        return self.value


class SpqrFormatError(ValueError):
    """A file (or a tensor in it) breaks a rule of the spec.

    ``code`` is an :class:`ErrorCode`; ``tensor`` names the tensor when the
    problem is local to one, so a caller can skip it and keep the rest.
    """

    def __init__(self, code: ErrorCode, message: str, tensor: str | None = None) -> None:
        self.code = ErrorCode(code)
        self.tensor = tensor
        where = f" (tensor {tensor!r})" if tensor is not None else ""
        super().__init__(f"{self.code.value}: {message}{where}")


def fail(code: ErrorCode, message: str, tensor: str | None = None) -> SpqrFormatError:
    """Build the error so call sites read ``raise fail(...)``."""
    return SpqrFormatError(code, message, tensor)
