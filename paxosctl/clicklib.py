"""The click that typer runs on: vendored as ``typer._click`` by recent typer, the ``click``
package before. Parameters, contexts and exceptions must come from the same one typer uses,
or isinstance checks and parameter sources silently disagree."""

from __future__ import annotations

try:
    from typer._click.core import Command, Context, Parameter, ParameterSource
    from typer._click.exceptions import BadParameter, ClickException, UsageError
    from typer._click.globals import get_current_context
except ImportError:  # a typer that depends on the click package
    from click.core import (  # type: ignore[assignment]
        Command,
        Context,
        Parameter,
        ParameterSource,
    )
    from click.exceptions import (  # type: ignore[assignment]
        BadParameter,
        ClickException,
        UsageError,
    )
    from click.globals import get_current_context  # type: ignore[no-redef]

__all__ = [
    "BadParameter",
    "ClickException",
    "Command",
    "Context",
    "Parameter",
    "ParameterSource",
    "UsageError",
    "get_current_context",
]
