"""``paxosctl block/unblock/blocks/view``: the replicated Twitter of seed 002.

Every write carries its origin site (``--site`` / ``$PAXOSCTL_SITE`` / the host name). A put
is a post. ``view --as S`` prints the posts in log order, leaving out the posts of every site
that blocks S *now* (the seed filters when viewing, not when posting, so an unblock makes
older posts visible again and a re-block hides them again).
"""

from __future__ import annotations

from typing import Annotated

import typer

from paxosctl.connect import (
    ConfigOpt,
    EndpointsOpt,
    JsonOpt,
    KeyFileOpt,
    SiteOpt,
    TimeoutOpt,
    default_site,
)
from paxosctl.kv import (
    TIMEOUT_MS_DEFAULT,
    command_errors,
    connect,
    emit,
    note,
    print_table,
    say,
    show,
    show_text,
    unexpected,
    value_json,
)
from paxosd.statemachine.commands import VIEW_LIMIT_MAX, BlockList, Changed, Timeline

SiteArg = Annotated[str, typer.Argument(help="The blocking site.", show_default=False)]
OtherArg = Annotated[str, typer.Argument(help="The blocked site.", show_default=False)]


@command_errors
def block(
    site: SiteArg,
    other: OtherArg,
    origin: SiteOpt = None,
    endpoints: EndpointsOpt = None,
    key_file: KeyFileOpt = None,
    config: ConfigOpt = None,
    timeout_ms: TimeoutOpt = TIMEOUT_MS_DEFAULT,
    json_out: JsonOpt = False,
) -> None:
    """SITE blocks OTHER: from now on OTHER's view leaves out every post of SITE.

    Blocking twice is not an error ("changed" says whether the relation changed).

    JSON: {"site", "other", "blocked": true, "changed"}.

    Example: paxosctl block paris tokyo
    """
    with connect(endpoints, key_file, config, timeout_ms, origin) as c:
        result = c.block(site, other)
    if not isinstance(result, Changed):
        raise unexpected(result)
    if json_out:
        emit({"site": site, "other": other, "blocked": True, "changed": result.changed})
    elif result.changed:
        say(f"OK: {show_text(site)} now blocks {show_text(other)}")
    else:
        say(f"OK: {show_text(site)} already blocked {show_text(other)}")


@command_errors
def unblock(
    site: SiteArg,
    other: OtherArg,
    origin: SiteOpt = None,
    endpoints: EndpointsOpt = None,
    key_file: KeyFileOpt = None,
    config: ConfigOpt = None,
    timeout_ms: TimeoutOpt = TIMEOUT_MS_DEFAULT,
    json_out: JsonOpt = False,
) -> None:
    """SITE stops blocking OTHER: OTHER sees SITE's posts again, older ones included.

    JSON: {"site", "other", "blocked": false, "changed"}.

    Example: paxosctl unblock paris tokyo
    """
    with connect(endpoints, key_file, config, timeout_ms, origin) as c:
        result = c.unblock(site, other)
    if not isinstance(result, Changed):
        raise unexpected(result)
    if json_out:
        emit({"site": site, "other": other, "blocked": False, "changed": result.changed})
    elif result.changed:
        say(f"OK: {show_text(site)} no longer blocks {show_text(other)}")
    else:
        say(f"OK: {show_text(site)} did not block {show_text(other)}")


@command_errors
def blocks(
    site: Annotated[
        str | None,
        typer.Option("--site", help="Only the pairs where this site is the blocker."),
    ] = None,
    endpoints: EndpointsOpt = None,
    key_file: KeyFileOpt = None,
    config: ConfigOpt = None,
    timeout_ms: TimeoutOpt = TIMEOUT_MS_DEFAULT,
    json_out: JsonOpt = False,
) -> None:
    """List who blocks whom (the seed's "blocks" dictionary), sorted.

    JSON: {"pairs": [{"site", "other"}]}: "site" blocks "other".

    Example: paxosctl blocks --site paris
    """
    with connect(endpoints, key_file, config, timeout_ms) as c:
        result = c.blocks(site)
    if not isinstance(result, BlockList):
        raise unexpected(result)
    if json_out:
        emit({"pairs": [{"site": p.site, "other": p.other} for p in result.pairs]})
        return
    if not result.pairs:
        note("no blocks")
        return
    print_table(
        None,
        ["site", "blocks"],
        [[show_text(p.site), show_text(p.other)] for p in result.pairs],
    )


@command_errors
def view(
    as_site: Annotated[
        str | None,
        typer.Option(
            "--as",
            help="The reading site (default: --site, $PAXOSCTL_SITE or this host's name).",
            show_default=False,
        ),
    ] = None,
    limit: Annotated[
        int,
        typer.Option("--limit", min=1, max=VIEW_LIMIT_MAX, help="The newest N visible posts."),
    ] = 100,
    site: SiteOpt = None,
    endpoints: EndpointsOpt = None,
    key_file: KeyFileOpt = None,
    config: ConfigOpt = None,
    timeout_ms: TimeoutOpt = TIMEOUT_MS_DEFAULT,
    json_out: JsonOpt = False,
) -> None:
    """The timeline as a site sees it: puts in log order minus posts of sites blocking it.

    Seed 002's "view": the block relation as it is now decides, so an unblock shows the
    blocker's older posts again and a re-block hides them again. Linearizable.

    JSON: {"as", "posts": [{"slot", "site", "key", "value", "value_encoding"}], "more"}
    ("more": older visible posts were left out by --limit).

    Example: paxosctl view --as tokyo --limit 20
    """
    reader = as_site or site or default_site()
    with connect(endpoints, key_file, config, timeout_ms) as c:
        result = c.view(reader, limit)
    if not isinstance(result, Timeline):
        raise unexpected(result)
    if json_out:
        emit(
            {
                "as": reader,
                "posts": [
                    {"slot": p.slot, "site": p.site, "key": p.key, **value_json(p.value)}
                    for p in result.posts
                ],
                "more": result.more,
            }
        )
        return
    print_table(
        f"timeline of {show_text(reader)}",
        ["slot", "site", "key", "value"],
        [[p.slot, show_text(p.site), show_text(p.key), show(p.value)] for p in result.posts],
    )
    if result.more:
        note("older posts left out: raise --limit")


def register(app: typer.Typer) -> None:
    """Add this module's commands to the paxosctl root (one line in app.py)."""
    for fn in (block, unblock, blocks, view):
        app.command(fn.__name__, rich_help_panel="Sites (seed 002)")(fn)
