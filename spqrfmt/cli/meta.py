"""``spqr meta``: get, set or remove one metadata key"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from ..paths import UsageError, input_file, output_file
from ..summary import safe as _safe
from ._common import _error


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "meta", help="get, set or remove one metadata key (data sections kept byte for byte)",
                       formatter_class=argparse.RawDescriptionHelpFormatter,
                       description="""\
get: print the value (text as is, bytes verbatim into a pipe or file, other values as JSON;
--json: always JSON). A terminal gets text with control characters escaped, never raw bytes.
set / rm: write the file again with the key changed, atomically and in place (or to -o OUT):
the data section is copied byte for byte, so every tensor's sections, offsets and CRC-32s are
unchanged (spqr hash gives the same tensor digests). The source is verified first. Keys with
the prefix 'spqrfmt.' are reserved for the reference tools (SPEC §7) and need --force; a value
that would break a header limit (64 MiB header, nesting 32, ...) is refused and the file is
left as it was.""",
                       epilog="""\
Examples:
  spqr meta get model.spqr source.model
  spqr meta set model.spqr license apache-2.0
  spqr meta set model.spqr hf.files/chat_template.jinja --from-file chat_template.jinja
  spqr meta set model.spqr eval.ppl '{"lee": 37.97}' --json
  spqr meta rm model.spqr note -o clean.spqr""")
    add_arguments(p)
    return p


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("action", choices=["get", "set", "rm"])
    p.add_argument("file")
    p.add_argument("key")
    p.add_argument("value", nargs="?", help="the new value (set): text, or JSON with --json, or a path with "
                   "--from-file")
    p.add_argument("--json", action="store_true", help="set: VALUE is JSON (number, list, map, ...); get: print JSON")
    p.add_argument("--from-file", action="store_true", help="set: VALUE is a file whose bytes are stored (bin)")
    p.add_argument("--force", action="store_true", help="allow changing a reserved 'spqrfmt.' key")
    p.add_argument("-o", "--output", help="write the edited file here instead of replacing FILE")


def _meta_value(args: argparse.Namespace) -> Any:
    """VALUE as the metadata value: text, a JSON value (--json) or the bytes of a file (--from-file)."""
    if args.from_file:
        src = input_file(args.value, "--from-file value")
        if src.stat().st_size > (64 << 20):
            raise UsageError(f"{src} has {src.stat().st_size} bytes; the whole header is at most 64 MiB")
        return src.read_bytes()
    if args.json:
        try:
            return json.loads(args.value)
        except ValueError as e:
            raise UsageError(f"VALUE is not JSON ({e}); drop --json to store it as text") from None
    return args.value


def run(args: argparse.Namespace) -> int:
    from ..reader import open_file
    from ..rewrite import MetadataValueError, is_reserved, rewrite_metadata
    from ..summary import jsonable

    src = input_file(args.file)
    if args.action != "set" and (args.json and args.action == "rm" or args.from_file):
        return _error("--json and --from-file apply to 'spqr meta set' (and --json to 'get')", 2)
    if args.json and args.from_file:
        return _error("--json and --from-file are two ways to read VALUE; pass one of them", 2)
    if args.action == "get" and (args.output or args.force):
        return _error("spqr meta get writes nothing: -o/--force do not apply", 2)
    if args.action == "set" and args.value is None:
        return _error("spqr meta set needs a VALUE", 2)
    if args.action != "set" and args.value is not None:
        return _error(f"spqr meta {args.action} takes no VALUE", 2)
    if args.action == "get":
        with open_file(src, verify_checksums=False) as f:
            if args.key not in f.metadata:
                return _error(f"{src} has no metadata key {args.key!r}", 1)
            value = f.metadata[args.key]
        tty = sys.stdout.isatty()  # a terminal gets no escape sequences from the file; a pipe gets the value as is
        if args.json:
            print(json.dumps(jsonable(value), indent=1))
        elif isinstance(value, bytes):
            if tty:
                return _error(f"{args.key!r} holds {len(value)} bytes of binary data; redirect stdout to a file "
                              "or pass --json (base64)", 2)
            sys.stdout.flush()
            sys.stdout.buffer.write(value)  # verbatim, e.g. spqr meta get F hf.files/tokenizer.json > tokenizer.json
        elif isinstance(value, str):
            print("\n".join(_safe(line) for line in value.split("\n")) if tty else value)
        else:
            print(json.dumps(jsonable(value)))
        return 0
    if is_reserved(args.key) and not args.force:
        return _error(f"key {args.key!r} is reserved for the reference tools (SPEC §7: prefix 'spqrfmt.'); "
                      "pass --force to change it anyway", 2)
    out = None if args.output is None else output_file(args.output, [src])
    value = _meta_value(args) if args.action == "set" else None
    with open_file(src, verify_checksums=False) as f:
        metadata = dict(f.metadata)
    if args.action == "rm":
        if args.key not in metadata:
            return _error(f"{src} has no metadata key {args.key!r}", 1)
        del metadata[args.key]
    else:
        metadata[args.key] = value
    try:
        written = rewrite_metadata(src, metadata, out)
    except MetadataValueError as e:
        return _error(f"{e}; {src} is unchanged", 2)
    print(f"{'set' if args.action == 'set' else 'removed'} {_safe(args.key)} in {_safe(written)} "
          "(every data section byte-identical)")
    return 0


