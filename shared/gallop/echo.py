"""What a caller sent, said back cut short (gallop.settings.MAX_ECHO_CHARS): an id, a name
or a value quoted in an error or a log line never grows with the request."""

from __future__ import annotations

from typing import Any

from gallop.settings import MAX_ECHO_CHARS


def clip(text: Any, limit: int = MAX_ECHO_CHARS) -> str:
    """The text, or its first `limit` characters and how many more there were."""
    text = str(text)
    if len(text) <= limit:
        return text
    return f"{text[:limit]}... ({len(text) - limit:,} more characters)"


def some(names: list[Any], most: int = 10) -> str:
    """A few of the names, each cut short, and how many more there are."""
    shown = [repr(clip(n)) for n in names[:most]]
    more = f" and {len(names) - most} more" if len(names) > most else ""
    return "[" + ", ".join(shown) + "]" + more
