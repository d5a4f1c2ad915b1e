"""Stand-ins for public names whose feature has not landed yet: importable, documented, and loudly unavailable.

Each stand-in raises `NotImplementedError` naming the feature and the issue that delivers it, the moment it is used
(called, instantiated, or asked for a preset), so nothing pretends to work.
"""

from __future__ import annotations

from typing import Any, NoReturn


class PendingFeatureError(NotImplementedError):
    """Raised when a public name is used before the issue that implements it has landed."""


def _message(name: str, feature: str, issue: int) -> str:
    return f"unbottle.{name} is not available yet: {feature} lands with issue #{issue}."


def pending_function(name: str, feature: str, issue: int) -> Any:
    """A function stand-in that raises `PendingFeatureError` when called."""

    def stand_in(*args: Any, **kwargs: Any) -> NoReturn:
        raise PendingFeatureError(_message(name, feature, issue))

    stand_in.__name__ = stand_in.__qualname__ = name.rsplit(".", 1)[-1]
    stand_in.__doc__ = f"Not available yet: {feature} (issue #{issue})."
    stand_in.__unbottle_pending__ = (feature, issue)
    return stand_in


def pending_class(name: str, feature: str, issue: int, classmethods: tuple[str, ...] = ()) -> type:
    """A class stand-in whose constructor (and the named classmethods) raise `PendingFeatureError`."""
    message = _message(name, feature, issue)

    def __init__(self: Any, *args: Any, **kwargs: Any) -> NoReturn:
        raise PendingFeatureError(message)

    def raiser(cls: type, *args: Any, **kwargs: Any) -> NoReturn:
        raise PendingFeatureError(message)

    namespace: dict[str, Any] = {
        "__init__": __init__,
        "__doc__": f"Not available yet: {feature} (issue #{issue}).",
        "__unbottle_pending__": (feature, issue),
    }
    namespace.update({m: classmethod(raiser) for m in classmethods})
    return type(name.rsplit(".", 1)[-1], (), namespace)


def pending_reason(obj: Any) -> tuple[str, int] | None:
    """`(feature, issue)` if `obj` is a stand-in for a feature that has not landed, else None."""
    return getattr(obj, "__unbottle_pending__", None)
