"""Loggers: a CSV log that survives resumes, W&B that works without an account."""

from __future__ import annotations

import csv
import logging
import netrc
import os
import uuid
import warnings
from pathlib import Path
from typing import Any

import lightning as L
from lightning.pytorch.loggers import CSVLogger
from lightning.pytorch.loggers.csv_logs import ExperimentWriter

from textbooks.io import write_bytes_atomic

METRICS = "metrics.csv"


class _AppendingWriter(ExperimentWriter):
    """Lightning's CSV writer deletes an existing metrics.csv; this one continues it."""

    def _check_log_dir_exists(self) -> None:
        path = Path(self.metrics_file_path)
        if path.is_file():
            with open(path, newline="") as f:
                self.metrics_keys = list(csv.DictReader(f).fieldnames or [])

    def _rewrite_with_new_header(self, fieldnames: list[str]) -> None:
        """Lightning's rewrite (new columns) truncates the file before writing it again: a kill in between
        would lose the history. Written beside it and moved over it instead."""
        path = Path(self.metrics_file_path)
        with open(path, newline="") as f:
            rows = list(csv.DictReader(f))
        _replace_rows(path, fieldnames, rows)

    def truncate(self, global_step: int) -> int:
        """Drop rows of optimizer steps after ``global_step`` (logged after the checkpoint a run resumes
        from, and about to be logged again), and a last row a kill cut short. Rows are matched by
        ``train/step``/``val/step``, not by Lightning's internal ``step`` column."""
        path = Path(self.metrics_file_path)
        if not path.is_file():
            return 0
        with open(path, newline="") as f:
            reader = csv.DictReader(f)
            fields = reader.fieldnames or []
            rows = list(reader)

        def keep(r: dict[str, str | None]) -> bool:
            if None in r or None in r.values():  # fewer or more fields than the header: cut short
                return False
            try:
                return not any(r.get(k) and float(r[k]) > global_step for k in ("train/step", "val/step"))  # type: ignore[arg-type]
            except ValueError:  # a number cut short
                return False

        kept = [r for r in rows if keep(r)]
        _replace_rows(path, fields, kept)
        return len(rows) - len(kept)


def _replace_rows(path: Path, fields: list[str], rows: list[dict[str, Any]]) -> None:
    """``path`` holding exactly ``rows``, or as it was if a kill comes first."""
    tmp = path.with_suffix(".tmp")
    with open(tmp, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=fields)
        w.writeheader()
        w.writerows(rows)
    os.replace(tmp, path)


class RunCSVLogger(CSVLogger):
    """``metrics.csv`` directly in the run directory, appended to across resumes."""

    def __init__(self, run_dir: str | os.PathLike) -> None:
        super().__init__(save_dir=str(run_dir), name="", version="")

    def after_save_checkpoint(self, checkpoint_callback: Any) -> None:
        """Flush buffered rows whenever a checkpoint is written, so a kill loses nothing it has."""
        self.save()

    @property
    def experiment(self) -> _AppendingWriter:
        if self._experiment is None:
            self._fs.makedirs(self.root_dir, exist_ok=True)
            self._experiment = _AppendingWriter(log_dir=self.log_dir)
        return self._experiment


def wandb_mode(requested: str = "auto") -> str:
    """``online`` when an API key is configured (env or ~/.netrc), else ``offline``; explicit modes win."""
    if os.environ.get("WANDB_MODE"):
        return os.environ["WANDB_MODE"]
    if requested != "auto":
        return requested
    if os.environ.get("WANDB_API_KEY"):
        return "online"
    try:
        if netrc.netrc().authenticators("api.wandb.ai"):
            return "online"
    except (FileNotFoundError, netrc.NetrcParseError):
        pass
    return "offline"


def wandb_logger(
    run_dir: str | os.PathLike,
    *,
    name: str,
    group: str,
    tags: list[str],
    config: dict[str, Any],
    project: str = "textbooks",
    entity: str | None = None,
    mode: str = "auto",
    rank_zero: bool = True,
    **kwargs: Any,
):
    """A ``WandbLogger`` whose files live in the run directory, resuming the same W&B run on restart.

    Offline runs (no API key) can be uploaded later with ``wandb sync <run_dir>/wandb/offline-run-*``.
    Only rank 0 (``rank_zero``) chooses the run's id and writes it: the other ranks of a distributed run,
    started at the same time on SLURM, would otherwise race it with ids of their own (their loggers never
    open a W&B run).
    """
    from lightning.pytorch.loggers import WandbLogger

    run_dir = Path(run_dir)
    id_file = run_dir / "wandb_id.txt"
    run_id: str | None = None
    if id_file.is_file():
        run_id = id_file.read_text().strip()
    elif rank_zero:
        run_id = uuid.uuid4().hex[:12]
        run_dir.mkdir(parents=True, exist_ok=True)
        write_bytes_atomic(id_file, run_id.encode())
    logger = WandbLogger(
        project=project,
        entity=entity,
        name=name,
        group=group,
        tags=tags,
        id=run_id,
        resume="allow",
        save_dir=str(run_dir),
        mode=wandb_mode(mode),
        config=config,
        **kwargs,
    )
    # Lightning passes anonymous=None to wandb.init, which W&B answers with a deprecation warning on every run
    # ("The anonymous setting has no effect"): a line the user can do nothing about
    logger._wandb_init.pop("anonymous", None)
    return logger


def define_wandb_metrics(logger: Any) -> None:
    """Plot every metric against ``train/tokens_seen`` (the Figure 2.1 axis)."""
    exp = logger.experiment
    exp.define_metric("train/tokens_seen")
    exp.define_metric("*", step_metric="train/tokens_seen", step_sync=True)


class ResumeLogs(L.Callback):
    """On resume, drop CSV rows logged after the checkpoint (they are logged again)."""

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        for lg in trainer.loggers:
            if isinstance(lg, RunCSVLogger) and trainer.is_global_zero:
                lg.experiment.truncate(trainer.global_step)


class _DropRecords(logging.Filter):
    def __init__(self, *needles: str) -> None:
        super().__init__()
        self.needles = needles

    def filter(self, record: logging.LogRecord) -> bool:
        return not any(n in record.getMessage() for n in self.needles)


def quiet_third_party() -> None:
    """Silence what Lightning and torch print on every run that a user cannot act on (idempotent): Lightning's
    advertisement for its cloud logger, the ``LeafSpec`` deprecation that Lightning's own pytree code triggers
    with this torch (a warning per run, fixed upstream, not in the user's code), and the hint to prepend
    ``srun`` on a machine where SLURM is installed (SLURM runs go through the submitit launcher)."""
    for name in ("lightning.pytorch.utilities.rank_zero", "lightning.fabric.utilities.rank_zero"):
        lg = logging.getLogger(name)  # where rank_zero_info logs (whichever of the two imported last)
        if not any(isinstance(f, _DropRecords) for f in lg.filters):
            lg.addFilter(_DropRecords("litlogger"))
    warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\)", category=FutureWarning)
    # on a machine with SLURM installed, outside a job: runs on SLURM go through hydra/launcher=slurm (submitit)
    warnings.filterwarnings(
        "ignore", message=r"The `srun` command is available on your system but is not used"
    )
