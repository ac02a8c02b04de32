"""Errors that cross the wire: each class has the code its error reply carries."""

from __future__ import annotations


class ProtocolError(Exception):
    """A request the scorer refuses; `code` names the kind, the message says what to do."""

    code = "error"

    @classmethod
    def from_code(cls, code: str, reason: str) -> ProtocolError:
        for sub in _all_subclasses(cls):
            if sub.code == code:
                return sub(reason)
        error = ProtocolError(reason)
        error.code = code
        return error


def _all_subclasses(cls: type[ProtocolError]) -> list[type[ProtocolError]]:
    found = []
    for sub in cls.__subclasses__():
        found.append(sub)
        found.extend(_all_subclasses(sub))
    return found


class MalformedMessage(ProtocolError):
    code = "malformed"


class VersionMismatch(ProtocolError):
    code = "version"


class IntegrityError(ProtocolError):
    code = "integrity"


class TooLarge(ProtocolError):
    code = "too_large"


class UnknownRun(ProtocolError):
    code = "unknown_run"


class RunMismatch(ProtocolError):
    """The trainer's run disagrees with what the scorer sees (dataset, model, settings)."""

    code = "mismatch"


class CheckpointRejected(ProtocolError):
    """A well-formed checkpoint that does not fit the run (names, shapes, update index)."""

    code = "rejected"


class Unauthorized(ProtocolError):
    code = "unauthorized"


class Forbidden(ProtocolError):
    """A request for what the scorer does not allow: files outside its roots, model code."""

    code = "forbidden"


class ScorerUnavailable(ProtocolError):
    """The scorer did not answer in time (raised by clients, never sent)."""

    code = "timeout"


class ScorerInternalError(ProtocolError):
    code = "internal"


class Busy(ProtocolError):
    """The scorer cannot take this request now (too many runs being registered): ask again."""

    code = "busy"


class UploadLost(ProtocolError):
    """The scorer holds no open upload with this id (it restarted, or dropped the upload
    after it went idle): send the checkpoint again from its start."""

    code = "upload_lost"
