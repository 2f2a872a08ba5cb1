"""Names: which worker names users may choose, and how user ids become directory names."""

from __future__ import annotations

import re
from hashlib import sha256

from rexec.protocol import WORKER_NAME_PATTERN, valid_worker_name

WORKER_NAME_RULE = (
    "a worker name is 1 to 32 characters: lowercase letters, digits and '-', "
    "starting and ending with a letter or digit (e.g. 'default', 'gpu-1')"
)
_NOT_SLUG = re.compile(r"[^a-z0-9]+")

__all__ = ["WORKER_NAME_PATTERN", "WORKER_NAME_RULE", "make_user_dir_name", "valid_worker_name"]


def make_user_dir_name(user: str) -> str:
    """A directory name for ``user``: readable slug plus a hash of the exact id.

    The slug keeps directories recognisable; the hash keeps ids that slug alike ("Alice" and
    "alice", "a/b" and "a.b") apart, and nothing in the result can climb out of its parent.
    """
    slug = _NOT_SLUG.sub("-", user.lower()).strip("-")[:32].strip("-") or "user"
    return f"{slug}-{sha256(user.encode('utf-8', 'surrogatepass')).hexdigest()[:12]}"
