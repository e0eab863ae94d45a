"""Export a bundle's inference network (TorchScript or ``torch.export``) and check it against eager.

The exported network is the one the bundle's ``inference.yaml`` runs in its sliding window
(``network_def``): CellSegUDA's segmenter U-Net, AD-GAN's image -> mask translator (generator
wrapped by :class:`~monai_uda.networks.adain.DomainTranslator`). Both are plain tensor ->
tensor networks, so MONAI's ``verify_net_in_out`` applies. Mask R-CNN bundles (CyC-PDAM,
DARCNN) return lists of dicts per image and are not exported.

    python -m monai_uda.export bundles/cellseg_uda runs/cellseg_uda/model.ts --ckpt_path runs/cellseg_uda/model.pt
    python -m monai_uda.export bundles/ad_gan runs/ad_gan/model.pt2 --ckpt_path runs/ad_gan/model.pt --method export

For CellSegUDA MONAI's own command gives the same TorchScript file:
``python -m monai.bundle ckpt_export network_def --filepath model.ts --ckpt_file model.pt
--key_in_ckpt segmenter --meta_file .../metadata.json --config_file .../inference.yaml``.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from monai.bundle import ConfigParser
from monai.data.torchscript_utils import save_net_with_metadata

from monai_uda.errors import UDAInputError
from monai_uda.files import atomic_write
from monai_uda.networks.weights import load_network_weights

__all__ = ["METHODS", "export_bundle", "load_exported"]

METHODS = ("torchscript", "export")


def _input_shape(parser: ConfigParser) -> tuple[int, ...]:
    """``(2, C, *spatial)`` from ``metadata.json``'s ``network_data_format`` (batch 2: a dynamic batch)."""
    image = parser.get("_meta_#network_data_format#inputs#image", {})
    if "num_channels" not in image or "spatial_shape" not in image:
        raise UDAInputError("metadata.json has no network_data_format inputs image; pass input_shape")
    return (2, int(image["num_channels"]), *(int(s) for s in image["spatial_shape"]))


def _save_atomic(path: Path, write: Any) -> None:
    with atomic_write(path, what="export") as tmp:
        write(str(tmp))


def load_exported(path: str | Path) -> torch.nn.Module:
    """Load an exported network: TorchScript (``.ts``) or ``torch.export`` program (``.pt2``), on the CPU."""
    path = Path(path)
    if not path.is_file():
        raise UDAInputError("exported model does not exist", path)
    if path.suffix == ".pt2":
        return torch.export.load(str(path)).module()
    return torch.jit.load(str(path), map_location="cpu")


def _load_network(
    bundle_dir: str | Path, ckpt_path: str | None, config_files: Sequence[str], net_id: str, overrides: dict[str, Any]
) -> tuple[ConfigParser, torch.nn.Module]:
    """The bundle's parsed configs and its ``net_id`` network on CPU in eval mode, with the trained weights."""
    configs = Path(bundle_dir) / "configs"
    if not (configs / "metadata.json").is_file():
        raise UDAInputError("not a bundle (no configs/metadata.json)", bundle_dir)
    parser = ConfigParser()
    parser.read_meta(str(configs / "metadata.json"))
    parser.read_config([str(configs / name) for name in config_files])
    if ckpt_path is not None:
        overrides["ckpt_path"] = str(ckpt_path)
    parser.update(overrides)
    ckpt_key = parser.get("segmenter#ckpt_key") if parser.get("segmenter") else None
    network = parser.get_parsed_content(net_id)
    if ckpt_path is not None and ckpt_key is not None:
        load_network_weights(network, ckpt_path, ckpt_key)
    return parser, network.cpu().eval()


def _writer(
    method: str, network: torch.nn.Module, example: torch.Tensor, parser: ConfigParser
) -> Callable[[str], None]:
    """A function writing ``network`` traced (TorchScript with the bundle's metadata) or exported to a file."""
    if method == "torchscript":
        traced = torch.jit.trace(network, example)
        config = json.dumps(parser.get(), default=str).encode()

        def write(tmp: str) -> None:
            with open(tmp, "wb") as stream:
                save_net_with_metadata(
                    traced, stream, meta_values=parser.get("_meta_"), more_extra_files={"inference.json": config}
                )

        return write
    batch = torch.export.Dim("batch", min=1, max=4096)
    program = torch.export.export(network, (example,), dynamic_shapes=({0: batch},))

    def write(tmp: str) -> None:
        torch.export.save(program, tmp)

    return write


def export_bundle(
    bundle_dir: str | Path,
    filepath: str | Path,
    ckpt_path: str | None = None,
    method: str = "torchscript",
    config_files: Sequence[str] = ("inference.yaml",),
    net_id: str = "network_def",
    input_shape: Sequence[int] | None = None,
    atol: float = 1e-4,
    **overrides: Any,
) -> dict[str, Any]:
    """Export ``net_id`` of a bundle's inference config with its trained weights, then verify it.

    The weights come from ``ckpt_path`` under the config's ``segmenter#ckpt_key`` (CellSegUDA:
    ``segmenter``); configs that load their own weights from ``ckpt_path`` (AD-GAN's generator)
    get it as an override. The exported file is reloaded and must match the eager network on
    a fresh random input within ``atol``.

    Args:
        bundle_dir: the bundle folder (with ``configs/metadata.json``).
        filepath: output; ``.ts`` (TorchScript, with the bundle's metadata and config inside) or
            ``.pt2`` (``torch.export``, dynamic batch).
        ckpt_path: trained weights (``model.pt``); ``None`` exports the config's own initialisation.
        method: ``"torchscript"`` (``torch.jit.trace``) or ``"export"`` (``torch.export.export``).
        config_files: configs (inside ``configs/``) merged in order, e.g. add ``train_cpu.yaml``.
        net_id: config id of the network.
        input_shape: example ``(B, C, *spatial)``; default from ``metadata.json`` with batch 2.
        atol: largest accepted absolute difference between exported and eager outputs.
        overrides: config overrides (e.g. ``widths=[16, 32, 64]`` to match training).

    Returns:
        ``{"filepath", "method", "input_shape", "max_abs_diff"}``.

    Raises:
        UDAInputError: unknown method, missing bundle/checkpoint, or an export that does not match.
    """
    if method not in METHODS:
        raise UDAInputError(f"method must be one of {METHODS}, got {method!r}")
    parser, network = _load_network(bundle_dir, ckpt_path, config_files, net_id, overrides)
    shape = tuple(int(s) for s in (input_shape or _input_shape(parser)))
    example = torch.rand(shape)
    path = Path(filepath)
    with torch.no_grad():
        _save_atomic(path, _writer(method, network, example, parser))
        check = torch.rand((shape[0] + 1, *shape[1:]))
        diff = float((load_exported(path)(check) - network(check)).abs().max())
    if not diff <= atol:
        raise UDAInputError(f"exported network differs from the eager one by {diff:.3g} (> {atol})", path)
    return {"filepath": str(path), "method": method, "input_shape": list(shape), "max_abs_diff": diff}


if __name__ == "__main__":
    import fire

    fire.Fire(export_bundle)
