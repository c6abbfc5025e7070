"""``python -m training train-classifier | adv-train | train-purifier``."""

from __future__ import annotations

import argparse
import json
import os

import torch

from ..config import config_from_args, configure
from ..data import DatasetNotFoundError
from ..errors import UsageError
from . import train

__all__ = ["configure", "run"]


def run(args: argparse.Namespace) -> int:
    config = config_from_args(args)
    try:
        summary = train(config, resume=args.resume, force=args.force)
    except DatasetNotFoundError:
        raise
    except FileNotFoundError as exc:
        raise UsageError(str(exc)) from None
    if int(os.environ.get("RANK", "0")) == 0:
        print(json.dumps(summary))
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()
    return 0
