"""``python -m service.client IMAGE_OR_FOLDER... --url URL``: classify image files against a
running service and write one row per file, as CSV or JSON.

A folder is searched (recursively) for the formats the service accepts, with a progress
bar on stderr. A file the service refuses gets its error in its row and the exit status
is 1; a path that does not exist, or a service that cannot be reached or is not ready,
exits with 2 before anything is sent. A full queue (503 with ``Retry-After``) is retried.
Needs nothing beyond the ``serve`` extra (the standard library and tqdm).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from tqdm import tqdm

IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif"})
FIELDS = ("file", "label", "class_index", "confidence", "purified", "noise_level", "model")
FIELDS += ("version", "error")
RETRIES = 3


class UsageError(Exception):
    """A problem with the command line or the service as a whole: exit status 2."""


def find_images(paths: Iterable[str]) -> tuple[list[Path], bool]:
    """The files named and the images under the folders named (sorted per folder), and
    whether any folder was named."""
    files, folders = [], False
    for name in paths:
        path = Path(name)
        if path.is_dir():
            folders = True
            found = sorted(
                p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
            )
            files.extend(found)
        elif path.is_file():
            files.append(path)
        else:
            raise UsageError(f"{name}: no such file or folder")
    if not files:
        raise UsageError(f"no image files found in {list(paths)}")
    return files, folders


class Client:
    def __init__(self, url: str, *, purify: bool, top_k: int, timeout: float):
        self.url = url.rstrip("/")
        self.query = urllib.parse.urlencode({"purify": str(purify).lower(), "top_k": top_k})
        self.timeout = timeout

    def check_ready(self) -> dict[str, Any]:
        """The service's /readyz answer; ``UsageError`` when it is unreachable or not ready."""
        try:
            with urllib.request.urlopen(f"{self.url}/readyz", timeout=self.timeout) as response:
                return json.loads(response.read())
        except urllib.error.HTTPError as error:
            raise UsageError(f"{self.url} is not ready: {_error_message(error)}") from None
        except (urllib.error.URLError, OSError, ValueError) as error:
            reason = getattr(error, "reason", error)
            raise UsageError(f"cannot reach {self.url}: {reason}") from None

    def classify(self, path: Path) -> dict[str, Any]:
        """One row: the prediction, or the error the service (or the network) gave."""
        row: dict[str, Any] = {"file": str(path)}
        try:
            body = path.read_bytes()  # sent as the body itself: no multipart framing
        except OSError as error:
            return {**row, "error": f"cannot read the file: {error.strerror or error}"}
        request = urllib.request.Request(
            f"{self.url}/classify?{self.query}",
            data=body,
            headers={"Content-Type": "application/octet-stream"},
            method="POST",
        )
        for attempt in range(RETRIES + 1):
            try:
                with urllib.request.urlopen(request, timeout=self.timeout) as response:
                    answer = json.loads(response.read())
                break
            except urllib.error.HTTPError as error:
                retry_after = error.headers.get("Retry-After")
                if error.code == 503 and retry_after and attempt < RETRIES:
                    error.close()
                    time.sleep(min(float(retry_after), 10.0))
                    continue
                return {**row, "error": f"{error.code}: {_error_message(error)}"}
            except (urllib.error.URLError, OSError, ValueError) as error:
                return {**row, "error": f"request failed: {getattr(error, 'reason', error)}"}
        return {
            **row,
            "label": answer["label"],
            "class_index": answer["class_index"],
            "confidence": answer["confidence"],
            "purified": answer["purified"],
            "noise_level": answer["noise_level"],
            "model": answer["model"]["name"],
            "version": answer["model"]["version"],
            "top_k": answer["top_k"],
        }


def _error_message(error: urllib.error.HTTPError) -> str:
    try:
        body = json.loads(error.read())
        detail = body["error"]
        return detail["message"] if isinstance(detail, dict) else str(detail)
    except (ValueError, KeyError, TypeError, OSError):
        return error.reason or "error"
    finally:
        error.close()


def write_rows(rows: Iterable[dict[str, Any]], output_format: str, out) -> None:
    if output_format == "json":
        json.dump(list(rows), out, indent=2)
        out.write("\n")
        return
    writer = csv.DictWriter(out, fieldnames=FIELDS, extrasaction="ignore")
    writer.writeheader()
    for row in rows:
        writer.writerow(row)


def classify_all(client: Client, files: list[Path], jobs: int, progress: bool) -> Iterator[dict]:
    """The rows in the order of ``files``, ``jobs`` requests at a time."""
    with (
        ThreadPoolExecutor(max_workers=jobs) as pool,
        tqdm(total=len(files), unit="image", disable=not progress, file=sys.stderr) as bar,
    ):
        for row in pool.map(client.classify, files):
            bar.update(1)
            yield row


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m service.client", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("paths", nargs="+", metavar="IMAGE_OR_FOLDER")
    parser.add_argument(
        "--url",
        default=os.environ.get("SPIKEGUARD_URL", "http://127.0.0.1:8000"),
        help="the service (default: SPIKEGUARD_URL or http://127.0.0.1:8000)",
    )
    parser.add_argument("--format", choices=("csv", "json"), default="csv", dest="output_format")
    parser.add_argument("--output", "-o", help="write here instead of stdout")
    parser.add_argument("--no-purify", action="store_true", help="classify without purifying")
    parser.add_argument("--top-k", type=int, default=5, help="classes listed in JSON rows")
    parser.add_argument("--jobs", "-j", type=int, default=4, help="requests at a time")
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds per request")
    parser.add_argument("--quiet", "-q", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)
    if args.jobs < 1 or args.top_k < 1 or args.timeout <= 0:
        parser.error("--jobs and --top-k must be at least 1, --timeout positive")
    if not args.url.startswith(("http://", "https://")):
        parser.error(f"--url {args.url!r}: expected http://host:port or https://...")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    client = Client(args.url, purify=not args.no_purify, top_k=args.top_k, timeout=args.timeout)
    try:
        files, folders = find_images(args.paths)
        client.check_ready()
        out = open(args.output, "w", newline="") if args.output else sys.stdout  # noqa: SIM115
    except (UsageError, OSError) as error:
        print(f"python -m service.client: error: {error}", file=sys.stderr)
        return 2
    try:
        rows = list(classify_all(client, files, args.jobs, folders and not args.quiet))
        write_rows(rows, args.output_format, out)
    finally:
        if out is not sys.stdout:
            out.close()
    failed = sum(1 for row in rows if row.get("error"))
    if failed:
        print(f"{failed} of {len(rows)} files were not classified", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
