"""What every request to the page's server must pass: the engine server's web-page checks (Host, Origin,
Sec-Fetch-Site) and the page's token, as aiohttp middlewares on trame's server."""

from __future__ import annotations

from typing import Any


def web_guard(host: str) -> Any:
    """aiohttp middleware with the engine server's web-page checks (``server.guards.HostPolicy``): a Host
    header naming this server (no DNS rebinding), no Origin but the page's own and no Sec-Fetch-Site
    cross-site/same-site, on every request, the websocket's included (another site's page could
    otherwise drive this one and download the result)."""
    from aiohttp import web

    from ..server.guards import HostPolicy

    policy = HostPolicy(host)

    @web.middleware
    async def guard(request: Any, handler: Any) -> Any:
        headers: dict[str, str] = {}
        for k, v in request.headers.items():
            # the Content-Type rule is the JSON API's: the page's own client POSTs text/plain to /paraview/
            # (a cross-origin POST still carries an Origin header, refused here)
            if k.lower() not in ("content-type", "content-length", "transfer-encoding"):
                headers.setdefault(k.lower(), v)
        problem = policy.problem(request.method, request.path, headers)
        if problem is not None:
            status, kind, message = problem
            return web.json_response({"error": {"type": kind, "message": message}}, status=status)
        return await handler(request)

    return guard


TOKEN_COOKIE = "sam2volume-web-token-{port}"  # one per port: two pages on one host keep their own


def token_guard(token: str, port: int) -> Any:
    """aiohttp middleware: every request (page, assets, websocket) needs the page's token, compared in
    constant time, as ``?token=`` (then set as an HttpOnly, SameSite=Strict cookie, so the page's own later
    requests carry it), as that cookie or as ``Authorization: Bearer``; else 401 with a JSON error."""
    from aiohttp import web

    from ..server.token_files import bearer_matches, token_matches

    cookie = TOKEN_COOKIE.format(port=int(port))

    @web.middleware
    async def guard(request: Any, handler: Any) -> Any:
        in_query = token_matches(request.query.get("token"), token)
        if not (in_query or token_matches(request.cookies.get(cookie), token)
                or bearer_matches(request.headers.get("Authorization"), token)):
            return web.json_response({"error": {"type": "AuthError", "message": (
                "missing or wrong token: open the URL sam2volume web printed (http://HOST:PORT/?token=...)")}}, status=401)
        def remember(response: Any) -> Any:
            if in_query and isinstance(response, web.StreamResponse) and not response.prepared:
                response.set_cookie(cookie, token, httponly=True, samesite="Strict", path="/")
            return response

        try:
            return remember(await handler(request))
        except web.HTTPException as exc:  # wslink's / -> index.html redirect is raised
            raise remember(exc) from None

    return guard
