"""Shared set-up for the benchmark scripts: quiet library logs and a fixed thread count."""

from __future__ import annotations


def quiet_torch(threads: int | None) -> int:
    """Silence warnings and Lightning's info logs; set torch's intra-op threads; return the count."""
    import logging
    import warnings

    import lightning  # noqa: F401  (configures its loggers on import; quieted below)
    import torch

    warnings.filterwarnings("ignore")
    for name in ("lightning", "lightning.pytorch", "lightning.fabric"):
        logging.getLogger(name).setLevel(logging.ERROR)
    if threads:
        torch.set_num_threads(threads)
    return torch.get_num_threads()
