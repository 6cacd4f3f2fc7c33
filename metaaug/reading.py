"""Reading a file a user hands metaaug, within bounds: at most a cap of bytes (so `--params /dev/zero`, an
endless pipe or a huge file stops after the cap, not when memory runs out) and at most MAX_DEPTH levels of
nesting (so a deeply nested document is one line, not a RecursionError). Every JSON and YAML document metaaug
reads goes through here: params files, policy files, manifests, reports and timings."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from metaaug.errors import MetaaugError

MAX_PARAMS_BYTES = 1 << 20  # a params file: the repository's is 5 KB
MAX_JSON_BYTES = 256 << 20  # a JSON document metaaug wrote: a manifest's split indices for a million images fit
MAX_DEPTH = 32  # levels of nesting: metaaug's own documents use at most 6


def read_text(path: str | Path, limit: int, expected: str) -> str:
    """The file's text, read up to `limit` bytes: a longer file (or a device, or a pipe) stops there with one
    line; a missing or unreadable file, or one that is not UTF-8, is one line too."""
    try:
        with open(path, "rb") as file:
            data = file.read(limit + 1)
    except FileNotFoundError:
        raise MetaaugError(f"{path}: not found; expected {expected}") from None
    except OSError as err:
        raise MetaaugError(f"{path}: cannot be read ({err.strerror or type(err).__name__}); expected {expected}") \
            from None
    if len(data) > limit:
        raise MetaaugError(f"{path}: is larger than {limit} bytes (reading stopped there); expected {expected}, "
                           "which is far smaller")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as err:
        raise MetaaugError(f"{path}: is not UTF-8 text (byte {err.start}); expected {expected}") from None


def check_depth(doc: Any, where: object, expected: str, limit: int = MAX_DEPTH) -> Any:
    """`doc` itself, once known to nest at most `limit` lists and mappings deep (walked without recursion)."""
    stack = [(doc, 1)]
    while stack:
        item, depth = stack.pop()
        children = item.values() if isinstance(item, dict) else item if isinstance(item, list) else ()
        for child in children:
            if isinstance(child, (dict, list)):
                if depth + 1 > limit:
                    raise deep_error(where, limit, expected)
                stack.append((child, depth + 1))
    return doc


def deep_error(where: object, limit: int, expected: str) -> MetaaugError:
    return MetaaugError(f"{where}: nests lists or mappings more than {limit} levels deep; expected {expected}")


def load_json(path: str | Path, expected: str, limit: int = MAX_JSON_BYTES) -> Any:
    """A JSON document, bounded in size and depth; invalid JSON is one line naming the file and the place."""
    text = read_text(path, limit, expected)
    try:
        doc = json.loads(text)
    except RecursionError:
        raise deep_error(path, MAX_DEPTH, expected) from None
    except json.JSONDecodeError as err:
        raise MetaaugError(f"{path}: is not valid JSON (line {err.lineno}: {err.msg}); expected {expected}") from None
    return check_depth(doc, path, expected)
