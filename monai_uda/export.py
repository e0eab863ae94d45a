"""Export a bundle's inference network (TorchScript or ``torch.export``) and check it against eager.

The exported network is the one the bundle's ``inference.yaml`` runs (``network_def``):
CellSegUDA's segmenter U-Net and AD-GAN's image -> mask translator (generator wrapped by
:class:`~monai_uda.networks.adain.DomainTranslator`) are tensor -> tensor networks, traced
(TorchScript) or exported (``torch.export``, dynamic batch). The Mask R-CNN bundles' detectors
(CyC-PDAM's Mask R-CNN inside ``PDAMDetector``, DARCNN's target branch) become
:func:`~monai_uda.networks.mask_rcnn.inference_detector` modules compiled with
``torch.jit.script``: ``list of (C, H, W) images -> list of {boxes, labels, scores, masks}``,
as torchvision returns them. They are TorchScript only: ``torch.export`` cannot trace the
data-dependent number of boxes after torchvision's NMS. The tiling and instance merging of
``FolderDetector`` stay in Python. Every exported file loads with plain ``torch`` (detectors:
``import torchvision`` first, for its ``nms``/``roi_align`` operators), no ``monai_uda`` needed.

    python -m monai_uda.export bundles/cellseg_uda runs/cellseg_uda/model.ts --ckpt_path runs/cellseg_uda/model.pt
    python -m monai_uda.export bundles/ad_gan runs/ad_gan/model.pt2 --ckpt_path runs/ad_gan/model.pt --method export
    python -m monai_uda.export bundles/cyc_pdam runs/cyc_pdam/model.ts --ckpt_path runs/cyc_pdam/pdam/model.pt

MONAI's ``python -m monai.bundle ckpt_export`` gives the same TorchScript files except for
AD-GAN (its checkpoint holds the generator, not the translator); the per-bundle commands are in
each bundle's ``docs/README.md`` (section "Export").
"""

from __future__ import annotations

import json
import sys
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from monai.bundle import ConfigParser
from monai.data.torchscript_utils import save_net_with_metadata

from monai_uda.errors import UDAInputError, fire_command
from monai_uda.files import atomic_write
from monai_uda.networks.mask_rcnn import inference_detector
from monai_uda.networks.weights import load_network_weights

__all__ = ["METHODS", "export_bundle", "load_exported", "detections_difference"]

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


def _torchscript_writer(module: torch.jit.ScriptModule, parser: ConfigParser) -> Callable[[str], None]:
    """A function writing a TorchScript module with the bundle's metadata and merged config inside."""
    config = json.dumps(parser.get(), default=str).encode()

    def write(tmp: str) -> None:
        with open(tmp, "wb") as stream:
            save_net_with_metadata(
                module, stream, meta_values=parser.get("_meta_"), more_extra_files={"inference.json": config}
            )

    return write


def _writer(
    method: str, network: torch.nn.Module, example: torch.Tensor, parser: ConfigParser
) -> Callable[[str], None]:
    """A function writing ``network`` traced (TorchScript with the bundle's metadata) or exported to a file."""
    if method == "torchscript":
        return _torchscript_writer(torch.jit.trace(network, example), parser)
    batch = torch.export.Dim("batch", min=1, max=4096)
    program = torch.export.export(network, (example,), dynamic_shapes=({0: batch},))

    def write(tmp: str) -> None:
        torch.export.save(program, tmp)

    return write


def detections_difference(
    first: Sequence[dict[str, torch.Tensor]], second: Sequence[dict[str, torch.Tensor]]
) -> float:
    """Largest absolute difference between two detectors' outputs for the same images.

    Every image's ``boxes``, ``labels``, ``scores`` and ``masks`` are compared; a different
    number of images, keys or detections is an infinite difference.
    """
    if len(first) != len(second):
        return float("inf")
    worst = 0.0
    for one, other in zip(first, second):
        if one.keys() != other.keys() or any(one[k].shape != other[k].shape for k in one):
            return float("inf")
        for key, value in one.items():
            if value.numel():
                worst = max(worst, float((value.double() - other[key].double()).abs().max()))
    return worst


def _detector_of(network: torch.nn.Module, method: str) -> torch.nn.Module | None:
    """The scriptable eval-only detector of a Mask R-CNN ``network``; ``None`` for tensor -> tensor networks."""
    try:
        detector = inference_detector(network)
    except UDAInputError:
        return None
    if method != "torchscript":
        raise UDAInputError(
            "Mask R-CNN bundles export with method=torchscript only: torch.export cannot trace the "
            "data-dependent number of boxes after torchvision's NMS"
        )
    return detector


def _export_detector(
    network: torch.nn.Module, detector: torch.nn.Module, parser: ConfigParser, path: Path, shape: tuple[int, ...]
) -> float:
    """Script ``detector`` (the eval path of ``network``), save it with the bundle's metadata, and
    return its largest difference from ``network`` on two random images of ``(C, H, W)`` sizes."""
    if len(shape) != 3:
        raise UDAInputError(f"a detector's input_shape is (C, H, W), got {shape}")
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*torch.jit.script.* is deprecated", category=FutureWarning)
        scripted = torch.jit.script(detector)
    _save_atomic(path, _torchscript_writer(scripted, parser))
    images = [torch.rand(shape), torch.rand(shape[0], shape[1], max(shape[2] * 3 // 4, 1))]
    return detections_difference(load_exported(path)(images), network(images))


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
    ``segmenter``, CyC-PDAM: ``detector``); configs that load their own weights from ``ckpt_path``
    (AD-GAN's generator, DARCNN's network) get it as an override. The exported file is reloaded
    and must match the eager network on fresh random inputs within ``atol`` (detectors: every
    box, label, score and mask of two images of different sizes).

    Args:
        bundle_dir: the bundle folder (with ``configs/metadata.json``).
        filepath: output; ``.ts`` (TorchScript, with the bundle's metadata and config inside) or
            ``.pt2`` (``torch.export``, dynamic batch).
        ckpt_path: trained weights (``model.pt``); ``None`` exports the config's own initialisation.
        method: ``"torchscript"`` (``torch.jit.trace``; detectors: ``torch.jit.script``) or
            ``"export"`` (``torch.export.export``; not for detectors).
        config_files: configs (inside ``configs/``) merged in order, e.g. add ``train_cpu.yaml``.
        net_id: config id of the network.
        input_shape: example ``(B, C, *spatial)``, for detectors one image's ``(C, H, W)``;
            default from ``metadata.json`` (batch 2).
        atol: largest accepted absolute difference between exported and eager outputs.
        overrides: config overrides (e.g. ``widths=[16, 32, 64]`` to match training).

    Returns:
        ``{"filepath", "method", "input_shape", "max_abs_diff"}``.

    Raises:
        UDAInputError: unknown method (or ``export`` for a detector), missing bundle/checkpoint,
            or an export that does not match.
    """
    if method not in METHODS:
        raise UDAInputError(f"method must be one of {METHODS}, got {method!r}")
    parser, network = _load_network(bundle_dir, ckpt_path, config_files, net_id, overrides)
    detector = _detector_of(network, method)
    shape = tuple(int(s) for s in (input_shape or _input_shape(parser)[1 if detector is not None else 0 :]))
    path = Path(filepath)
    with torch.no_grad():
        if detector is not None:
            diff = _export_detector(network, detector, parser, path, shape)
        else:
            _save_atomic(path, _writer(method, network, torch.rand(shape), parser))
            check = torch.rand((shape[0] + 1, *shape[1:]))
            diff = float((load_exported(path)(check) - network(check)).abs().max())
    if not diff <= atol:
        raise UDAInputError(f"exported network differs from the eager one by {diff:.3g} (> {atol})", path)
    return {"filepath": str(path), "method": method, "input_shape": list(shape), "max_abs_diff": diff}


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m monai_uda.export BUNDLE FILEPATH [--ckpt_path ...]``: a bad input is one ``error:`` line, exit 2."""
    return fire_command(export_bundle, "monai_uda.export", argv)


if __name__ == "__main__":
    sys.exit(main())
