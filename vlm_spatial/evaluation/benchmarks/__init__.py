"""One module per benchmark; importing the package registers them all (see ``base.REGISTRY``)."""
from . import (base, ccbench, countbenchqa, cvbench, gqa, mme, mmmu, mmvp, seedbench,  # noqa: F401
               synthetic, tallyqa, topviewrs, vsr)
from .base import (Benchmark, BenchmarkFileMissing, Sample, get_benchmark,  # noqa: F401
                   list_benchmarks)
