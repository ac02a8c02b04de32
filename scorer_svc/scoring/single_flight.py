"""Work done once per key: the threads that ask for a key being computed wait for it, while
the work on other keys goes on."""

from __future__ import annotations

import threading
from collections.abc import Hashable, Iterator
from contextlib import contextmanager


class SingleFlight:
    """A lock per key, held while that key is computed, forgotten once no thread holds or
    waits on it. Its own bookkeeping lock is never held while computing."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._keys: dict[Hashable, tuple[threading.Lock, int]] = {}

    @contextmanager
    def __call__(self, key: Hashable) -> Iterator[None]:
        """Held while `key` is computed: the same work is done once, other work goes on."""
        with self._lock:
            lock, users = self._keys.get(key, (threading.Lock(), 0))
            self._keys[key] = (lock, users + 1)
        try:
            with lock:
                yield
        finally:
            with self._lock:
                lock, users = self._keys[key]
                if users == 1:
                    del self._keys[key]
                else:
                    self._keys[key] = (lock, users - 1)

    def __len__(self) -> int:
        """The keys being computed or waited on now."""
        with self._lock:
            return len(self._keys)
