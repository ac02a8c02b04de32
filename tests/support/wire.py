"""A whole checkpoint upload taken apart without a scorer: what tests use to read what a
trainer sent, or to build a tampered upload."""

from __future__ import annotations

from collections.abc import Sequence

from common.wire.errors import IntegrityError
from common.wire.protocol import (
    CheckpointHeader,
    Chunk,
    CommitHeader,
    check_chunk,
    decode_request,
    payload_digest,
)


def as_bytes(messages) -> list[list[bytes]]:
    return [[bytes(f) for f in message] for message in messages]


def assemble(messages: Sequence[Sequence], **decode) -> tuple[CheckpointHeader, bytes]:
    """The header and payload of one upload's messages (begin, chunks, commit), every check
    of the scorer's applied: chunk order, sizes and digests, the commit's digest."""
    begin = decode_request(messages[0], **decode)
    assert isinstance(begin, CheckpointHeader), begin
    payload, digests = bytearray(), []
    for message in messages[1:-1]:
        chunk = decode_request(message, **decode)
        assert isinstance(chunk, Chunk) and chunk.header.upload == begin.upload
        check_chunk(begin, chunk, len(digests))
        payload += bytes(chunk.data)
        digests.append(chunk.header.digest)
    commit = decode_request(messages[-1], **decode)
    assert isinstance(commit, CommitHeader) and commit.upload == begin.upload
    if payload_digest(digests) != commit.digest:
        raise IntegrityError("the commit's digest is not that of the chunks")
    assert len(digests) == begin.n_chunks
    return begin, bytes(payload)
