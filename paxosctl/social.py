"""``paxosctl block/unblock/blocks/view``: sites, who blocks whom, and the replicated timeline.

Every write carries its origin site (``--site`` / ``$PAXOSCTL_SITE`` / the host name). A put
is a post. ``view --as S`` prints the posts in log order, leaving out the posts of every site
that blocks S *now* (blocks filter when viewing, not when posting, so an unblock makes
older posts visible again and a re-block hides them again).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Any

import typer

from paxosctl import render
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
    Answer,
    Spec,
    command_errors,
    connect,
    execute,
    render_answer,
    show,
    show_text,
    unexpected,
    value_json,
)
from paxosd.client.client import Client
from paxosd.statemachine.commands import (
    VIEW_LIMIT_MAX,
    Block,
    BlockList,
    Blocks,
    Changed,
    Post,
    Result,
    Timeline,
    Unblock,
    View,
)

SiteArg = Annotated[
    str, typer.Argument(metavar="SITE", help="The blocking site.", show_default=False)
]
OtherArg = Annotated[
    str, typer.Argument(metavar="OTHER", help="The blocked site.", show_default=False)
]


def _changed(blocked: bool) -> Callable[[dict[str, Any], Result], Answer]:
    def answer(params: dict[str, Any], result: Result) -> Answer:
        site, other = params["site"], params["other"]
        if not isinstance(result, Changed):
            raise unexpected(result)
        s, o = show_text(site), show_text(other)
        if blocked:
            text = f"OK: {s} now blocks {o}" if result.changed else f"OK: {s} already blocked {o}"
        else:
            text = (
                f"OK: {s} no longer blocks {o}" if result.changed else f"OK: {s} did not block {o}"
            )
        return Answer(
            {"site": site, "other": other, "blocked": blocked, "changed": result.changed},
            (text,),
        )

    return answer


def _pair(p: dict[str, Any]) -> str:
    return f"pair {p['site']}\0{p['other']}"


BLOCK = Spec(
    build=lambda p: Block(site=p["site"], other=p["other"]), answer=_changed(True), writes=_pair
)
UNBLOCK = Spec(
    build=lambda p: Unblock(site=p["site"], other=p["other"]),
    answer=_changed(False),
    writes=_pair,
)


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
    answer = execute(
        BLOCK,
        {"site": site, "other": other},
        endpoints=endpoints,
        key_file=key_file,
        config=config,
        timeout_ms=timeout_ms,
        site=origin,
    )
    render_answer(answer, json_out)


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
    answer = execute(
        UNBLOCK,
        {"site": site, "other": other},
        endpoints=endpoints,
        key_file=key_file,
        config=config,
        timeout_ms=timeout_ms,
        site=origin,
    )
    render_answer(answer, json_out)


def _pairs(params: dict[str, Any], result: Result) -> Answer:
    if not isinstance(result, BlockList):
        raise unexpected(result)
    return Answer(
        {"pairs": [{"site": p.site, "other": p.other} for p in result.pairs]},
        table=(
            None,
            ("site", "blocks"),
            [[show_text(p.site), show_text(p.other)] for p in result.pairs],
        )
        if result.pairs
        else None,
        notes=() if result.pairs else ("no blocks",),
    )


BLOCKS = Spec(build=lambda p: Blocks(site=p["site"]), answer=_pairs)


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
    """List who blocks whom (the replicated block relation), sorted.

    JSON: {"pairs": [{"site", "other"}]}: "site" blocks "other".

    Example: paxosctl blocks --site paris
    """
    answer = execute(
        BLOCKS,
        {"site": site},
        endpoints=endpoints,
        key_file=key_file,
        config=config,
        timeout_ms=timeout_ms,
    )
    render_answer(answer, json_out)


def _reader(p: dict[str, Any]) -> str:
    return str(p.get("as_site") or p.get("site") or default_site())


def _timeline(params: dict[str, Any], result: Result) -> Answer:
    reader = _reader(params)
    if not isinstance(result, Timeline):
        raise unexpected(result)
    return Answer(
        {
            "as": reader,
            "posts": [
                {"slot": p.slot, "site": p.site, "key": p.key, **value_json(p.value)}
                for p in result.posts
            ],
            "more": result.more,
        },
        table=(
            f"timeline of {show_text(reader)}",
            ("slot", "site", "key", "value"),
            [[p.slot, show_text(p.site), show_text(p.key), show(p.value)] for p in result.posts],
        ),
        notes=("older posts left out: raise --limit",) if result.more else (),
    )


VIEW = Spec(build=lambda p: View(as_site=_reader(p), limit=p["limit"]), answer=_timeline)


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
    follow: Annotated[
        bool,
        typer.Option(
            "--follow", "-f", help="Then print each new visible post as it arrives (Ctrl-C)."
        ),
    ] = False,
    site: SiteOpt = None,
    endpoints: EndpointsOpt = None,
    key_file: KeyFileOpt = None,
    config: ConfigOpt = None,
    timeout_ms: TimeoutOpt = TIMEOUT_MS_DEFAULT,
    json_out: JsonOpt = False,
) -> None:
    """The timeline as a site sees it: puts in log order minus posts of sites blocking it.

    The block relation as it is now decides, so an unblock shows the
    blocker's older posts again and a re-block hides them again. Linearizable.

    JSON: {"as", "posts": [{"slot", "site", "key", "value", "value_encoding"}], "more"}
    ("more": older visible posts were left out by --limit).

    --follow: after the timeline, each new post the site may see, as it is applied (a
    watch on every key drives it), until Ctrl-C. With --json, one post object per line.

    Example: paxosctl view --as tokyo --limit 20

    Example: paxosctl view --as tokyo --follow
    """
    if follow:
        with connect(endpoints, key_file, config, timeout_ms) as c:
            _follow(c, _reader({"as_site": as_site, "site": site}), limit, json_out)
        return
    answer = execute(
        VIEW,
        {"as_site": as_site, "site": site, "limit": limit},
        endpoints=endpoints,
        key_file=key_file,
        config=config,
        timeout_ms=timeout_ms,
    )
    render_answer(answer, json_out)


def _post_json(p: Post) -> dict[str, Any]:
    return {"slot": p.slot, "site": p.site, "key": p.key, **value_json(p.value)}


def _follow(c: Client, reader: str, limit: int, json_out: bool) -> None:
    """The timeline, then every newer visible post as it comes. The watch is created
    before the first read, so a post made meanwhile is either in that read or reported by
    the watch (whose event makes us read again): none is missed. Ctrl-C ends it (exit 0)."""
    try:
        with c.watch_prefix("") as w:
            w.wait_created(c.timeout_ms)
            first = c.view(reader, limit)
            if not isinstance(first, Timeline):
                raise unexpected(first)
            if json_out:
                for p in first.posts:
                    render.json_line(_post_json(p), flush=True)
            else:
                render_answer(_timeline({"as_site": reader}, first), False)
            last = first.posts[-1].slot if first.posts else 0
            for batch in w:
                if not any(ev.type == "PUT" for ev in batch.events):
                    continue
                now = c.view(reader, VIEW_LIMIT_MAX)
                if not isinstance(now, Timeline):
                    raise unexpected(now)
                new = [p for p in now.posts if p.slot > last]
                if now.more and new and new[0] is now.posts[0]:
                    render.note(
                        f"more than {VIEW_LIMIT_MAX} new posts at once: older ones left out"
                    )
                for p in new:
                    if json_out:
                        render.json_line(_post_json(p), flush=True)
                    else:
                        text = "  ".join(
                            (str(p.slot), show_text(p.site), show_text(p.key), show(p.value))
                        )
                        render.line(text, flush=True)
                    last = p.slot
    except KeyboardInterrupt:
        return


# The commands ``paxosctl batch`` runs from this module, by name.
SPECS: dict[str, Spec] = {"block": BLOCK, "unblock": UNBLOCK, "blocks": BLOCKS, "view": VIEW}


def register(app: typer.Typer) -> None:
    """Add this module's commands to the paxosctl root (one line in app.py)."""
    for fn in (block, unblock, blocks, view):
        app.command(fn.__name__, rich_help_panel="Sites and the timeline")(fn)
