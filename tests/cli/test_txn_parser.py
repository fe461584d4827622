"""The parser of ``paxosctl txn``: etcdctl's input format, its quoting rules, and a clear
error naming the line for every kind of bad input (no cluster needed)."""

from __future__ import annotations

import contextlib
import random

import pytest

from paxosctl.txn import TXN_INPUT_BYTES_MAX, TxnParseError, parse_txn, split_words
from paxosd.statemachine.commands import TXN_OPS_MAX, Compare, Delete, Get, Put, Scan

# etcdctl's own example (etcdctl txn --help), as a script feeds it.
ETCD_EXAMPLE = """mod("key1") > "0"

put key1 "overwrote-key1"

put key1 "created-key1"
put key2 "some extra key"

"""


def test_etcdctl_example_parses_into_compares_and_both_branches() -> None:
    t = parse_txn(ETCD_EXAMPLE)
    assert t.compares == (Compare(key="key1", target="mod", op=">", number=0),)
    assert t.success == (Put(key="key1", value=b"overwrote-key1"),)
    assert t.failure == (
        Put(key="key1", value=b"created-key1"),
        Put(key="key2", value=b"some extra key"),
    )


def test_every_target_alias_and_operator() -> None:
    text = "\n".join(
        [
            'value("a") = "x"',
            'val("a") != "y"',
            'version("b") = "0"',
            'ver("b") < "3"',
            'create("c") > "5"',
            'c("c") = "1"',
            'mod("d") < "9"',
            'm("d") != "2"',
            'lease("e") = "0"',
        ]
    )
    t = parse_txn(text)
    assert [(c.target, c.op) for c in t.compares] == [
        ("value", "="),
        ("value", "!="),
        ("version", "="),
        ("version", "<"),
        ("create", ">"),
        ("create", "="),
        ("mod", "<"),
        ("mod", "!="),
        ("lease", "="),
    ]
    assert t.compares[0].value == b"x" and t.compares[4].number == 5
    assert t.success == () and t.failure == ()


def test_go_quoting_escapes_and_back_quotes() -> None:
    t = parse_txn(
        'value("k\\"ey") = "a\\tb\\n\\x00\\377\\u00e9"\n'
        'value(`raw\\n`) = `x"y`\n'
        'value("sp ace") = ""\n'
    )
    assert t.compares[0].key == 'k"ey'
    assert t.compares[0].value == b"a\tb\n\x00\xff\xc3\xa9"
    assert t.compares[1].key == "raw\\n" and t.compares[1].value == b'x"y'
    assert t.compares[2].key == "sp ace" and t.compares[2].value == b""


def test_request_words_split_as_etcdctl_splits_them() -> None:
    assert split_words("put k 'two words' \"a\\tb\" bare", 1) == [
        b"put",
        b"k",
        b"two words",
        b"a\tb",
        b"bare",
    ]


def test_requests_with_their_flags() -> None:
    t = parse_txn(
        "\n"
        "put k v --prev-kv\n"
        "get k --rev 7\n"
        "get p/ --prefix --limit=5 --rev=3\n"
        "del k --prev-kv\n"
        "delete p/ --prefix\n"
        "\n"
        "get k\n"
    )
    assert t.compares == ()
    assert t.success == (
        Put(key="k", value=b"v", prev_kv=True),
        Get(key="k", revision=7),
        Scan(prefix="p/", limit=5, revision=3),
        Delete(key="k", prev_kv=True),
        Delete(key="p/", prefix=True),
    )
    assert t.failure == (Get(key="k"),)


def test_comments_and_a_missing_final_blank_line_are_fine() -> None:
    t = parse_txn('# compares:\nversion("k") = "0"\n\n# success requests\nput k v')
    assert len(t.compares) == 1 and t.success == (Put(key="k", value=b"v"),)


@pytest.mark.parametrize(
    ("text", "line", "words"),
    [
        ('mod("k") >> "0"', 1, "the operand must be quoted"),
        ('mod("k" > "0"', 1, "expected ) after"),
        ('size("k") = "0"', 1, "unknown compare target 'size'"),
        ('mod(k) > "0"', 1, "must be quoted"),
        ('mod("k") > 0', 1, "must be quoted"),
        ('mod("k") ~ "0"', 1, "expected one of = != < >"),
        ('mod("k") > "x"', 1, "whole number"),
        ('mod("k") > "-1"', 1, "whole number"),
        ('value("k") = "open', 1, "not closed"),
        ('value("k") = "\\q"', 1, "unknown escape"),
        ('value("k") = "\\x4"', 1, "two hex digits"),
        ('value("k") = "v" extra', 1, "unexpected text"),
        ('value("\\xff") = "v"', 1, "not valid UTF-8"),
        ("no parenthesis here", 1, "a compare looks like"),
        ('mod("k") > "0"\n\nput k', 3, "put takes a key and a value"),
        ('mod("k") > "0"\n\nfrobnicate k', 3, "unknown request 'frobnicate'"),
        ("\nget k --keys-only", 2, "--keys-only is not supported"),
        ("\nget k --rev", 2, "--rev needs a value"),
        ("\nget k --limit 3", 2, "--limit goes with --prefix"),
        ("\nget p --prefix --limit 0", 2, "--limit must be"),
        ("\nget a b", 2, "get takes one key"),
        ("\nput k 'open", 2, "not closed"),
        ("\nput k v --prev-kv=yes", 2, "takes no value"),
        ("\n\n\nput k v", 4, "after the failure requests"),
    ],
)
def test_bad_input_names_its_line(text: str, line: int, words: str) -> None:
    with pytest.raises(TxnParseError) as e:
        parse_txn(text)
    assert e.value.line == line
    assert str(e.value).startswith(f"line {line}: ")
    assert words in str(e.value)


def test_sections_are_bounded_before_anything_is_built() -> None:
    ok = "\n" + "put k v\n" * TXN_OPS_MAX
    assert len(parse_txn(ok).success) == TXN_OPS_MAX
    with pytest.raises(TxnParseError, match=f"too many success requests: over {TXN_OPS_MAX}"):
        parse_txn(ok + "put k v\n")
    compares = 'version("k") = "0"\n' * (TXN_OPS_MAX + 1)
    with pytest.raises(TxnParseError, match="too many compares") as e:
        parse_txn(compares)
    assert e.value.line == TXN_OPS_MAX + 1
    with pytest.raises(TxnParseError, match="the input is over"):
        parse_txn("#" * (TXN_INPUT_BYTES_MAX + 1))


def test_arbitrary_text_only_ever_raises_txn_parse_error() -> None:
    # A small deterministic fuzz: the parser reads a user's stdin, so garbage must become
    # one clear error, never another exception.
    rng = random.Random(7)
    alphabet = "mod(val\"`\\x0u) =!<>\n \t'#putgetdel-prefix--rev1"
    for _ in range(3000):
        text = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 60)))
        with contextlib.suppress(TxnParseError):
            parse_txn(text)


def test_stdin_that_is_not_utf8_is_read_as_bytes_not_a_traceback() -> None:
    from typer.testing import CliRunner

    from paxosctl.app import app

    # Refused by the parser (the key is not UTF-8) with one line and exit 2, before any
    # connection is made.
    result = CliRunner().invoke(app, ["txn"], input=b'value("\xff") = "v"\n')
    assert result.exit_code == 2, result.output
    assert "line 1: the key is not valid UTF-8 text" in result.stderr
    # A value may hold any bytes: it parses.
    parsed = parse_txn(b"\nput k \xff\xfe\n".decode("utf-8", "surrogateescape"))
    assert parsed.success == (Put(key="k", value=b"\xff\xfe"),)
