"""The one rule for key files, shared by the daemon and the client: private to their owner.

A key others can read is already compromised, so both sides refuse it, as ssh refuses a
private key others can read, and say which file, its mode and the fix.
"""

from __future__ import annotations

import stat


def exposure(mode: int, *, from_credential: bool = False) -> str | None:
    """Why a key file with this ``st_mode`` must not be used, or None when it is private.

    systemd writes a credential 0400 root-owned and grants the service user read access with a
    POSIX ACL, and stat() then reports the ACL mask as the group bits: 0440. The credential
    directory is private to the service, so there only the "others" bits mean exposure.
    """
    bits = stat.S_IMODE(mode)
    if not bits & (0o007 if from_credential else 0o077):
        return None
    what = "readable" if bits & 0o044 else "writable" if bits & 0o022 else "accessible"
    return f"mode {bits:04o} is {what} by group/others"


__all__ = ["exposure"]
