"""``monai-uda [COMMAND] --help``: usage text built from the commands' signatures and the bundle configs.

python-fire's own help cannot describe commands that take ``**kwargs`` (train and infer pass
them to the bundle configs, which is where their options and defaults live) and, for such
commands, runs the command instead. The CLI answers ``--help``/``-h`` here before fire sees the
command line; nothing is written and nothing runs.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

__all__ = ["HELP_FLAGS", "command_help", "main_help", "wants_help"]

HELP_FLAGS = ("--help", "-h")

#: what every usage text ends with
_FOOTER = (
    "Input errors are reported as one 'error: ...' line (exit code 2); set MONAI_UDA_DEBUG=1 to see the traceback."
)


def wants_help(argv: Sequence[str]) -> bool:
    """``--help`` or ``-h`` before any ``--`` separator (fire's own flags come after it)."""
    args = list(argv)
    args = args[: args.index("--")] if "--" in args else args
    return any(a in HELP_FLAGS for a in args)


def _first_line(func: Callable[..., Any]) -> str:
    return (inspect.getdoc(func) or "").strip().splitlines()[0] if inspect.getdoc(func) else ""


def _option_lines(func: Callable[..., Any], skip: Sequence[str] = ("self",)) -> list[str]:
    """``--name  default`` for every named parameter of ``func`` (``(required)`` without a default)."""
    lines = []
    for name, param in inspect.signature(func).parameters.items():
        if name in skip or param.kind in (param.VAR_KEYWORD, param.VAR_POSITIONAL):
            continue
        default = "(required)" if param.default is param.empty else _show(param.default)
        lines.append(f"  --{name:<24} {default}")
    return lines


def _show(value: Any) -> str:
    """A default as a user types it on the command line."""
    if value is None:
        return "none"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(_show(v) for v in value) + "]"
    return str(value)


def _argv_option(argv: Sequence[str], name: str, default: Any) -> Any:
    """The value of ``--name`` (``--name X`` or ``--name=X``) in ``argv``, else ``default``."""
    args = list(argv)
    for i, token in enumerate(args):
        if token == f"--{name}" and i + 1 < len(args):
            return args[i + 1]
        if token.startswith(f"--{name}="):
            return token.split("=", 1)[1]
    return default


def main_help(commands: type, usage: str) -> str:
    """Usage of ``monai-uda``: one line per command.

    Args:
        commands: the class whose public functions are the commands.
        usage: the CLI module's docstring (its first line and its ``monai-uda ...`` examples).
    """
    lines = [usage.strip().splitlines()[0], "", "usage:"]
    lines += [line for line in usage.splitlines() if line.startswith("    monai-uda ")]
    lines += ["", "commands:"]
    for name, func in inspect.getmembers(commands, inspect.isfunction):
        if not name.startswith("_"):
            lines.append(f"  {name:<10} {_first_line(func)}")
    lines += ["", "monai-uda COMMAND --help shows a command's options and their defaults.", _FOOTER]
    return "\n".join(lines)


def _bundle_help(command: str, func: Callable[..., Any], argv: Sequence[str]) -> list[str]:
    """Options of ``train``/``infer``: the file-choosing options, then the bundle configs' keys and defaults."""
    from monai_uda.bundle_runner import RUN_OPTIONS, bundle_names, bundles_dir, config_files
    from monai_uda.options import config_defaults

    bundle = str(_argv_option(argv, "bundle", "cellseg_uda"))
    spatial_dims = int(_argv_option(argv, "spatial_dims", 2))
    preset = _argv_option(argv, "budget_preset", None)
    files = config_files(bundle, "training" if command == "train" else "inference", spatial_dims, preset)
    presets = sorted(p.stem[len("train_"):] for p in (bundles_dir() / bundle / "configs").glob("train_*.yaml"))
    presets = [p for p in presets if p != "3d"]
    lines = [
        f"  --bundle NAME              {bundle} (one of {', '.join(bundle_names())})",
        f"  --spatial_dims 2|3         {spatial_dims} (3 merges train_3d.yaml)",
        f"  --budget_preset NAME       {_show(preset)} (one of {', '.join(presets) or 'none'}: merges train_NAME.yaml)",
        "",
        f"config options of {bundle} (--KEY VALUE overrides a key of {', '.join(Path(f).name for f in files)};",
        "nested keys as --section#key; 'computed' defaults are derived in the config):",
    ]
    for key, value in config_defaults(files).items():
        hidden = "#" in key or key.startswith("_") or key in (*RUN_OPTIONS, "imports", "bundle_root")
        if hidden or not _is_listable_default(value):
            continue
        if isinstance(value, str) and value.startswith("$"):
            value = "computed" if "@" in value else value[1:].strip()
        elif isinstance(value, str) and value.startswith("@"):
            value = f"same as --{value[1:]}"
        lines.append(f"  --{key:<24} {_show(value)}")
    comments = _header_comment(files[0])
    return lines + ([""] + comments if comments else [])


def _is_listable_default(value: Any) -> bool:
    """A default worth listing: a scalar, a list of scalars, an expression or a reference (not a section)."""
    if isinstance(value, list):
        return all(isinstance(v, (int, float, bool)) for v in value)
    return not isinstance(value, dict)


def _header_comment(path: str) -> list[str]:
    """The comment block at the top of a config (what it does, how to run it, its main overrides)."""
    lines = []
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        if not line.startswith("#"):
            break
        lines.append(line[1:].rstrip())
    return lines


def _prepare_help() -> list[str]:
    from monai_uda.data.prepare import LABELLED_SUBSET_HELP, PREPARE_FORMATS

    lines = []
    for fmt, converter in PREPARE_FORMATS.items():
        lines += [f"{fmt}: {_first_line(converter)}", *_option_lines(converter, skip=("out",)), ""]
    return lines + LABELLED_SUBSET_HELP


def command_help(commands: type, command: str, argv: Sequence[str], usage: str) -> str:
    """Usage of one command: its description, options and their defaults (``usage``: as in :func:`main_help`)."""
    func = getattr(commands, command)
    usage = [line.strip() for line in usage.splitlines() if line.strip().startswith(f"monai-uda {command}")]
    lines = ["usage: " + usage[0] if usage else f"usage: monai-uda {command} [OPTIONS]", *usage[1:], ""]
    lines += [inspect.getdoc(func) or "", "", "options:"]
    if command in ("train", "infer"):
        lines += _bundle_help(command, func, argv)
    elif command == "prepare":
        lines += _prepare_help()
    elif command == "benchmark":
        from monai_uda.benchmark import main as benchmark_main

        lines += _option_lines(benchmark_main) + ["", inspect.getdoc(benchmark_main) or ""]
    else:
        lines += _option_lines(func)
    lines += ["", _FOOTER]
    return "\n".join(lines)
