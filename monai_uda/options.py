"""Command-line options of the bundle configs: known keys, value types, and one-line errors.

One place checks the ``--key value`` overrides of a run, for ``monai-uda train|infer`` and for
``python -m monai.bundle run`` alike:

- a key that is not an id of the merged configs (``max_iterations``, ``network_def#channels``)
  is refused with the closest known key: ``unknown option --max_iteration (did you mean
  --max_iterations?)``; a new key is accepted only as an argument its component takes
  (``--train_dataset#cache false``);
- a value whose default in the config is a number, or true/false, must be one too (counts such as
  ``max_iterations`` or ``batch_size`` at least 1).

``python -m monai.bundle run`` gives a config no access to its command line, so each bundle
config that users run calls :func:`check_command_line` first in its ``initialize`` list, which
reads ``sys.argv``. Importing :mod:`monai_uda` from such a config also installs
:func:`excepthook`, which turns an input error anywhere in the run into one ``error:`` line and
exit code 2 (the full traceback too when ``MONAI_UDA_DEBUG=1``).
"""

from __future__ import annotations

import difflib
import os
import re
import sys
import traceback
from collections.abc import Iterable, Mapping, Sequence
from functools import lru_cache
from types import TracebackType
from typing import Any

from monai_uda.errors import UDAInputError, report_user_error, user_error

__all__ = [
    "check_command_line",
    "check_options",
    "check_value",
    "config_defaults",
    "excepthook",
    "install_excepthook",
    "parse_argv",
    "parse_bundle_argv",
    "under_bundle_run",
]

#: arguments of ``monai.bundle run`` (and of the workflow it creates) that are not config overrides
BUNDLE_RUN_ARGS = frozenset(
    {"run_id", "init_id", "exec_id", "final_id", "meta_file", "config_file", "logging_file", "tracking",
     "args_file", "workflow_type", "properties_path", "workflow_name"}
)

#: whole-number options that count something and so must be at least 1
_COUNT = re.compile(r"(^max_iterations|_iterations|interval|batch_size|^channels|width|blocks|^num_masks|per_epoch"
                    r"|^detections_per_\w+|^instance_proposals|^projection_dim|^mmd_grid)$")
#: whole-number options where 0 means "none" (checked before :data:`_COUNT`)
_ZERO_ALLOWED = frozenset({"warmup_iterations", "constant_iterations"})

#: environment switch that adds the full traceback to the ``error:`` line
DEBUG_ENV = "MONAI_UDA_DEBUG"


def _flatten(node: Any, prefix: str, out: dict[str, Any]) -> None:
    """Every id of a config tree (``a``, ``a#b``, ``a#0``) mapped to its raw value."""
    items = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else ()
    for key, value in items:
        name = f"{prefix}{key}"
        out[name] = value
        _flatten(value, f"{name}#", out)


@lru_cache(maxsize=8)
def _defaults(files: tuple[str, ...]) -> dict[str, Any]:
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config(list(files))
    out: dict[str, Any] = {}
    _flatten(parser.get(), "", out)
    return out


def config_defaults(files: str | Sequence[str]) -> dict[str, Any]:
    """Every id of the merged config ``files`` (``a``, ``a#b``) with its unevaluated default.

    Raises:
        UDAInputError: a config file is missing or not valid YAML/JSON.
    """
    listed = [str(files)] if isinstance(files, str) else [str(f) for f in files]
    if len(listed) == 1 and "," in listed[0] and not os.path.isfile(listed[0]):
        listed = [f.strip() for f in listed[0].split(",")]
    for name in listed:
        if not os.path.isfile(name):
            raise UDAInputError("config file does not exist", name)
    try:
        return _defaults(tuple(listed))
    except Exception as exc:  # YAML/JSON syntax: name the files, not the parser's internals
        raise UDAInputError(f"cannot read config ({type(exc).__name__}: {exc})", ", ".join(listed)) from exc


def _normalise(key: str) -> str:
    """A key as ``monai.bundle`` reads it: ``::`` and ``#`` both separate ids; fire turns ``-`` into ``_``."""
    return str(key).replace("::", "#").replace("-", "_")


def check_value(key: str, value: Any, default: Any) -> None:
    """Refuse ``value`` for option ``key`` when its type does not fit the config's ``default``.

    An int default asks for a whole number (>= 1 for counts such as ``max_iterations``,
    ``batch_size``, ``ckpt_interval``; >= 0 otherwise), a float default for a number, a bool
    default for true/false. Expressions (``$...``) and references (``@...``) are not checked.

    Raises:
        UDAInputError: ``--key must be ..., got VALUE``.
    """
    from monai_uda import word_to_bool

    if isinstance(value, str) and value[:1] in ("$", "@", "%"):
        return
    if isinstance(default, bool):
        word = word_to_bool(value)
        if not (isinstance(word, bool) or (type(word) is int and word in (0, 1))):
            raise UDAInputError(f"--{key} must be true or false, got {value!r}")
    elif isinstance(default, int):
        least = 1 if _COUNT.search(key) and key not in _ZERO_ALLOWED else 0
        if type(value) is not int or value < least:
            raise UDAInputError(f"--{key} must be a whole number >= {least}, got {value!r}")
    elif (
        isinstance(default, float)
        and (isinstance(value, bool) or not isinstance(value, (int, float)))
        and not _float_word(value)
    ):
        raise UDAInputError(f"--{key} must be a number, got {value!r}")


def _float_word(value: Any) -> bool:
    """``nan``, ``inf``, ``-inf``: numbers python-fire leaves as strings."""
    try:
        float(value)
    except (TypeError, ValueError):
        return False
    return isinstance(value, str)


def _known(key: str, defaults: Mapping[str, Any]) -> bool:
    """An id of the configs (``a``, ``a#b``), of the metadata (``_meta_#...``) or an argument of a component.

    ``--train_dataset#cache false`` adds an argument the config leaves at its default: allowed when
    the component's ``_target_`` takes it (or takes ``**kwargs``, or cannot be looked up here).
    """
    if key in defaults or key.startswith("_meta_"):
        return True
    parent, _, name = key.rpartition("#")
    component = defaults.get(parent)
    if not (isinstance(component, dict) and isinstance(component.get("_target_"), str)):
        return False
    return name in ("_disabled_", "_requires_", "_desc_", "_mode_") or _accepts(component["_target_"], name)


def _accepts(target: str, name: str) -> bool:
    """Whether the callable ``target`` (a dotted path or a MONAI short name) takes argument ``name``."""
    import inspect
    from pydoc import locate

    from monai.bundle.config_item import ComponentLocator

    if target[:1] in ("$", "@", "%"):
        return True
    module = ComponentLocator().get_component_module_name(target)
    found = locate(f"{module}.{target}" if isinstance(module, str) else target)
    try:
        params = inspect.signature(found).parameters.values() if found is not None else None
    except (TypeError, ValueError):
        params = None
    return params is None or any(p.name == name or p.kind is p.VAR_KEYWORD for p in params)


def _referenced(defaults: Mapping[str, Any], key: str) -> Any:
    """The default of ``key``, following plain references (``cyclegan_iterations: "@max_iterations"``)."""
    value, seen = defaults[key], {key}
    while isinstance(value, str) and value.startswith("@") and value[1:] in defaults and value[1:] not in seen:
        seen.add(value[1:])
        value = defaults[value[1:]]
    return value


def check_options(overrides: Mapping[str, Any], defaults: Mapping[str, Any], own: Iterable[str] = ()) -> None:
    """Refuse an unknown or wrong-typed option before any work.

    Args:
        overrides: ``--key value`` options as parsed (``max_iterations=5``).
        defaults: the config ids and their defaults (:func:`config_defaults`).
        own: further option names of the command (e.g. ``bundle``, ``budget_preset``).

    Raises:
        UDAInputError: ``unknown option --KEY (did you mean --NEAR?)`` or a value of the wrong type.
    """
    own = set(own)
    for raw, value in overrides.items():
        key = _normalise(raw)
        if key in own:
            continue
        if not _known(key, defaults):
            near = difflib.get_close_matches(key, [*own, *(k for k in defaults if not k.startswith("_"))], n=1)
            hint = f" (did you mean --{near[0]}?)" if near else ""
            raise UDAInputError(f"unknown option --{raw}{hint}")
        if key in defaults:
            check_value(key, value, _referenced(defaults, key))


def under_bundle_run(argv: Sequence[str] | None = None) -> bool:
    """Whether this process is ``python -m monai.bundle run ...`` (also as a ``torchrun`` worker)."""
    argv = sys.argv if argv is None else argv
    return len(argv) > 1 and str(argv[0]).replace(os.sep, "/").endswith("monai/bundle/__main__.py") and argv[1] == "run"


def parse_argv(argv: Sequence[str]) -> tuple[list[str], dict[str, Any]]:
    """Positional arguments and ``--key value`` options of a command line, values parsed as python-fire does.

    ``5`` -> int, ``[1,2]`` -> list, ``abc`` -> str; ``--key=value`` and ``--key value`` both work, a
    ``--flag`` without value is ``True``; parsing stops at ``--`` (fire's own flags follow it).
    """
    from fire.parser import DefaultParseValue

    positional: list[str] = []
    options: dict[str, Any] = {}
    i = 0
    while i < len(argv):
        token = str(argv[i])
        i += 1
        if token == "--":
            break
        if not token.startswith("--"):
            positional.append(token)
            continue
        key, eq, text = token[2:].partition("=")
        value: Any = True
        if eq:
            value = DefaultParseValue(text)
        elif i < len(argv) and not (str(argv[i]).startswith("--") and len(str(argv[i])) > 2):
            value = DefaultParseValue(str(argv[i]))
            i += 1
        options[key] = value
    return positional, options


def parse_bundle_argv(argv: Sequence[str]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Split ``monai.bundle run`` arguments (after ``run``) into its own arguments and config overrides."""
    positional, options = parse_argv(argv)
    run_args = {k: v for k, v in options.items() if _normalise(k) in BUNDLE_RUN_ARGS}
    if positional:
        run_args.setdefault("run_id", positional[0])
    return run_args, {k: v for k, v in options.items() if _normalise(k) not in BUNDLE_RUN_ARGS}


def _config_of_args_file(path: str) -> Any:
    from monai.bundle import ConfigParser

    try:
        return ConfigParser.load_config_file(path).get("config_file")
    except Exception:  # monai.bundle reports an unreadable args file itself
        return None


def check_command_line(argv: Sequence[str] | None = None) -> None:
    """In ``python -m monai.bundle run``, refuse unknown or wrong-typed ``--key`` overrides.

    Bundle configs call this first in ``initialize`` (``"$monai_uda.check_command_line()"``);
    in any other process (e.g. ``monai-uda train``, which checks its options itself) it does
    nothing.

    Raises:
        UDAInputError: see :func:`check_options`.
    """
    argv = sys.argv if argv is None else argv
    if not under_bundle_run(argv):
        return
    run_args, overrides = parse_bundle_argv(argv[2:])
    files = run_args.get("config_file")
    if files is None and "args_file" in run_args:
        files = _config_of_args_file(str(run_args["args_file"]))
    if files is None:
        return
    check_options(overrides, config_defaults(files if isinstance(files, (list, tuple)) else str(files)))


def excepthook(kind: type[BaseException], error: BaseException, tb: TracebackType | None) -> None:
    """An input error behind ``error`` ends the process with one ``error:`` line and exit code 2 (3 if diverged).

    Other exceptions go to the previous hook. ``os._exit`` after flushing: the process ends
    without running the interpreter's shutdown, whose joins of library threads and pools could
    abort (``terminate called without an active exception``) or wait on work that no longer matters.
    """
    cause = user_error(error)
    if cause is None:
        _previous_hook(kind, error, tb)
        return
    if sys.__stderr__ is not None:  # torch.distributed's hook hands us a buffer it would print after we return
        sys.stderr = sys.__stderr__
    if os.environ.get(DEBUG_ENV, "").strip().lower() in ("1", "true", "yes", "on"):
        traceback.print_exception(kind, error, tb)
    code = report_user_error(cause)
    sys.stderr.flush()
    os._exit(code)


_previous_hook = sys.excepthook


def install_excepthook() -> None:
    """Use :func:`excepthook` for this process's uncaught exceptions (idempotent)."""
    global _previous_hook
    if sys.excepthook is not excepthook:
        _previous_hook = sys.excepthook
        sys.excepthook = excepthook
