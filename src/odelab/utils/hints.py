"""Suggestions for a mistyped command line: the closest experiments and options, the valid keys
where an override names one the composed config lacks (``run.py`` prints them)."""

from __future__ import annotations

import difflib

from omegaconf import DictConfig, OmegaConf

from odelab.utils.config import CONFIG_DIR, compose_config


def unknown_key_hints(overrides: list[str]) -> list[str]:
    """For ``a.b.c=v`` overrides naming a key the composed config lacks: what is valid there.

    Hydra's own message names the key but not the alternatives; this runs only after a failed
    composition, so it costs nothing on the normal path.
    """
    groups = {p.name for p in CONFIG_DIR.iterdir() if p.is_dir()}
    choices, keys = [], []
    for o in overrides:
        if "=" not in o or o.startswith(("-", "+", "~")):
            continue
        key = o.split("=", 1)[0]
        (choices if key in groups or "/" in key else keys).append((o, key))
    try:
        cfg = compose_config([o for o, _ in choices])
    except Exception:  # the group choices themselves are wrong: Hydra's message covers it
        return []
    hints = []
    for _, key in keys:
        parent, _, leaf = key.rpartition(".")
        node = OmegaConf.select(cfg, parent) if parent else cfg
        if isinstance(node, DictConfig) and leaf not in node:
            valid = ", ".join(sorted(str(k) for k in node))
            where = f"'{parent}'" if parent else "the top level"
            hints.append(f"Unknown key '{leaf}' in {where}; valid keys there: {valid}")
    return hints


def unknown_choice_message(overrides: list[str]) -> str | None:
    """For ``group=option`` overrides naming an option that ``conf/<group>/`` lacks: the closest
    options first, then all of them (Hydra's own message lists them alphabetically only)."""
    groups = {p.name for p in CONFIG_DIR.iterdir() if p.is_dir() and p.name != "hydra"}
    lines = []
    for o in overrides:
        key, eq, value = o.lstrip("+").partition("=")
        if not eq or key not in groups or value in ("", "null") or "(" in value:
            continue
        options = sorted(p.stem for p in (CONFIG_DIR / key).glob("*.yaml"))
        for name in value.split(","):
            if name in options:
                continue
            close = difflib.get_close_matches(name, options, n=4, cutoff=0.5)
            starts = [x for x in options if x.startswith(name[:4]) and x not in close]
            closest = (close + starts)[:5]
            hint = f" Closest: {', '.join(closest)}." if closest else ""
            lines.append(
                f"Unknown {key} '{name}' (no conf/{key}/{name}.yaml).{hint}\n"
                f"All {key} options: {', '.join(options)}"
            )
    return "\n".join(lines) or None
