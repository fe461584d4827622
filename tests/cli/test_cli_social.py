"""Sites and the timeline through paxosctl on a real cluster: every write records its origin
site, and ``view --as S`` prints the puts in log order except those of the sites blocking S, judged
by the block relation at the time of the view (block, unblock and re-block)."""

from __future__ import annotations

import socket
from typing import Any

from paxosctl.app import app
from tests.cli.conftest import Cli


def timeline(cli: Cli, site: str, *extra: str) -> list[tuple[str, str]]:
    view = cli.json("view", "--as", site, *extra)
    assert view["as"] == site
    slots = [p["slot"] for p in view["posts"]]
    assert slots == sorted(slots), "posts must come in log order"
    return [(p["site"], p["value"]) for p in view["posts"]]


def post(cli: Cli, site: str, key: str, value: str) -> None:
    cli.ok("put", key, value, "--site", site)


def test_view_honours_blocks_through_block_unblock_and_reblock(cli: Cli) -> None:
    post(cli, "paris", "tw/1", "p1")
    post(cli, "tokyo", "tw/2", "t1")
    post(cli, "lima", "tw/3", "l1")
    everything = [("paris", "p1"), ("tokyo", "t1"), ("lima", "l1")]
    assert timeline(cli, "tokyo") == everything

    assert cli.json("block", "paris", "tokyo") == {
        "site": "paris",
        "other": "tokyo",
        "blocked": True,
        "changed": True,
    }
    post(cli, "paris", "tw/4", "p2")  # written while blocking: hidden from tokyo too
    assert timeline(cli, "tokyo") == [("tokyo", "t1"), ("lima", "l1")]
    # The relation is directed: the blocker and everyone else still see everything.
    with_p2 = [("paris", "p1"), ("tokyo", "t1"), ("lima", "l1"), ("paris", "p2")]
    assert timeline(cli, "paris") == with_p2
    assert timeline(cli, "lima") == with_p2

    assert cli.json("unblock", "paris", "tokyo")["changed"] is True
    # Filtering happens at view time, so every post of paris is visible again.
    assert timeline(cli, "tokyo") == with_p2

    assert cli.json("block", "paris", "tokyo")["changed"] is True
    assert timeline(cli, "tokyo") == [("tokyo", "t1"), ("lima", "l1")]
    cli.ok("block", "lima", "tokyo")
    assert timeline(cli, "tokyo") == [("tokyo", "t1")]
    cli.ok("unblock", "paris", "tokyo")
    cli.ok("unblock", "lima", "tokyo")
    assert timeline(cli, "tokyo") == with_p2


def test_block_twice_and_unblock_twice_report_no_change(cli: Cli) -> None:
    assert cli.json("block", "oslo", "rome")["changed"] is True
    again = cli.ok("block", "oslo", "rome")
    assert "already blocked" in again.stdout
    assert cli.json("unblock", "oslo", "rome")["changed"] is True
    assert cli.json("unblock", "oslo", "rome") == {
        "site": "oslo",
        "other": "rome",
        "blocked": False,
        "changed": False,
    }


def test_a_site_cannot_block_itself(cli: Cli) -> None:
    result = cli.run("block", "oslo", "oslo")
    assert result.exit_code == 2
    assert "cannot block or unblock itself" in result.stderr


def test_blocks_lists_pairs_sorted_and_filters_by_blocker(cli: Cli) -> None:
    for site, other in (("b-site", "a-site"), ("a-site", "c-site"), ("a-site", "b-site")):
        cli.ok("block", site, other)
    try:
        pairs = cli.json("blocks")["pairs"]
        mine = [p for p in pairs if p["site"] in ("a-site", "b-site")]
        assert mine == [
            {"site": "a-site", "other": "b-site"},
            {"site": "a-site", "other": "c-site"},
            {"site": "b-site", "other": "a-site"},
        ]
        assert cli.json("blocks", "--site", "b-site") == {
            "pairs": [{"site": "b-site", "other": "a-site"}]
        }
        table = cli.ok("blocks", "--site", "a-site").stdout
        assert "c-site" in table and "b-site" in table
    finally:
        for site, other in (("b-site", "a-site"), ("a-site", "c-site"), ("a-site", "b-site")):
            cli.ok("unblock", site, other)


def test_every_write_records_its_origin_site(cli: Cli) -> None:
    cli.ok("put", "origin/flag", "x", "--site", "from-flag")
    env = cli.runner.invoke(app, ["put", "origin/env", "y"], env={"PAXOSCTL_SITE": "from-env"})
    assert env.exit_code == 0, env.output
    cli.ok("put", "origin/host", "z")
    posts: list[dict[str, Any]] = cli.json("view", "--as", "nobody")["posts"]
    sites = {p["key"]: p["site"] for p in posts if p["key"].startswith("origin/")}
    assert sites == {
        "origin/flag": "from-flag",
        "origin/env": "from-env",
        "origin/host": socket.gethostname().split(".")[0],
    }
    # The log records the origin of every command, not only of puts.
    cli.ok("block", "origin-a", "origin-b", "--site", "blocker-host")
    # The leader has decided it; a follower may learn it a moment later.
    leader = str(cli.json("leader")["leader"])
    entries = cli.json("view_log", "--limit", "1", "--node", leader)["entries"]
    assert entries[-1]["commands"][0]["site"] == "blocker-host"
    cli.ok("unblock", "origin-a", "origin-b")


def test_view_limit_keeps_the_newest_posts_and_says_more(cli: Cli) -> None:
    post(cli, "kyiv", "lim/1", "first")
    post(cli, "kyiv", "lim/2", "second")
    view = cli.json("view", "--as", "kyiv", "--limit", "1")
    assert [p["value"] for p in view["posts"]] == ["second"]
    assert view["more"] is True
    assert set(view["posts"][0]) == {"slot", "site", "key", "value", "value_encoding"}
    table = cli.ok("view", "--as", "kyiv", "--limit", "1")
    assert "second" in table.stdout and "first" not in table.stdout
    assert "older posts left out" in table.stderr
