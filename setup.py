"""Build hook: the top-level ``bundles/`` folder ships inside the wheel as ``monai_uda/bundles``.

Everything else is declared in ``pyproject.toml``. Its ``[tool.setuptools]`` tables cannot map a
folder outside the package into it, so this one mapping lives here: the bundles stay at the top
of the repository (the MONAI model-zoo layout) and an installed package still finds them
(:func:`monai_uda.bundle_runner.bundles_dir`).
"""

from setuptools import find_packages, setup

setup(
    packages=[*find_packages(include=["monai_uda*"]), "monai_uda.bundles"],
    package_dir={"monai_uda.bundles": "bundles"},
    package_data={"monai_uda": ["data/presets/*.yaml", "benchmark/configs/*.yaml"], "monai_uda.bundles": ["**/*"]},
)
