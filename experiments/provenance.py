"""Provenance stamped on every result row: what code, what software, what machine, when, which command."""
from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
import platform
import subprocess
import sys
from pathlib import Path

import torch

REPO_ROOT = Path(__file__).resolve().parents[1]


def _git(*args: str) -> str:
    try:
        return subprocess.run(["git", *args], cwd=REPO_ROOT, capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return ""


def _command() -> str:
    """This process's command line; a results folder given through $OUT (e.g. a lent machine's) reads "$OUT"."""
    command = " ".join([Path(sys.argv[0]).name, *sys.argv[1:]])
    out = os.environ.get("OUT")
    return command.replace(out, "$OUT") if out else command


def config_hash(config) -> str:
    """Short stable hash of a (dataclass or dict) config."""
    data = config.__dict__ if hasattr(config, "__dict__") else config
    return hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()[:12]


def provenance(config=None) -> dict[str, str]:
    """Columns every result row carries."""
    cuda = torch.cuda.is_available()
    cusparselt = getattr(torch.backends, "cusparselt", None)
    try:
        import triton
        triton_version = triton.__version__
    except ImportError:
        triton_version = ""
    # A copy of the tree run elsewhere (e.g. on a lent GPU machine, whose .git may be absent or stale) names its
    # commit in SLOPE_GIT_SHA / SLOPE_GIT_DIRTY; those win over what git says there.
    head = _git("rev-parse", "HEAD")
    sha = os.environ.get("SLOPE_GIT_SHA") or head or "unknown"
    dirty = os.environ.get("SLOPE_GIT_DIRTY") or (
        str(bool(_git("status", "--porcelain", "--untracked-files=no"))) if head else "unknown")
    return {
        "git_sha": sha,
        "git_dirty": dirty,
        "command": _command(),
        "config_hash": config_hash(config) if config is not None else "",
        "torch": torch.__version__,
        "cuda": torch.version.cuda or "",
        "triton": triton_version,
        "cusparselt": str(cusparselt.version()) if cuda and cusparselt and cusparselt.is_available() else "",
        "device": torch.cuda.get_device_name() if cuda else f"cpu ({platform.processor() or platform.machine()})",
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }
