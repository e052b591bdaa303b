"""Metrics go to ``<run_dir>/metrics.jsonl`` always, and to wandb when enabled; rank 0 only.

Metric names are ``{split}/{group}/{name}``: ``train/loss``, ``train/rewards/margins``,
``eval/span/logp_accuracy``, ``train/span/tokens``. One JSON object per call:
``{"step": 12, "time": 3.4, "train/loss": 0.69, ...}``.
"""

from __future__ import annotations

import json
import os
import time
import uuid
from pathlib import Path
from typing import Any, Mapping

import torch

from localpref.config import LoggerConfig


def _scalar(v: Any) -> float | int:
    if isinstance(v, torch.Tensor):
        return v.item()
    return v


class RunLogger:
    """Writes metrics (JSONL + optional wandb). On ranks other than 0 every method is a no-op."""

    def __init__(self, run_dir: Path, cfg: LoggerConfig, config: Mapping[str, Any], *, rank: int = 0):
        self.enabled = rank == 0
        self.path = Path(run_dir) / "metrics.jsonl"
        self.start = time.time()
        self.wandb = None
        if not self.enabled:
            return
        if cfg.wandb not in ("online", "offline", "disabled"):
            raise ValueError(f"logger.wandb must be online|offline|disabled, got {cfg.wandb!r}")
        if cfg.wandb != "disabled":
            import wandb

            # resume="allow" with a stable id: a resumed run continues the same wandb run.
            run_id_file = Path(run_dir) / "wandb_id.txt"
            run_id = run_id_file.read_text().strip() if run_id_file.exists() else uuid.uuid4().hex[:12]
            run_id_file.write_text(run_id)
            self.wandb = wandb.init(project=cfg.project, entity=cfg.entity, name=cfg.name, group=cfg.group,
                                    tags=list(cfg.tags), config=dict(config), dir=str(run_dir),
                                    mode=cfg.wandb, id=run_id, resume="allow")

    def log_metrics(self, step: int, metrics: Mapping[str, Any]) -> None:
        """Append one line to metrics.jsonl and send the same numbers to wandb."""
        if not self.enabled:
            return
        row = {"step": step, "time": round(time.time() - self.start, 3)}
        row.update({k: _scalar(v) for k, v in metrics.items()})
        with open(self.path, "a") as f:
            f.write(json.dumps(row) + "\n")
            f.flush()
            os.fsync(f.fileno())  # a SIGKILL right after must not lose logged steps
        if self.wandb is not None:
            self.wandb.log({k: v for k, v in row.items() if k not in ("step", "time")}, step=step)

    def truncate_after(self, step: int) -> None:
        """Drop rows logged after ``step`` (a resumed run redoes those steps and logs them again)."""
        if not self.enabled or not self.path.exists():
            return
        rows = [line for line in self.path.read_text().splitlines() if line.strip()]
        kept = [line for line in rows if json.loads(line)["step"] <= step]
        tmp = self.path.with_suffix(".jsonl.tmp")
        tmp.write_text("".join(line + "\n" for line in kept))
        os.replace(tmp, self.path)

    def log_table(self, key: str, columns: list[str], rows: list[list[Any]]) -> None:
        """A wandb table (e.g. example steers with their spans); also saved as JSONL beside metrics."""
        if not self.enabled:
            return
        with open(self.path.with_name(f"{key.replace('/', '_')}.jsonl"), "w") as f:
            for r in rows:
                f.write(json.dumps(dict(zip(columns, r))) + "\n")
        if self.wandb is not None:
            import wandb

            self.wandb.log({key: wandb.Table(columns=columns, data=rows)}, step=0)

    def finish(self, summary: Mapping[str, Any] | None = None) -> None:
        if self.wandb is not None:
            for k, v in (summary or {}).items():
                self.wandb.summary[k] = _scalar(v)
            self.wandb.finish()
            self.wandb = None


def span_stats(examples: list) -> dict[str, float]:
    """Mean lengths (tokens) of the training pairs' spans, completions and sequences."""
    n = max(len(examples), 1)
    mean = lambda f: sum(f(e) for e in examples) / n  # noqa: E731
    return {"data/span/chosen_tokens": mean(lambda e: sum(e.chosen_span_mask)),
            "data/span/rejected_tokens": mean(lambda e: sum(e.rejected_span_mask)),
            "data/completion/chosen_tokens": mean(lambda e: sum(e.chosen_completion_mask)),
            "data/sequence/chosen_tokens": mean(lambda e: len(e.chosen_ids))}


def log_examples(logger: RunLogger, steers: list, tokenized: list, tokenizer, n: int) -> None:
    """A table of the first ``n`` training steers with their decoded spans (wandb + JSONL).

    ``tokenized`` comes from ``tokenize_steers(steers, ...)``: each one names its steer by
    position (``source_index``), since ids may be missing or repeated.
    """
    rows = []
    for ex in tokenized[:n]:
        span_c, span_r = ex.span_ids()
        steer = steers[ex.source_index]
        rows.append([ex.id, str(steer.prompt), steer.prefix,
                     tokenizer.decode(span_r), tokenizer.decode(span_c), len(span_r), len(span_c)])
    if rows:
        logger.log_table("examples", ["id", "prompt", "prefix", "rejected_span", "corrected_span",
                                      "rejected_span_tokens", "corrected_span_tokens"], rows)


class Progress:
    """A rich progress bar showing the live loss, reward margin and accuracy."""

    def __init__(self, total: int, done: int, *, enabled: bool):
        self.bar = None
        if enabled:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

            self.bar = Progress(TextColumn("train"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                                TextColumn("{task.description}"))
            self.bar.start()
            self.task = self.bar.add_task("", total=total, completed=done)

    def update(self, row: dict[str, float]) -> None:
        if self.bar is None:
            return
        keys = {"train/loss": "loss", "train/rewards/margins": "margin", "train/rewards/accuracies": "acc"}
        text = "  ".join(f"{short} {row[k]:.4f}" for k, short in keys.items() if k in row)
        self.bar.update(self.task, advance=1, description=text)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.stop()


def summary_table(before: dict[str, float], after: dict[str, float], run_dir: Path) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"held-out metrics ({run_dir})")
    for col in ("metric", "before", "after"):
        table.add_column(col, justify="left" if col == "metric" else "right")
    for key in sorted(after):
        b = before.get(key)
        table.add_row(key, "-" if b is None else f"{b:.4f}", f"{after[key]:.4f}")
    Console().print(table)


def read_metrics(run_dir: str | os.PathLike) -> list[dict[str, Any]]:
    """All rows of a run's metrics.jsonl."""
    with open(Path(run_dir) / "metrics.jsonl") as f:
        return [json.loads(line) for line in f if line.strip()]
