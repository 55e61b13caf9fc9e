"""``sam2volume serve``: the engine server (FastAPI + uvicorn), loopback unless given a token."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("serve", help="run the engine server that RemoteSession, Slicer and --server talk to")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default loopback; any other needs --token-file)")
    p.add_argument("--port", type=int, default=8765, help="port (0: any free port, reported in --ready-file)")
    p.add_argument("--token-file", help="file holding the token clients must send (required beyond loopback; on loopback "
                   "the default is a new token in ~/.config/sam2volume/tokens/loopback-PORT.token, README 'Engine server')")
    p.add_argument("--no-token", action="store_true",
                   help="loopback only: no token at all (then any process or user of this machine can use the server)")
    p.add_argument("--allow-host", action="append", default=[], metavar="NAME",
                   help="another name clients reach the server by, accepted in the Host header (repeat)")
    p.add_argument("--keep-alive-timeout", type=float, default=30.0,
                   help="seconds a connection may stay open without sending a whole request (default 30)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps (all sessions share it)")
    p.add_argument("--model", action="append", default=[], help="registry model clients may use (repeat; the first is the default)")
    p.add_argument("--checkpoint", help="a custom checkpoint on this machine, served as model 'custom' (with --config)")
    p.add_argument("--config", dest="config_file", help="SAM2 config for --checkpoint")
    p.add_argument("--custom-image-size", type=int, default=1024, help="input size of --checkpoint's model (MedSAM2: 512)")
    p.add_argument("--preload", action="store_true", help="build the default model before listening")
    p.add_argument("--compile", action="store_true",
                   help="torch.compile the models as upstream's vos_optimized does (first calls take minutes; README 'Speed')")
    p.add_argument("--allow-random-weights", action="store_true", help="serve random-weight models (tests and benchmarks only)")
    p.add_argument("--max-sessions", type=int, default=16)
    p.add_argument("--max-upload-mb", type=float, default=1024.0, help="compressed size of one volume upload")
    p.add_argument("--max-voxels", type=int, default=512 * 512 * 2048, help="voxels of one volume")
    p.add_argument("--max-stored-mb", type=float, default=8192.0, help="uploaded volumes held at once")
    p.add_argument("--max-body-mb", type=float, default=16.0, help="size of one JSON request")
    p.add_argument("--idle-timeout", type=float, default=900.0, help="seconds before an untouched session is closed")
    p.add_argument("--volume-ttl", type=float, default=300.0, help="seconds an uploaded volume no session uses is kept")
    p.add_argument("--upload-timeout", type=float, default=30.0, help="seconds an upload may send nothing before it is aborted")
    p.add_argument("--max-image-size", type=int, default=1024, help="largest image_size a session may ask for")
    p.add_argument("--max-feature-cache-mb", type=float, default=2048.0, help="largest feature_cache_mb a session may ask for")
    p.add_argument("--max-encode-ahead", type=int, default=64, help="largest encode_ahead a session may ask for")
    p.add_argument("--max-encode-batch", type=int, default=16, help="largest encode_batch a session may ask for")
    p.add_argument("--max-long-polls", type=int, default=64,
                   help="job-event long polls that may wait at once; more are answered at once (default 64)")
    p.add_argument("--reaper-interval", type=float, default=5.0, help=argparse.SUPPRESS)
    p.add_argument("--ready-file", help="write {url, pid} here (atomically) once listening")
    p.add_argument("--parent-pid", type=int, help="stop when this process ends (POSIX; the front-end that started the server)")
    p.add_argument("--exit-with-stdin", action="store_true", help="stop when standard input is closed (the parent holds the pipe)")
    p.add_argument("--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"])
    p.set_defaults(func=cmd_serve)


def cmd_serve(args: argparse.Namespace) -> int:
    import logging
    import secrets

    from .errors import InputError
    from .server.config import ServerConfig, check_bind, is_loopback, read_token_file
    from .server.run import serve

    if args.token_file and args.no_token:
        raise InputError("--token-file and --no-token contradict each other; give one of them")
    token = read_token_file(args.token_file) if args.token_file else None
    generated = token is None and not args.no_token and is_loopback(args.host)
    if generated:  # a token on loopback too: web pages and other users of this machine cannot use the server
        token = secrets.token_urlsafe(32)
    check_bind(args.host, token)  # before anything heavy
    if args.parent_pid is not None:
        from .server.lifetime import check_parent_pid

        check_parent_pid(args.parent_pid)
    mb = 1 << 20
    config = ServerConfig(
        token=token, device=args.device, models=args.model, checkpoint=args.checkpoint, config_file=args.config_file,
        custom_image_size=args.custom_image_size,
        allow_random_weights=args.allow_random_weights, preload=args.preload, compile=args.compile, max_sessions=args.max_sessions,
        max_upload_bytes=int(args.max_upload_mb * mb), max_voxels=args.max_voxels, max_stored_bytes=int(args.max_stored_mb * mb),
        max_body_bytes=int(args.max_body_mb * mb), idle_timeout_s=args.idle_timeout, volume_ttl_s=args.volume_ttl,
        reaper_interval_s=args.reaper_interval,
        keep_alive_s=args.keep_alive_timeout, allow_hosts=args.allow_host, write_local_token=generated,
        upload_timeout_s=args.upload_timeout, max_image_size=args.max_image_size, max_feature_cache_mb=args.max_feature_cache_mb,
        max_encode_ahead=args.max_encode_ahead, max_encode_batch=args.max_encode_batch, max_long_polls=args.max_long_polls,
    )
    if config.config_file:  # a hostile or broken --config is refused before listening, not at the first session
        from .engine.predictor import compose_model

        compose_model(config.config_file, {})
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.token_file:
        from .server.token_files import warn_if_shared

        warn_if_shared(args.token_file)  # one line in the log when group or others may read it
    serve(config, args.host, args.port, ready_file=args.ready_file, log_level=args.log_level, parent_pid=args.parent_pid,
          exit_with_stdin=args.exit_with_stdin)
    return 0
