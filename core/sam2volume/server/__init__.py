"""The engine server (``sam2volume serve``): sessions of the SAM2 or baseline engine over HTTP.

Light on import: :mod:`.wire` (the encoding both sides share) needs numpy and the standard library
only, so the client imports it without FastAPI; :mod:`.app` holds the FastAPI application.
"""

API_VERSION = 1
API_HEADER = "X-Sam2volume-Api"
REQUEST_ID = "X-Request-Id"  #: a client's id for one call; a retry with the same id is answered once

__all__ = ["API_VERSION", "API_HEADER", "REQUEST_ID"]
