"""What every codec's encoder ``Options`` shares: flag declarations and their argparse wiring.

A codec's ``Options`` is a dataclass of its encoder settings (defaults = what
``spqr convert`` writes without flags) with ``FLAGS``, the command-line flags
that set them. The command line adds every codec's flags (a flag shared by
several codecs, such as ``--bits``, once, its help joined), refuses a flag the
chosen codec does not declare, and builds the options with ``from_args``.
"""

from __future__ import annotations

import argparse
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any, ClassVar

from ..argtypes import flag


@dataclass(frozen=True)
class Flag:
    """One encoder flag: argparse ``dest``, its ``add_argument`` keywords (no default: None = not given)."""

    dest: str
    kwargs: Mapping[str, Any] = field(default_factory=dict)
    help: str = ""
    why: str = ""  # why another codec has no such setting: "codec {codec} has no group statistics"
    calibrated: bool = False  # a solver setting: meaningful only with --calibrate

    @property
    def option(self) -> str:
        return flag(self.dest)


class OptionsBase:
    """Mixin of the codecs' ``Options`` dataclasses."""

    FLAGS: ClassVar[tuple[Flag, ...]] = ()
    EXAMPLE: ClassVar[str] = ""  # flags for the example line of ``spqr convert --help``
    REFUSES: ClassVar[Mapping[str, str]] = {}  # flag dest -> why this codec has no such setting
    F16_STATISTICS: ClassVar[bool] = False  # statistics/LUT/outliers stored as f16: weights beyond 65504 refused

    def check(self, method: str = "rtn") -> None:
        """ValueError naming the flag when a setting has no meaning (for ``method``)."""

    def describe(self, method: str = "rtn") -> str:
        raise NotImplementedError

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)  # type: ignore[call-overload]

    @property
    def in_features_multiple(self) -> tuple[int, str]:
        """(k, what needs it): every quantized matrix's in_features must be a multiple of k."""
        return 1, ""

    @classmethod
    def add_arguments(cls, parser: argparse._ActionsContainer, codec_id: str) -> None:
        """Add this codec's flags; a flag another codec added already gets this codec's help appended."""
        have = {a.dest: a for a in parser._actions}
        for f in cls.FLAGS:
            if f.dest in have:
                have[f.dest].help = f"{have[f.dest].help}; {codec_id}: {f.help}"
            else:
                parser.add_argument(f.option, dest=f.dest, help=f"{codec_id}: {f.help}", **f.kwargs)

    @classmethod
    def from_args(cls, args: argparse.Namespace, method: str) -> OptionsBase:
        """The options the flags in ``args`` ask for (None = not given: the codec's default for ``method``)."""
        raise NotImplementedError


def given(args: argparse.Namespace, dests: Iterable[str]) -> dict[str, Any]:
    """The flags among ``dests`` that were given on the command line."""
    return {d: getattr(args, d) for d in dests if getattr(args, d, None) is not None}
