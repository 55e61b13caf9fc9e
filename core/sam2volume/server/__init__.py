"""The engine server (``sam2volume serve``): sessions of the SAM2 or baseline engine over HTTP.

Light on import: :mod:`.wire` (the encoding both sides share) needs numpy and the standard library
only, so the client imports it without FastAPI; :mod:`.app` holds the FastAPI application.
"""

API_VERSION = 1
API_HEADER = "X-Sam2volume-Api"

__all__ = ["API_VERSION", "API_HEADER"]
