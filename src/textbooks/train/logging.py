"""Loggers: a CSV log that survives resumes, W&B that works without an account; what a run prints (a progress
bar in steps, none of the lines a user cannot act on)."""

from __future__ import annotations

import csv
import logging
import netrc
import os
import sys
import uuid
import warnings
from pathlib import Path
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import RichProgressBar, TQDMProgressBar
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
    advertisement for its cloud logger, its "GPU/TPU/HPU available" lines and "`Trainer.fit` stopped:
    `max_steps=N` reached" (the run ending as planned), the ``LeafSpec`` deprecation that Lightning's own
    pytree code triggers with this torch (a warning per run, fixed upstream, not in the user's code), and the
    hint to prepend ``srun`` on a machine where SLURM is installed (SLURM runs go through the submitit
    launcher). Lightning's warnings (a GPU there but unused, ...) stay."""
    for name in ("lightning.pytorch.utilities.rank_zero", "lightning.fabric.utilities.rank_zero"):
        lg = logging.getLogger(name)  # where rank_zero_info logs (whichever of the two imported last)
        if not any(isinstance(f, _DropRecords) for f in lg.filters):
            # the accelerators Lightning found and used, on every run: the run's own line says its devices,
            # and Lightning warns by itself when a GPU is there but unused; and the normal end of a run
            lg.addFilter(
                _DropRecords(
                    "litlogger",
                    "GPU available: ",
                    "TPU available: ",
                    "HPU available: ",
                    "`Trainer.fit` stopped: `max_steps=",
                )
            )
    warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\)", category=FutureWarning)
    # on a machine with SLURM installed, outside a job: runs on SLURM go through hydra/launcher=slurm (submitit)
    warnings.filterwarnings(
        "ignore", message=r"The `srun` command is available on your system but is not used"
    )


class _Steps:
    """The bar's count: optimizer steps of the run (``max_steps``), not the batches of one epoch."""

    trainer: Any

    @property
    def total_train_batches(self) -> int | float:  # the bar's total, read at each epoch's start
        return self.trainer.max_steps if self.trainer.max_steps > 0 else float("inf")

    def _get_train_description(self, current_epoch: int) -> str:
        return "train"

    def get_metrics(self, trainer: Any, pl_module: Any) -> dict[str, Any]:
        items = super().get_metrics(trainer, pl_module)  # type: ignore[misc]
        items.pop("v_num", None)  # the logger's version: nothing to read during training
        return items


class _RichSteps(_Steps, RichProgressBar):
    def on_train_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, i: int) -> None:
        super().on_train_batch_end(trainer, pl_module, outputs, batch, i)
        self._update(self.train_progress_bar_id, trainer.global_step)

    _moved: list[tuple[logging.StreamHandler, Any]]

    def _init_progress(self, trainer: Any) -> None:
        # while the bar is live, the console's log lines go through rich's proxy of sys.stdout/err (printed
        # above the bar); a handler keeps the stream it was given, and wrote into the bar's line instead
        super()._init_progress(trainer)
        self._moved = getattr(self, "_moved", [])
        if self._moved or self.progress is None:
            return
        for h in logging.getLogger().handlers:
            if type(h) is logging.StreamHandler:
                for original, proxy in ((sys.__stdout__, sys.stdout), (sys.__stderr__, sys.stderr)):
                    if h.stream is original and proxy is not original:
                        self._moved.append((h, h.setStream(proxy)))

    def _stop_progress(self) -> None:
        super()._stop_progress()
        for h, stream in getattr(self, "_moved", []):
            h.setStream(stream)
        self._moved = []

    def on_validation_epoch_end(self, trainer: Any, pl_module: Any) -> None:
        # hidden when done also after fit (Lightning leaves it after trainer.validate: a second bar under the
        # training's, for the final validation whose loss the run reports)
        super().on_validation_epoch_end(trainer, pl_module)
        if self.is_enabled and self.progress is not None and self.val_progress_bar_id is not None:
            self.progress.update(self.val_progress_bar_id, advance=0, visible=False)
            self.refresh()


class _TQDMSteps(_Steps, TQDMProgressBar):
    def on_train_epoch_start(self, trainer: Any, *args: Any) -> None:
        super().on_train_epoch_start(trainer, *args)
        self.train_progress_bar.set_description("train")
        self.train_progress_bar.n = trainer.global_step

    def on_train_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, i: int) -> None:
        bar = self.train_progress_bar
        if bar is not None and self._should_update(i + 1, bar.total):
            bar.n = trainer.global_step
            bar.set_postfix(self.get_metrics(trainer, pl_module))  # refreshes the bar


def step_progress_bar() -> L.Callback:
    """Lightning's progress bar (rich when installed, else tqdm) for a run measured in optimizer steps: it
    reads ``train 39/39``, the steps done of the run's steps, where Lightning's reads ``Epoch 0/-2``
    (``max_epochs=-1``) over one epoch's batches (micro-batches under accumulation), starting again with
    each pass over the data; the logger's ``v_num`` is left out of its metrics."""
    from lightning.pytorch.callbacks.progress.rich_progress import _RICH_AVAILABLE

    return _RichSteps() if _RICH_AVAILABLE else _TQDMSteps()
