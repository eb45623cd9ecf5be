"""Where edgeds keeps its own files: $EDGEDS_HOME when set (config and data together), else the
platform's user config dir (models.toml, keymap.toml) and user data dir (chats.db)."""

from __future__ import annotations

import os
from pathlib import Path


def _home() -> Path | None:
    home = os.environ.get("EDGEDS_HOME")
    return Path(home) if home else None


def config_dir() -> Path:
    """The user's models.toml and keymap.toml live here."""
    import platformdirs

    return _home() or Path(platformdirs.user_config_dir("edgeds"))


def data_dir() -> Path:
    """The chat database lives here."""
    import platformdirs

    return _home() or Path(platformdirs.user_data_dir("edgeds"))
