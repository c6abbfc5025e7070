"""``python -m service``: serve the model in ``SPIKEGUARD_MODEL_DIR`` with uvicorn."""

from __future__ import annotations

import argparse
import logging
import sys

import uvicorn

from .app import create_app
from .config import Settings


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m service", description=__doc__)
    parser.add_argument("--host", help="interface to bind (default: SPIKEGUARD_HOST)")
    parser.add_argument("--port", type=int, help="port to bind (default: SPIKEGUARD_PORT)")
    parser.add_argument("--model-dir", help="model directory (default: SPIKEGUARD_MODEL_DIR)")
    args = parser.parse_args(argv)
    overrides = {
        key: value
        for key, value in (("host", args.host), ("port", args.port), ("model_dir", args.model_dir))
        if value is not None
    }
    try:
        settings = Settings(**overrides)
    except ValueError as exc:  # pydantic's ValidationError: a bad SPIKEGUARD_* value
        print(f"python -m service: error: invalid settings: {exc}", file=sys.stderr)
        return 2
    logging.basicConfig(
        level=settings.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    uvicorn.run(
        create_app(settings),
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level,
        access_log=False,
        timeout_graceful_shutdown=settings.shutdown_timeout_s,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
