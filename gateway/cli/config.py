"""Flags shared by every subcommand that needs the server configuration."""

from __future__ import annotations

import argparse
from pathlib import Path

from oblivio.gateway.config import OblivioConfig, load_config


def add_config_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", type=Path, help="TOML config file (also $OBLIVIO_CONFIG)")
    parser.add_argument("--model", dest="model_path", type=Path, help="local Hugging Face model folder")
    parser.add_argument("--artifacts-dir", type=Path, help="where adapters, detectors and the registry live")


def config_from_args(args: argparse.Namespace, **extra: object) -> OblivioConfig:
    overrides = {
        "model.path": getattr(args, "model_path", None),
        "artifacts_dir": getattr(args, "artifacts_dir", None),
        **extra,
    }
    return load_config(getattr(args, "config", None), overrides)
