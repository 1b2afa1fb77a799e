"""Benchmark configuration: ``pytest bench/ --benchmark-only``.

Every benchmark records in ``benchmark.extra_info``: the provider (odekern backend,
torchdiffeq, torchode, reference), the problem size, and where measured the peak memory.
Speed claims are ratios between providers measured in the same run (see README.md), never
absolute wall-clock thresholds.
"""

import os
import platform

import pytest
import torch



def machine_description() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return f"{cpu}, {os.cpu_count()} cores, torch {torch.__version__}, {torch.get_num_threads()} threads"


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture
def run_bench(benchmark):
    """``run_bench(fn, provider=..., **info)``: pedantic run with warm-up, records extra_info."""

    def go(fn, *, provider: str, rounds: int = 5, warmup_rounds: int = 1, **info):
        benchmark.extra_info.update(provider=provider, machine=machine_description(), **info)
        return benchmark.pedantic(fn, rounds=rounds, warmup_rounds=warmup_rounds, iterations=1)

    return go
