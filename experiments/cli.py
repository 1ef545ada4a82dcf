"""A small typed CLI over frozen dataclass configs: ``--preset NAME`` then ``--field value`` overrides."""
from __future__ import annotations

import argparse
import dataclasses
import typing


def _parser_for(field_type):
    if field_type is bool:
        return lambda text: {"true": True, "1": True, "yes": True, "false": False, "0": False, "no": False}[text.lower()]
    if typing.get_origin(field_type) is tuple:
        return lambda text: tuple(part for part in text.split(",") if part)
    return field_type


def parse_config(presets: dict, description: str, argv: list[str] | None = None, default: str | None = None):
    """Build a config from a named preset plus typed ``--field value`` overrides (``dataclasses.replace``)."""
    base_cls = type(next(iter(presets.values())))
    hints = typing.get_type_hints(base_cls)
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--preset", choices=sorted(presets), default=default or next(iter(presets)))
    for field in dataclasses.fields(base_cls):
        if field.name == "preset":  # a config may record its preset's name: set from --preset, not overridable
            continue
        parser.add_argument(f"--{field.name.replace('_', '-')}", dest=field.name, type=_parser_for(hints[field.name]),
                            default=None, help=f"{hints[field.name]} (preset value if omitted)")
    args = vars(parser.parse_args(argv))
    name = args.pop("preset")
    overrides = {k: v for k, v in args.items() if v is not None}
    if any(f.name == "preset" for f in dataclasses.fields(base_cls)):
        overrides["preset"] = name
    return dataclasses.replace(presets[name], **overrides)
