"""The machine a run happens on: precision it supports, device name, peak memory, versions."""

from __future__ import annotations

import logging
import platform
import resource

import torch

from finlora import __version__

log = logging.getLogger(__name__)


def cpu_supports_bf16() -> bool:
    check = getattr(torch.cpu, "_is_avx512_bf16_supported", None)
    return bool(check and check())


def precision_policy(fp16: bool, bf16: bool) -> str:
    """Map the user's wishes to what this machine can do: 'fp16', 'bf16' or 'fp32'."""
    cuda = torch.cuda.is_available()
    if fp16:
        if cuda:
            return "fp16"
        fallback = "bf16" if cpu_supports_bf16() else "fp32"
        log.warning("--fp16 needs a CUDA GPU and none is available; using %s instead", fallback)
        return fallback
    if bf16:
        if (cuda and torch.cuda.is_bf16_supported()) or (not cuda and cpu_supports_bf16()):
            return "bf16"
        log.warning("--bf16 is not supported on this device; training in fp32")
    return "fp32"


def device_name() -> str:
    if torch.cuda.is_available():
        return f"cuda ({torch.cuda.get_device_name(0)})"
    return f"cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"


def peak_memory_mb() -> float:
    """Peak GPU memory allocated on CUDA; otherwise the process's peak resident set size."""
    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def library_versions() -> dict[str, str]:
    import peft
    import sklearn
    import transformers

    return {
        "finlora": __version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "peft": peft.__version__,
        "scikit-learn": sklearn.__version__,
    }
