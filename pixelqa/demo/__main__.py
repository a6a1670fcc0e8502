"""Serve the web demo: `python -m pixelqa.demo --model DIR_OR_CKPT [--host 127.0.0.1] [--port 7860]`.

`--model tiny` (the default) runs the tiny configuration with random weights on CPU; a released UniPixel folder,
a save_pretrained folder or a Lightning checkpoint loads as in `python -m pixelqa.predict` (GPU when available).
Open the printed address in a browser. User errors print one line and exit with status 2.
"""

from __future__ import annotations

import argparse
import socket
import sys
from typing import TYPE_CHECKING

from pixelqa.predict.errors import PredictInputError
from pixelqa.predict.frames import LLM_FRAMES

if TYPE_CHECKING:
    from pixelqa.demo.app import Demo


def build_parser() -> argparse.ArgumentParser:
    """The command-line options of the demo."""
    parser = argparse.ArgumentParser(prog="python -m pixelqa.demo", description=__doc__.splitlines()[0])
    parser.add_argument(
        "--model", default="tiny", help="'tiny' (random, CPU), a model folder or a checkpoint (default %(default)s)"
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default %(default)s: this machine only)")
    parser.add_argument("--port", type=int, default=7860, help="port (default %(default)s; 0 picks a free one)")
    parser.add_argument(
        "--device",
        default="auto",
        help="auto (CUDA when available; tiny: CPU), cpu, cuda, cuda:N (default %(default)s)",
    )
    parser.add_argument("--trust-checkpoint", action="store_true", help="allow a checkpoint needing full unpickling")
    parser.add_argument("--max-upload-mb", type=int, default=50, help="largest upload, MiB (default %(default)s)")
    parser.add_argument(
        "--max-video-frames", type=int, default=900, help="longer videos are refused (default %(default)s)"
    )
    parser.add_argument(
        "--max-frames", type=int, default=32, help="frames read from a video, uniform (default %(default)s)"
    )
    parser.add_argument("--llm-frames", type=int, default=LLM_FRAMES, help="frames the LLM sees (default %(default)s)")
    parser.add_argument("--max-new-tokens", type=int, default=64, help="answer length limit (default %(default)s)")
    parser.add_argument(
        "--max-sessions", type=int, default=8, help="browser sessions open at once (default %(default)s)"
    )
    parser.add_argument(
        "--idle-minutes", type=float, default=30.0, help="a session unseen this long is removed (default %(default)s)"
    )
    return parser


def check_args(args: argparse.Namespace) -> None:
    """Positive numbers and a port in range."""
    for name in ("max_upload_mb", "max_video_frames", "max_frames", "llm_frames", "max_new_tokens", "max_sessions"):
        value = getattr(args, name)
        if value < 1:
            raise PredictInputError(f"--{name.replace('_', '-')}: got {value}, expected an integer >= 1")
    if not 0 <= args.port <= 65535:
        raise PredictInputError(f"--port: got {args.port}, expected 0..65535")
    if args.idle_minutes <= 0:
        raise PredictInputError(f"--idle-minutes: got {args.idle_minutes}, expected a number > 0")


def make_demo(args: argparse.Namespace) -> Demo:
    """The Demo (model loaded, sessions root made) for parsed arguments."""
    from pixelqa.demo.app import Demo
    from pixelqa.demo.media import Limits
    from pixelqa.demo.models import resolve_model
    from pixelqa.demo.sessions import SessionStore
    from pixelqa.predict.predictor import Predictor

    check_args(args)
    model, info = resolve_model(args.model, args.device, args.trust_checkpoint)
    predictor = Predictor(model, args.llm_frames, args.max_new_tokens, model_info=info)
    limits = Limits(args.max_upload_mb * 2**20, args.max_video_frames, args.max_frames)
    return Demo(predictor, limits, SessionStore(args.max_sessions, args.idle_minutes * 60))


def bind(host: str, port: int) -> socket.socket:
    """A listening TCP socket on (host, port), bound here so that the real port of `--port 0` is known."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError:
        sock.close()
        raise
    sock.listen(64)
    sock.set_inheritable(True)
    return sock


def model_label(info: dict) -> str:
    """The banner's name of the served model: its path, then its format in parentheses."""
    path, kind = info.get("path"), info.get("format", "?")
    if path is None or str(kind).startswith(str(path)):  # `tiny` has no file, and its format already says tiny
        return str(kind)
    return f"{path} ({kind})"


def serve(args: argparse.Namespace) -> int:
    """Load the model and serve the page until Ctrl-C; the sessions' folders are removed on the way out."""
    import uvicorn

    from pixelqa.demo.app import build_app

    check_args(args)
    try:  # bound before the model loads, so that a taken port fails at once
        sock = bind(args.host, args.port)
    except OSError as exc:
        raise PredictInputError(f"--port: cannot listen on {args.host}:{args.port}: {exc.strerror}") from None
    try:
        demo = make_demo(args)
    except BaseException:
        sock.close()
        raise
    loopback = args.host in ("127.0.0.1", "localhost", "::1")
    app = build_app(demo, None if loopback else ["*"])  # on another address the user chose who may reach it
    config = uvicorn.Config(app, log_level="warning", access_log=False, server_header=False)
    server = uvicorn.Server(config)
    if not loopback:
        print(f"demo: listening on {args.host}: anyone who can reach this address can use the model", flush=True)
    port = sock.getsockname()[1]
    host = f"[{args.host}]" if ":" in args.host else args.host
    label = model_label(demo.predictor.model_info)
    print(f"demo: http://{host}:{port}/  (model: {label}; Ctrl-C stops it)", flush=True)
    try:
        server.run(sockets=[sock])
    except KeyboardInterrupt:
        pass
    finally:
        sock.close()
        demo.store.close()
    return 0


def main(argv: list[str] | None = None) -> int:
    """CLI entry point; exit status 0 on success, 2 on a user error (one line on stderr)."""
    from pixelqa.quiet import silence_library_noise

    args = build_parser().parse_args(argv)
    silence_library_noise()
    try:
        return serve(args)
    except PredictInputError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
