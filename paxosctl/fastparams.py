"""Plain coercion for paxosctl's plain parameters (text, whole numbers, numbers, paths).

typer converts every parameter value through a pydantic TypeAdapter, and the first one imports
pydantic: about a third of the start-up of ``paxosctl get k``. paxosctl's options are plain
``str``/``int``/``float``/``Path``/``bool`` values (with at most a min/max), which need none of
that, so this gives exactly those parameters a converter with typer's own messages and leaves every
other parameter (choices, lists, files, clamped ranges, paths with checks) to typer.

It relies on typer's runtime-coercion hook (``_TyperParameter._runtime_param``); paxosctl.app
imports this module only where that hook exists (a typer without it converts through click,
which is already plain).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from typer._coercion import RuntimeParam
from typer.core import _TyperParameter

from paxosctl.clicklib import BadParameter, Context, Parameter

PLAIN = (str, int, float, Path, bool)
TRUE = ("1", "true", "t", "yes", "y", "on")
FALSE = ("0", "false", "f", "no", "n", "off")
# Path options whose defaults mean "no checks": any change and typer converts it.
PATH_DEFAULTS = {
    "exists": False,
    "file_okay": True,
    "dir_okay": True,
    "writable": False,
    "readable": True,
    "resolve_path": False,
    "allow_dash": False,
    "path_type": None,
}


@dataclass(frozen=True)
class PlainParam(RuntimeParam):
    """str, int, float, Path or bool, with typer's (pydantic's) wording for a bad value."""

    def _coerce_value(self, value: Any, param: Any, ctx: Context) -> Any:
        kind = self.annotation
        if kind is str:
            return value if isinstance(value, str) else str(value)
        if kind is Path:
            return value if isinstance(value, Path) else Path(value)
        if kind is bool:
            if isinstance(value, bool):
                return value
            text = str(value).strip().lower()
            if text in TRUE or text in FALSE:
                return text in TRUE
            raise BadParameter("Input should be a valid boolean", ctx=ctx, param=param)
        number: int | float
        try:
            number = int(value) if kind is int else float(value)
        except (TypeError, ValueError):
            message = (
                "Input should be a valid integer, unable to parse string as an integer"
                if kind is int
                else "Input should be a valid number, unable to parse string as a number"
            )
            raise BadParameter(message, ctx=ctx, param=param) from None
        info = self.parameter_info
        if info.min is not None and number < info.min:
            raise BadParameter(
                f"Input should be greater than or equal to {info.min}", ctx=ctx, param=param
            )
        if info.max is not None and number > info.max:
            raise BadParameter(
                f"Input should be less than or equal to {info.max}", ctx=ctx, param=param
            )
        return number


def _plain(param: Any) -> bool:
    desc = param.type_descriptor
    info = desc.parameter_info
    if desc.annotation not in PLAIN or desc.is_choice or desc.is_file:
        return False
    if getattr(info, "clamp", False) or getattr(info, "parser", None) is not None:
        return False
    if getattr(info, "click_type", None) is not None:
        return False
    if desc.annotation is Path:
        return all(getattr(info, k, v) == v for k, v in PATH_DEFAULTS.items())
    return True


def install(param: Parameter | None) -> None:
    """Give ``param`` the plain converter if it is a plain parameter not yet converted."""
    if not isinstance(param, _TyperParameter):
        return
    if getattr(param, "_runtime_param", None) is not None or not _plain(param):
        return
    desc = param.type_descriptor
    param._runtime_param = PlainParam(
        parameter_info=desc.parameter_info, annotation=desc.annotation
    )
