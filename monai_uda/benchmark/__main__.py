"""``python -m monai_uda.benchmark SPEC``: the process of one benchmark row (started by the runner)."""

from __future__ import annotations

import sys

from monai_uda.benchmark.row import run_spec_file

if __name__ == "__main__":
    run_spec_file(sys.argv[1])
