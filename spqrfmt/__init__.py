"""spqrfmt: an open, versioned on-disk format for compressed LLM weights.

Public API::

    import spqrfmt
    with spqrfmt.open("model.spqr") as f:        # strict, memory-mapped, lazy
        w = f["model.layers.0.mlp.up_proj.weight"].decode()   # f32, bit-exact per spec
        t = f["model.embed_tokens.weight"].to_torch()        # raw: zero-copy (copy-on-write map)
        rows = f["model.embed_tokens.weight"].get_slice()[0:10]  # reads only those rows
    model = spqrfmt.load_model("model.spqr")     # torch + transformers, imported on first use
    spqrfmt.validate("model.spqr")                # every rule, raises SpqrFormatError (pread, never mmap)
    spqrfmt.open("model.spqr.index.json")        # a split set (or its first part): one mapping over all parts
    spqrfmt.open("model.spqr", mmap=False)        # pread: a file truncated meanwhile is TRUNCATED, not SIGBUS
    with spqrfmt.Writer("out.spqr", metadata={...}) as w:     # streaming, atomic
        w.add_raw("norm.weight", array)

The core imports only numpy, msgpack and numba; torch/triton are optional.
"""

from .errors import ErrorCode, SpqrFormatError
from .format import MAJOR, MINOR
from .reader import SpqrFile, Tensor, validate
from .split import SplitFile
from .split import open_model as open  # noqa: A001 - the natural name for a file format's entry point
from .version import __version__
from .writer import Writer


def __getattr__(name: str) -> object:
    """``spqrfmt.load_model`` without importing torch when ``import spqrfmt`` runs."""
    if name == "load_model":
        from .model import load_model

        return load_model
    raise AttributeError(f"module 'spqrfmt' has no attribute {name!r}")


def __dir__() -> list[str]:
    """The module's names and the lazy ``load_model`` (tab completion, ``dir(spqrfmt)``)."""
    return sorted({*globals(), "load_model"})


FORMAT_VERSION = (MAJOR, MINOR)

__all__ = [
    "ErrorCode",
    "FORMAT_VERSION",
    "SplitFile",
    "SpqrFile",
    "SpqrFormatError",
    "Tensor",
    "Writer",
    "load_model",
    "open",
    "validate",
    "__version__",
]
