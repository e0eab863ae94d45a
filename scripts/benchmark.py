"""Benchmark every method on one setting with the same data, splits, seed and time budget.

    python scripts/benchmark.py --setting "dsb2018_fluo->monuseg" --rows source_only,cellseg_uda \
        --budget-minutes 5 --out bench
    python scripts/benchmark.py --help      # settings and rows

The same as ``monai-uda benchmark``; see :mod:`monai_uda.benchmark`.
"""

from __future__ import annotations

import fire

from monai_uda.benchmark import main

if __name__ == "__main__":
    fire.Fire(main, name="benchmark", serialize=lambda result: None)
