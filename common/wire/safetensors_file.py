"""A safetensors file made from raw tensor bytes: the prefix (header length and JSON header)
that goes before a payload whose tensors lie end to end, so a payload on the wire or in
memory becomes a file by writing the prefix and then the bytes as they are."""

from __future__ import annotations

import json
import struct
from collections.abc import Mapping, Sequence

from common import dtypes

TensorLayout = tuple[str, str, Sequence[int], int]  # name, wire dtype, shape, byte length


def safetensors_prefix(
    tensors: Sequence[TensorLayout], metadata: Mapping[str, str] | None = None
) -> bytes:
    header: dict[str, dict | Mapping[str, str]] = {}
    if metadata:
        header["__metadata__"] = dict(metadata)
    offset = 0
    for name, dtype, shape, length in tensors:
        header[name] = {
            "dtype": dtypes.BY_NAME[dtype].safetensors,
            "shape": list(shape),
            "data_offsets": [offset, offset + length],
        }
        offset += length
    encoded = json.dumps(header, separators=(",", ":")).encode()
    encoded += b" " * (-len(encoded) % 8)  # the data starts 8-byte aligned
    return struct.pack("<Q", len(encoded)) + encoded
