"""The one exception type for bad user input (the CLI prints its message and exits 2), and the
registry lookup every room uses to name a wrong entry with the closest right one."""
from __future__ import annotations

import difflib
from typing import Any, Iterable


class UserError(Exception):
    """Bad input (config, file, value). The message names what is wrong and what would be right."""


def closest(name: str, valid: Iterable[str]) -> str:
    """' Did you mean 'x'?' for the closest of `valid`, or ''."""
    match = difflib.get_close_matches(name, list(valid), n=1, cutoff=0.5)
    return f" Did you mean '{match[0]}'?" if match else ""


def lookup(registry: dict, name: str, where: str, what: str) -> Any:
    """registry[name], or an error that names the closest entry and all of them."""
    if name in registry:
        return registry[name]
    raise UserError(f"{where}: unknown {what} '{name}'.{closest(name, registry)} Valid {what}s: "
                    f"{', '.join(sorted(registry))}.")
