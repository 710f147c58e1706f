"""One line naming the machine a benchmark ran on.

Every report states it, so a number can only be compared with another taken on the same kind
of machine (the project runs on 2-core CPU boxes and on lent GPUs; timings differ 10-100x).
"""

from __future__ import annotations

import os
import platform


def _accelerator() -> str:
    try:
        import torch
    except ImportError:
        return "no GPU"
    return torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"


def describe_machine() -> str:
    """Also the 15-minute load average: above the core count, other jobs shared the machine and
    every timing in the report is inflated."""
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return (f"{platform.machine()} {platform.processor() or 'CPU'}, {os.cpu_count()} cores, {memory:.0f} GiB RAM, "
            f"{_accelerator()}, {platform.system()} {platform.release()}, Python {platform.python_version()}, "
            f"load average {os.getloadavg()[2]:.1f} over the last 15 min")
