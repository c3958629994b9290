"""The thin HTTP layer: FastAPI routes over the store and the views.

``create_app`` is imported on first use, so the request models and conversions other
layers share (``schemas``, ``appends``) come without the app and its routes.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from stageline.api.app import create_app

__all__ = ["create_app"]


def __getattr__(name: str) -> Any:
    if name == "create_app":
        from stageline.api.app import create_app

        return create_app
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
