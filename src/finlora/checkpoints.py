"""Resumable training: complete checkpoints, the run they belong to, resuming the latest.

A checkpoint counts once the Trainer has written all of it (`MarkCheckpointComplete`); a
`--checkpoint_dir` remembers the run's fingerprint (training settings and data), so another
run's checkpoints are never resumed. S3 checkpoints are mirrored to and from a local copy of
this layout by `finlora.cloud.run`.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

from transformers import TrainerCallback
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

from finlora.artifacts import write_json
from finlora.config import TrainConfig
from finlora.data import PreparedData
from finlora.errors import FinloraError

log = logging.getLogger(__name__)


CHECKPOINT_COMPLETE = "finlora_checkpoint_complete"
CHECKPOINT_RUN = "finlora_run.json"
# Settings that say where things live or are reported, not what is trained.
NOT_TRAINING_SETTINGS = {
    "data", "validation_data", "test_data", "data_dir", "output_dir", "checkpoint_dir",
    "use_s3", "s3_bucket", "s3_key", "s3_endpoint_url", "mlflow", "report_to", "tracking_uri",
    "experiment_name", "run_name", "register_model",
}  # fmt: skip


class MarkCheckpointComplete(TrainerCallback):
    """Mark a checkpoint complete once the Trainer has written all of it (and rotated)."""

    def on_save(self, args, state, control, **kwargs):
        folder = Path(args.output_dir) / f"{PREFIX_CHECKPOINT_DIR}-{state.global_step}"
        if folder.is_dir():
            (folder / CHECKPOINT_COMPLETE).write_text(f"{state.global_step}\n")


def run_fingerprint(config: TrainConfig, data: PreparedData) -> str:
    """What makes checkpoints reusable: the training settings and the data's content."""
    settings = {k: v for k, v in config.to_dict().items() if k not in NOT_TRAINING_SETTINGS}
    hashes = {split: f.get("sha256") for split, f in data.info.get("files", {}).items()}
    payload = json.dumps({"settings": settings, "data": hashes}, sort_keys=True, default=str)
    return hashlib.sha256(payload.encode()).hexdigest()


def checkpoint_step(path: Path) -> int:
    return int(path.name.rsplit("-", 1)[1])


def resume_point(checkpoint_dir: Path, fingerprint: str, tidy: bool = True) -> Path | None:
    """The latest complete checkpoint of this same run, after removing half-written ones.

    Only one process may `tidy` (delete, record, re-point); the other ranks of a distributed
    run just read.
    """
    run_file = checkpoint_dir / CHECKPOINT_RUN
    if run_file.is_file() and json.loads(run_file.read_text())["fingerprint"] != fingerprint:
        raise FinloraError(
            f"--checkpoint_dir {checkpoint_dir} holds checkpoints of a different run (other "
            "settings or data); use an empty --checkpoint_dir or delete that one"
        )
    if tidy:
        run_file.write_text(json.dumps({"fingerprint": fingerprint}) + "\n")
    complete = []
    for folder in checkpoint_dir.glob(f"{PREFIX_CHECKPOINT_DIR}-*"):
        if (folder / CHECKPOINT_COMPLETE).is_file():
            complete.append(folder)
        elif tidy:
            log.warning("removing half-written checkpoint %s", folder)
            shutil.rmtree(folder, ignore_errors=True)
    if not complete:
        return None
    latest = max(complete, key=checkpoint_step)
    # The best checkpoint is recorded as an absolute path; the directory may have moved
    # (downloaded from S3, restored by SageMaker), so point it at this copy.
    state_file = latest / "trainer_state.json"
    state = json.loads(state_file.read_text())
    if tidy and state.get("best_model_checkpoint"):
        state["best_model_checkpoint"] = str(
            checkpoint_dir / Path(state["best_model_checkpoint"]).name
        )
        write_json(state_file, state)  # the only checkpoint to resume from: never half-written
    log.info("resuming from %s (step %d)", latest, checkpoint_step(latest))
    return latest


@contextlib.contextmanager
def checkpoint_space(checkpoint_dir: str | Path | None) -> Iterator[Path]:
    """The given checkpoint directory (kept), or a temporary one for a non-resumable run."""
    if checkpoint_dir is None:
        with tempfile.TemporaryDirectory(prefix="finlora-checkpoints-") as tmp:
            yield Path(tmp)
        return
    path = Path(checkpoint_dir).resolve()
    path.mkdir(parents=True, exist_ok=True)
    yield path
