"""``sam2volume web``: the browser front-end (trame-slicer), loopback by default, a token on every request
(generated, or --page-token-file beyond loopback); the model in an engine server."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("web", help="segment in a web browser: slice and 3D views, prompts, propagate, download (extra 'web')")
    p.add_argument("image", help="the volume to segment (any format 3D Slicer reads: NIfTI, NRRD, MHA, ...), or a "
                   "DICOM series' folder (then the page also offers a DICOM-SEG download)")
    p.add_argument("--series-uid", help="SeriesInstanceUID to read when a DICOM folder holds several series "
                   "(default: the first; the page's series menu offers the others)")
    where = p.add_mutually_exclusive_group()
    where.add_argument("--server", metavar="URL", help="a running engine server (sam2volume serve) instead of a local one")
    p.add_argument("--token-file", help="file holding --server's token (default: the local token file for a loopback URL)")
    where.add_argument("--engine", choices=["sam2", "baseline"], default="sam2", help="engine of the local server (default sam2)")
    p.add_argument("--model", default="", help="SAM2 registry model (default: the server's)")
    p.add_argument("--device", default="auto", help="the local engine server's device: auto, cpu, cuda, cuda:N or mps")
    p.add_argument("--window", default="auto", help="intensity window preset the engine uses (auto, abdomen, lung, bone, brain, ...)")
    p.add_argument("--stop-after", type=int, default=3, help="stop propagating after this many empty slices (0: never)")
    p.add_argument("--host", default="127.0.0.1", help="address the page is served on (default 127.0.0.1); "
                   "beyond loopback --page-token-file is required")
    p.add_argument("--page-token-file", metavar="FILE", help="file holding the page's token (at least 16 characters); "
                   "default on loopback: a new random token, printed once in the URL to open")
    p.add_argument("--no-token", action="store_true", help="on loopback, serve the page without a token "
                   "(any user of this machine can then open it)")
    p.add_argument("--port", type=int, default=8080, help="port of the page (default 8080)")
    p.add_argument("--max-upload-mb", type=float, default=1024.0,
                   help="largest volume file the page may upload, in MB (default 1024; 0: no upload)")
    # tests: SAM2 with random weights at this input size (seed 0) on the local engine server; never for users
    p.add_argument("--random-weights-size", type=int, default=0, help=argparse.SUPPRESS)
    p.add_argument("--multisamples", type=int, default=0, help=argparse.SUPPRESS)  # trame-slicer's own is 8 (benchmark)
    p.set_defaults(func=cmd_web)


def check_options(args: argparse.Namespace) -> None:
    """User errors as one sentence, before anything heavy starts."""
    from pathlib import Path

    from .errors import InputError
    from .server.config import is_loopback

    if args.no_token and args.page_token_file:
        raise InputError("--no-token and --page-token-file contradict each other; give one of them")
    if not is_loopback(args.host) and not args.page_token_file:
        raise InputError(f"--host {args.host} is not a loopback address, so the page needs a token: give --page-token-file "
                         "FILE (e.g. python -c \"import secrets; print(secrets.token_urlsafe(32))\" > FILE; chmod 600 FILE)")
    if not 0 <= args.port <= 65535:
        raise InputError(f"--port {args.port} is not a port number (0..65535)")
    if not Path(args.image).is_file() and not Path(args.image).is_dir():
        raise InputError(f"image {args.image} is not a file or a folder; give the path of a volume or a DICOM series' folder")
    if args.series_uid is not None and not Path(args.image).is_dir():
        raise InputError(f"--series-uid chooses a series of a DICOM folder, but {args.image} is a file; give the folder, "
                         "or leave --series-uid out")
    if args.server and not args.server.startswith(("http://", "https://")):
        raise InputError(f"--server {args.server} is not an http(s) URL, e.g. http://gpu-host:8765")
    if args.stop_after < 0:
        raise InputError(f"--stop-after {args.stop_after} must be 0 (never) or more")
    if not 0 <= args.max_upload_mb <= 1 << 20:
        raise InputError(f"--max-upload-mb {args.max_upload_mb:g} must be 0 (no upload) to {1 << 20} MB")


def page_token(args: argparse.Namespace) -> str | None:
    """The page's token: --page-token-file's (read as the engine server reads its own), none with --no-token,
    else a new random one."""
    if args.no_token:
        return None
    if args.page_token_file:
        from .server.config import read_token_file
        from .server.token_files import warn_if_shared

        token = read_token_file(args.page_token_file)
        warn_if_shared(args.page_token_file)
        return token
    import secrets

    return secrets.token_urlsafe(32)


def read_dicom_choice(folder: str, series_uid: str | None) -> tuple:
    """The DICOM folder's series (``dicom_series.list_series``) and the one to show: ``series_uid``'s (a UID
    the folder lacks is a one-sentence error listing those it holds), else the first listed; read by
    ``read_volume(folder, series_uid=)``."""
    import warnings

    from .errors import InputError
    from .io import read_volume
    from .io.dicom_series import list_series

    with warnings.catch_warnings():  # pydicom's notes while it probes files that are not DICOM
        warnings.simplefilter("ignore", UserWarning)
        series = list_series(folder)
        if not series:
            raise InputError(f"image {folder} is a folder but not a DICOM series; give a DICOM series' folder or a volume file")
        if series_uid is not None and series_uid not in {s.uid for s in series}:
            raise InputError(f"--series-uid {series_uid} is not a series of {folder}, which holds {len(series)}: "
                             + "; ".join(s.line() for s in series) + "; give one of those UIDs")
        dicom = read_volume(folder, series_uid=series[0].uid if series_uid is None else series_uid)
    if not dicom.meta.get("dicom_files"):  # one multi-frame file: a volume, but no series for a DICOM-SEG
        raise InputError(f"image {folder} is a folder but not a DICOM series; give a DICOM series' folder or a volume file")
    return dicom, series


def cmd_web(args: argparse.Namespace) -> int:
    import os

    check_options(args)
    token = page_token(args)  # a bad token file is a user error before anything starts
    dicom, series = None, []
    if os.path.isdir(args.image):  # a DICOM series, read by sam2volume (its checks: even spacing, ...)
        dicom, series = read_dicom_choice(args.image, args.series_uid)
    try:
        import trame_slicer  # noqa: F401
    except ImportError as exc:
        from .errors import InputError

        raise InputError(f"sam2volume web needs the optional extra 'web' ({exc}); install it with: "
                         "pip install 'segment-with-sam2[web]' and pip install --no-deps slicer-layer-dm==2.0.0") from None
    os.environ.setdefault("TRAME_ARGS", "--server")  # trame reads no option of ours from sys.argv; no browser opened
    from trame.app import get_server
    from SegmentWithSAM2Lib.engine_link import EngineLink, Settings

    from .web.app import WebApp

    engine_token = None
    if args.server and args.token_file:
        from .server.config import read_token_file

        engine_token = read_token_file(args.token_file)
    settings = Settings(mode="remote" if args.server else "local", engine="sam2" if args.server else args.engine,
                        model=args.model, device=args.device, window=args.window, stopAfter=args.stop_after,
                        serverUrl=args.server or "", serverToken=engine_token or "")
    import sys

    log = os.path.join(os.path.expanduser("~"), ".cache", "sam2volume", "web-server.log")
    random = {"image_size": args.random_weights_size, "random_weights": True, "seed": 0} if args.random_weights_size else {}
    link = EngineLink(python=sys.executable, log_file=log, allow_random_weights=bool(random), config_overrides=random)
    if settings.mode == "local":
        link.endpoint(settings)  # start the local engine server now, not at the first click
    server = get_server("sam2volume-web", client_type="vue3")
    app = WebApp(server, args.image, settings, link, multisamples=args.multisamples, host=args.host, token=token,
                 port=args.port, dicom=dicom, max_upload_bytes=int(args.max_upload_mb * 1024 * 1024), series=series,
                 series_folder=args.image if dicom is not None else None)
    shown = f"http://[{args.host}]:{args.port}/" if ":" in args.host else f"http://{args.host}:{args.port}/"
    if not token:
        print(f"open the page at {shown} (no token: any user of this machine can open it)", flush=True)
    elif args.page_token_file:  # the user's own token: not copied into logs
        print(f"open the page at {shown}?token=TOKEN (TOKEN: the text of {args.page_token_file})", flush=True)
    else:  # printed once: the URL to open (the cookie it sets carries the token after)
        print(f"open the page at {shown}?token={token}", flush=True)
    try:
        server.start(host=args.host, port=args.port, open_browser=False, show_connection_info=False, timeout=0)
    finally:
        app.close()
    return 0
