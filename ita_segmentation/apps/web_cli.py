"""`ita-web` and `python app.py`: the web page's command line, parsed with the standard library (`--help` and
usage errors answer at once); `web.serve` does the work, imported once the arguments are well formed.

Before torch is imported, the arguments are checked: the model (`locations.check_model_argument`: a missing
folder, a folder that holds no ITA model, a Hub id unreachable offline; the default, `demo_output/model`, when
missing, with `make demo`, which writes it), the device, and whether `--host`/`--port` can be listened on (a taken
port is refused naming `--port` and a free one). Each refusal is an `ITAUsageError` (exit status 2), which
`ita_cli.web`'s `run_door` prints as one line.
"""

import argparse
import errno
import socket
from collections.abc import Sequence
from pathlib import Path

from ..errors import ITAUsageError
from ..locations import check_device_argument, check_model_argument
from .web_settings import DEFAULT_MODEL, WebLimits

__all__ = ["build_web_parser", "check_listen_address", "check_web_model", "web"]

# How many ports after a taken one are tried for a suggestion.
_PORTS_TO_SUGGEST_FROM = 50


def build_web_parser(prog: str | None = None) -> argparse.ArgumentParser:
    """The web page's arguments (`ita-web`, `python app.py`)."""
    parser = argparse.ArgumentParser(
        prog=prog,
        description="Serve the ITA / FC-CLIP web demo page (Gradio). Listens on 127.0.0.1 unless --host says "
        "otherwise; the model is fixed here, at launch.",
    )
    parser.add_argument(
        "--model",
        default=str(DEFAULT_MODEL),
        help="model folder or Hub id (default: the model `make demo` writes, demo_output/model)",
    )
    parser.add_argument(
        "--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1, this machine only)"
    )
    parser.add_argument("--port", type=int, default=7860, help="port (default: 7860)")
    parser.add_argument("--device", default=None, help="torch device (default: cuda if available, else cpu)")
    parser.add_argument("--max-upload-mb", type=float, default=WebLimits.max_upload_bytes / 1024**2)
    parser.add_argument("--max-megapixels", type=float, default=WebLimits.max_pixels / 1e6)
    parser.add_argument("--queue-size", type=int, default=WebLimits.queue_size, help="waiting requests at most")
    return parser


def check_web_model(value: str) -> str | Path:
    """The `--model` to serve: the default (`demo_output/model`) as a `Path`, refused with `make demo` when it
    is missing; any other value checked by `locations.check_model_argument`. Raises `ITAUsageError`."""
    if value == str(DEFAULT_MODEL):
        if not DEFAULT_MODEL.exists():
            raise ITAUsageError(
                f"no model at {DEFAULT_MODEL} (the default): run `make demo` first (it writes the demo model "
                "there), or pass --model with a model folder or Hub id"
            )
        check_model_argument(value)
        return DEFAULT_MODEL
    check_model_argument(value)
    return value


def _bind(host: str, port: int) -> None:
    """Bind (and close) a socket on `host:port` as the server will (SO_REUSEADDR, as uvicorn and Gradio)."""
    family, kind, protocol, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    with socket.socket(family, kind, protocol) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        probe.bind(address)


def _free_port_after(host: str, port: int) -> int | None:
    for candidate in range(port + 1, min(port + 1 + _PORTS_TO_SUGGEST_FROM, 65536)):
        try:
            _bind(host, candidate)
        except OSError:
            continue
        return candidate
    return None


def check_listen_address(host: str, port: int) -> None:
    """Refuse (`ITAUsageError`) a `--port` out of range, taken, or reserved, and a `--host` that is not an
    address of this machine, before the model is loaded. The check binds and closes a socket; a port taken in
    the moment between it and the launch is reported by `web.launch`."""
    if not 1 <= port <= 65535:
        raise ITAUsageError(f"--port {port}: a port is a number from 1 to 65535 (the default is 7860)")
    try:
        _bind(host, port)
    except socket.gaierror as error:
        raise ITAUsageError(
            f"--host {host}: not a known address ({error.strerror}); use 127.0.0.1 (this machine only, the "
            "default) or 0.0.0.0 (every network interface)"
        ) from None
    except OSError as error:
        if error.errno == errno.EADDRINUSE:
            free = _free_port_after(host, port)
            suggestion = f", e.g. --port {free}" if free else ""
            raise ITAUsageError(
                f"--port {port} is taken on {host}: another program (perhaps another ita-web) listens there; stop "
                f"it, or choose another port with --port{suggestion}"
            ) from None
        if error.errno in (errno.EACCES, errno.EPERM):
            raise ITAUsageError(
                f"--port {port}: listening there needs privileges this user does not have (ports below 1024 are "
                "reserved); choose a port from 1024 up, e.g. --port 7860"
            ) from None
        if error.errno == errno.EADDRNOTAVAIL:
            raise ITAUsageError(
                f"--host {host}: not an address of this machine; use 127.0.0.1 (this machine only, the default) "
                "or 0.0.0.0 (every network interface)"
            ) from None
        raise ITAUsageError(f"cannot listen on --host {host} --port {port}: {error.strerror or error}") from None


def web(argv: Sequence[str] | None = None, prog: str | None = None) -> int:
    """`ita-web` / `python app.py`: serve the page until stopped; returns the exit status. Usage errors (the
    model, the device, the address) raise `ITAUsageError` before torch is imported."""
    args = build_web_parser(prog).parse_args(argv)
    if args.max_upload_mb <= 0 or args.max_megapixels <= 0 or args.queue_size < 1:
        raise ITAUsageError(
            f"--max-upload-mb {args.max_upload_mb}, --max-megapixels {args.max_megapixels}, --queue-size "
            f"{args.queue_size}: each must be positive (and the queue size at least 1)"
        )
    limits = WebLimits(
        max_upload_bytes=int(args.max_upload_mb * 1024**2),
        max_pixels=int(args.max_megapixels * 1e6),
        queue_size=args.queue_size,
    )
    model = check_web_model(args.model)
    check_device_argument(args.device)
    check_listen_address(args.host, args.port)
    from .web import serve  # torch, the model folder, Gradio

    return serve(model, host=args.host, port=args.port, device=args.device, limits=limits)
