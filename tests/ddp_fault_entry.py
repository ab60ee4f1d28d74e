"""Test-only torchrun entry point: `finlora` with a fault injected into one rank.

Used by test_distributed.py instead of a fault hook in the package itself. FAULT_RANK picks
the rank; FAULT is `raise` (an exception at the third training step) or `kill` (SIGKILL at
the third step).
"""

import os
import signal
import sys

from torch.distributed.elastic.multiprocessing.errors import record

from finlora import training
from finlora.cli import main

RANK = os.environ["RANK"]
FAULT = os.environ["FAULT"]


def failing_compute_loss(original):
    def compute_loss(self, *args, **kwargs):
        if self.model.training and self.state.global_step >= 2:
            if FAULT == "kill":
                os.kill(os.getpid(), signal.SIGKILL)
            raise RuntimeError(f"injected failure on rank {RANK}")
        return original(self, *args, **kwargs)

    return compute_loss


if __name__ == "__main__":
    if os.environ["FAULT_RANK"] == RANK:
        trainer = training.WeightedLossTrainer
        trainer.compute_loss = failing_compute_loss(trainer.compute_loss)
    raise SystemExit(record(main)(sys.argv[1:]))
