"""``serve_runs``: the Dash explorer over a folder of runs. The one place where ``probe`` reaches
into ``dashboards`` (imported lazily, here only)."""
from __future__ import annotations

import sys
from pathlib import Path

from .errors import SettingsError


def serve_runs(runs_dir, host: str = "127.0.0.1", port: int = 8050, allow_import_models: bool = False) -> None:
    """Serve the runs under ``runs_dir`` in the Dash explorer until interrupted."""
    if not Path(runs_dir).is_dir():
        raise FileNotFoundError(f"{runs_dir}: no such folder; record runs into it with `gateprobe record --out "
                                f"{runs_dir}/NAME ...`")
    try:
        from dashboards.app import create_app, describe
    except ImportError as err:
        raise SettingsError(f"the dashboard needs Dash ({err}); install gateprobe with its dependencies") from None

    app = create_app(runs_dir, allow_import_models=allow_import_models)
    for line in describe(app.run_store):
        print(line)
    if host not in ("127.0.0.1", "localhost", "::1"):
        print(f"warning: serving on {host}: anyone who can reach this address can browse these runs and run "
              "their models", file=sys.stderr)
    print(f"explorer at http://{host}:{port}/  (Ctrl+C to stop)", flush=True)
    app.run(host=host, port=port, debug=False)
