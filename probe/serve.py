"""``serve_runs``: the Dash explorer over a folder of runs, served by waitress (a production WSGI
server, pure Python) instead of Flask's development server. The one place where ``probe`` reaches
into ``dashboards`` (imported lazily, here only).

Bound to a loopback address (the default, 127.0.0.1), the explorer answers only requests whose
``Host`` header is a loopback name or address (:func:`is_loopback_host`): a web page elsewhere
cannot reach it through DNS rebinding.
"""
from __future__ import annotations

import ipaddress
import re
import socket
import sys
from pathlib import Path

from .devices import resolve_device
from .errors import SettingsError

_HOSTNAME = re.compile(r"^(?=.{1,253}$)([A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}"
                       r"[A-Za-z0-9])?)*\.?$")
THREADS = 8


def check_address(host, port) -> None:
    """``host`` an IP address or a host name that resolves, ``port`` 1..65535: a
    :class:`SettingsError` saying what is allowed otherwise (before the server would fail with its
    own traceback)."""
    if isinstance(port, bool) or not isinstance(port, int) or not 1 <= port <= 65535:
        raise SettingsError(f"--port must be an integer from 1 to 65535 (e.g. 8050), not {port!r}")
    if not isinstance(host, str) or not _valid_host(host):
        raise SettingsError(f"--host must be an IP address (127.0.0.1, ::1, 0.0.0.0 for every interface) or a host "
                            f"name of letters, digits, dots and hyphens (localhost), not {host!r}")
    try:
        socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as err:
        raise SettingsError(f"--host {host!r}: no such host ({err}); give an address of this machine "
                            "(127.0.0.1, ::1, 0.0.0.0 for every interface) or a name that resolves to one") from None


def _valid_host(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
        return True
    except ValueError:
        return bool(_HOSTNAME.match(host)) and not host.replace(".", "").isdigit()


def is_loopback(host: str) -> bool:
    """Whether ``host`` (a bare name or address) is this machine only: localhost, 127.0.0.0/8, ::1."""
    host = host.strip().rstrip(".").lower()
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def is_loopback_host(header: str | None) -> bool:
    """Whether an HTTP ``Host`` header (``name[:port]``, ``[v6]:port``) names a loopback host."""
    if not header:
        return False
    header = header.strip()
    if header.startswith("["):
        end = header.find("]")
        if end < 0 or (header[end + 1:] and not re.fullmatch(r":\d{1,5}", header[end + 1:])):
            return False
        return is_loopback(header[1:end])
    name, sep, port = header.rpartition(":") if header.count(":") == 1 else (header, "", "")
    if sep and not port.isdigit():
        return False
    return is_loopback(name)


def serve_runs(runs_dir, host: str = "127.0.0.1", port: int = 8050, allow_import_models: bool = False,
               device: str = "cpu") -> None:
    """Serve the runs under ``runs_dir`` in the Dash explorer until interrupted; the live page runs
    its models on ``device`` (``auto``, ``cpu``, ``cuda``...)."""
    check_address(host, port)
    if not Path(runs_dir).is_dir():
        raise FileNotFoundError(f"{runs_dir}: no such folder; record runs into it with `gateprobe record --out "
                                f"{runs_dir}/NAME ...`")
    try:
        import waitress

        from dashboards.app import create_app, describe
    except ImportError as err:
        raise SettingsError(f"the explorer needs Dash and waitress ({err}); install gateprobe with its "
                            "dependencies") from None

    app = create_app(runs_dir, allow_import_models=allow_import_models, loopback_only=is_loopback(host),
                     device=resolve_device(device))
    for line in describe(app.run_store):
        print(line)
    if not is_loopback(host):
        print(f"warning: serving on {host}: anyone who can reach this address can browse these runs and run "
              "their models", file=sys.stderr)
    shown = f"[{host}]" if ":" in host else host
    print(f"explorer at http://{shown}:{port}/  (Ctrl+C to stop)", flush=True)
    app.server.debug = False
    waitress.serve(app.server, host=host, port=port, threads=THREADS, ident="gateprobe")
