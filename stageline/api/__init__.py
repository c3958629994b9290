"""The thin HTTP layer: FastAPI routes over the store and the views."""

from stageline.api.app import create_app

__all__ = ["create_app"]
