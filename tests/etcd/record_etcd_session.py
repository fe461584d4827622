"""Record what etcd 3.4 prints for the etcdctl session of ``session.py`` into
``fixtures/etcd34_session.json`` (the test compares paxosd's listener with it).

Run once, by hand, where etcd 3.4 is installed (/usr/bin/etcd):

    python3 -m tests.etcd.record_etcd_session [--anchors ../shared/anchors/etcd_cluster.py]

It starts a fresh 3-member etcd on loopback with the anchors' script (client ports
PORT, PORT+100, PORT+200), runs the session, and stops that cluster.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

from tests.etcd.session import dump, run_session

HERE = Path(__file__).parent
FIXTURE = HERE / "fixtures" / "etcd34_session.json"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    default = HERE.parents[1].parent / "shared" / "anchors" / "etcd_cluster.py"
    ap.add_argument("--anchors", type=Path, default=default)
    ap.add_argument("--port", type=int, default=23379)
    a = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="etcd-session-") as tmp:
        base = Path(tmp) / "etcd"
        script = [sys.executable, str(a.anchors)]
        subprocess.run([*script, "start", "--base", str(base), "--port", str(a.port)], check=True)
        try:
            info = json.loads((base / "cluster.json").read_text())
            endpoints = [m["client_url"].split("://")[1] for m in info["members"]]
            records = run_session(endpoints, Path(tmp))
        finally:
            subprocess.run([*script, "stop", "--base", str(base), "--clean"], check=False)
    FIXTURE.write_text(dump(records))
    print(f"wrote {FIXTURE}")


if __name__ == "__main__":
    main()
