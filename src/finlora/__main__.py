"""`python -m finlora`, which is what `torchrun -m finlora` runs."""

from torch.distributed.elastic.multiprocessing.errors import record

from finlora.cli import main

if __name__ == "__main__":
    # `record` hands an uncaught exception to torchrun, which names the failing rank and
    # shows its traceback in the job summary; outside torchrun it only re-raises.
    raise SystemExit(record(main)())
