"""What a stored file looked like when its bytes were last verified, so a read can tell
cheaply whether it may trust the file or must hash it again.

Writing to a file changes its mtime and ctime; replacing it changes its inode; restoring
the mtime afterwards (``touch -r``, ``os.utime``) changes the ctime again. So a file whose
(device, inode, size, mtime, ctime) in nanoseconds are those recorded when it was verified
has not been written since, and one whose stat disagrees must be hashed before it is served.
(Bit rot under the filesystem changes no metadata: that is the background scrub's job.)

The record is in memory: a start knows nothing, and the first read of each blob hashes it.
"""

from __future__ import annotations

import hashlib
import os
import threading
from collections import OrderedDict
from dataclasses import dataclass

from pullthrough.reference import Digest

# Identities remembered; the least recently used are forgotten (and hashed at their next read).
MAX_REMEMBERED = 200_000
# Bytes hashed per pread when a whole file is checked.
HASH_CHUNK = 1024 * 1024


@dataclass(frozen=True, slots=True)
class FileIdentity:
    dev: int
    ino: int
    size: int
    mtime_ns: int
    ctime_ns: int

    @classmethod
    def of(cls, st: os.stat_result) -> FileIdentity:
        return cls(st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


def fstat_identity(fd: int) -> FileIdentity:
    """The identity of an open file (blocking on a network filesystem: call from a thread)."""
    return FileIdentity.of(os.fstat(fd))


def verify_fd_sync(fd: int, digest: Digest) -> FileIdentity | None:
    """Hash the whole open file (blocking). Returns its identity as it was *before* the
    hash when the bytes are ``digest``, None when they are not. Recording that identity is
    safe even if the file changed while it was hashed: the change moved its stat away from
    it, so the next read hashes again."""
    before = fstat_identity(fd)
    hasher = hashlib.new(digest.algorithm)
    position = 0
    while chunk := os.pread(fd, HASH_CHUNK, position):  # ends at EOF: files do not grow here
        hasher.update(chunk)
        position += len(chunk)
    if position != before.size or hasher.hexdigest() != digest.hex:
        return None
    return before


class VerifiedFiles:
    """Digest → the identity of its stored file when it was last verified (by a fetch's
    commit, a hashed read or the scrub). Thread-safe: commits record from worker threads."""

    def __init__(self, limit: int = MAX_REMEMBERED) -> None:
        self._limit = limit
        self._known: OrderedDict[str, FileIdentity] = OrderedDict()
        self._lock = threading.Lock()

    def matches(self, digest: Digest, identity: FileIdentity) -> bool:
        """Whether ``identity`` is the file as it was verified: it may be sent unhashed."""
        with self._lock:
            known = self._known.get(str(digest))
            if known is None or known != identity:
                return False
            self._known.move_to_end(str(digest))
            return True

    def record(self, digest: Digest, identity: FileIdentity) -> None:
        key = str(digest)
        with self._lock:
            self._known[key] = identity
            self._known.move_to_end(key)
            while len(self._known) > self._limit:
                self._known.popitem(last=False)

    def forget(self, digest: Digest) -> None:
        with self._lock:
            self._known.pop(str(digest), None)
