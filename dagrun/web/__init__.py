"""dagrun's HTTP service: the seed's API, live run events and the pages.

``create_blueprint(...)`` mounts it in a provisioner's Flask app (which
decides who may do what through ``authorize``); ``create_app(...)`` is a
standalone app, what ``dagrun serve`` runs under waitress.
"""

from __future__ import annotations

from typing import Any

from .blueprint import create_blueprint


def create_app(**options: Any):  # noqa: ANN201 - a Flask app
    """A Flask app with dagrun's blueprint at its root (options as
    :func:`create_blueprint`)."""
    from flask import Flask
    app = Flask("dagrun")
    app.json.sort_keys = False  # type: ignore[attr-defined]
    app.register_blueprint(create_blueprint(**options))
    from .security import Guard
    app.after_request(Guard.headers)  # also on what no route of the blueprint answers (404, 405)
    return app


__all__ = ["create_app", "create_blueprint"]
