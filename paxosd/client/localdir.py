"""Where the local cluster (``paxosctl cluster up``) keeps its folder, and its manifest's name.

Kept apart from ``paxosd.lab.localcluster`` (which starts and stops nodes and pulls in storage
and the server's config) so that a client command that only needs to *find* the local cluster
loads none of that.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

# The file in the cluster's folder that lists the client endpoints and the client key file.
MANIFEST = "cluster.json"


def default_dir() -> Path:
    """``$PAXOSD_LOCAL_DIR``, else a per-user folder in the system's temporary directory."""
    env = os.environ.get("PAXOSD_LOCAL_DIR")
    if env:
        return Path(env).expanduser().resolve()
    return Path(tempfile.gettempdir()) / f"paxosd-local-{os.getuid()}"
