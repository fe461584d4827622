"""sqlite_utils without the numpy and pandas it imports whenever they are installed.

It loads them only to map their column types, which paxosd never writes; numpy alone is
11 MB of RSS in every daemon (measured with 1,000,000 puts). They are hidden while
sqlite_utils is first imported, then un-hidden, so the rest of the process can still import
them. If sqlite_utils was imported earlier, nothing changes.
"""

from __future__ import annotations

import sys

_HIDDEN = [name for name in ("numpy", "pandas") if name not in sys.modules]
for _name in _HIDDEN:
    sys.modules[_name] = None  # type: ignore[assignment]
try:
    import sqlite_utils
finally:
    for _name in _HIDDEN:
        del sys.modules[_name]

__all__ = ["sqlite_utils"]
