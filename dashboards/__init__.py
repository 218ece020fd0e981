"""The Dash explorer of recorded runs: :func:`dashboards.app.create_app` (``gateprobe serve``)."""
