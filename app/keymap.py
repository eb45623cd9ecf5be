"""The user's keymap: `[keymap]` in keymap.toml in the config dir remaps bindings by their id."""

from __future__ import annotations

import sys
from pathlib import Path

if sys.version_info >= (3, 11):
    import tomllib
else:  # Python 3.10
    import tomli as tomllib

from edgeds.errors import EdgedsError
from edgeds.paths import config_dir

KEYMAP_FILE = "keymap.toml"


def keymap_path() -> Path:
    """Where the user's keymap file lives (it need not exist)."""
    return config_dir() / KEYMAP_FILE


def load_keymap(path: Path) -> dict[str, str]:
    """`[keymap]` of a TOML file: binding id -> keys (e.g. "chat.cancel" = "ctrl+c")."""
    try:
        data = tomllib.loads(path.read_text())
    except FileNotFoundError:
        return {}
    except (OSError, tomllib.TOMLDecodeError) as err:
        raise EdgedsError(f"{path}: cannot read the keymap ({err})") from None
    keymap = data.get("keymap", {})
    if not isinstance(keymap, dict) or not all(isinstance(v, str) for v in keymap.values()):
        raise EdgedsError(f"{path}: [keymap] must map binding ids to key strings")
    return keymap
