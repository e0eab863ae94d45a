"""monai-uda: domain-adaptive cell and nuclei segmentation as MONAI bundles."""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"
__all__ = ["check_command_line", "flag", "word_to_bool"]

_BOOL_WORDS = {"true": True, "false": False, "yes": True, "no": False, "on": True, "off": False, "1": True, "0": False}


def word_to_bool(value: Any) -> Any:
    """``"true"``/``"false"`` (any case; also yes/no, on/off, 1/0) as a bool; any other value unchanged.

    Command lines parsed by fire (``monai-uda ...`` and ``python -m monai.bundle run ...``) keep
    lower-case words as strings, and the string ``"false"`` is true in Python.
    """
    return _BOOL_WORDS.get(value.strip().lower(), value) if isinstance(value, str) else value


def flag(value: Any) -> bool:
    """A boolean config value, whether the config or a command-line override set it.

    The component that takes an on/off setting parses it with this, once (configs pass ``"@resume"``
    as given), so ``--resume false`` given to ``python -m monai.bundle run`` means false.

    Raises:
        ValueError: ``value`` is neither a bool, 0/1, nor one of the words above.
    """
    value = word_to_bool(value)
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    raise ValueError(f"expected true or false, got {value!r}")


def check_command_line() -> None:
    """Refuse unknown or wrong-typed overrides of ``python -m monai.bundle run`` (first step of ``initialize``).

    See :func:`monai_uda.options.check_command_line`; does nothing in any other process.
    """
    from monai_uda.options import check_command_line as check

    check()


from monai_uda.options import install_excepthook, under_bundle_run  # noqa: E402  (light: no torch, no monai)

if under_bundle_run():  # a bundle config imported us in ``python -m monai.bundle run``: input errors become one line
    install_excepthook()
