"""Metrics go to ``<run_dir>/metrics.jsonl`` always, and to wandb when enabled; rank 0 only.

Metric names are ``{split}/{group}/{name}``: ``train/loss``, ``train/rewards/margins``,
``eval/span/logp_accuracy``, ``train/span/tokens``. One JSON object per call:
``{"step": 12, "time": 3.4, "train/loss": 0.69, ...}``.
"""

from __future__ import annotations

import json
import os
import sys
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
    """Progress of one long loop: a rich bar on a terminal, plain periodic lines in a log.

    ``Progress(50, label="train", unit="steps")``, then ``update(advance=1, loss=0.61, ...)``
    per step (keyword fields are shown beside the count) and ``close()``, or use it as a
    context manager. Written to ``stream`` (stdout): when that is a terminal, a bar (nested
    ones, e.g. an evaluation inside training, share one live display); otherwise (a log file,
    CI, a SLURM job) one plain line at the first update, then at most one every
    ``every_seconds`` seconds, and one at the end::

        train 12/50 steps  loss 0.61  3.2 s/step  eta 2m32s

    ``done`` counts units finished before (a resumed run); the rate counts only this run's.
    ``enabled=False`` prints nothing (other ranks, tests).
    """

    def __init__(self, total: int, done: int = 0, *, label: str = "progress", unit: str = "",
                 enabled: bool = True, every_seconds: float = 30.0, stream: Any = None):
        self.label, self.total, self.unit, self.done = label, total, unit, done
        self.enabled, self.every_seconds = enabled, every_seconds
        self.stream = stream if stream is not None else sys.stdout
        self.start, self.start_done = time.monotonic(), done
        self.printed_at: float | None = None  # time of the last plain line
        self.printed_done = done
        self.fields: dict[str, Any] = {}
        self.task = None
        if enabled and self.stream.isatty():
            self.task = _LiveBars.add(self)

    def update(self, advance: int = 1, **fields: Any) -> None:
        """``advance`` more units done; ``fields`` (numbers or text) are shown until replaced."""
        self.done += advance
        self.fields.update(fields)
        if not self.enabled:
            return
        if self.task is not None:
            _LiveBars.update(self)
            return
        now = time.monotonic()
        if self.printed_at is None or now - self.printed_at >= self.every_seconds or self.done >= self.total:
            self._print_line(now)

    def line(self, now: float | None = None) -> str:
        """The plain progress line for now."""
        now = time.monotonic() if now is None else now
        parts = [f"{self.label} {self.done}/{self.total}" + (f" {self.unit}" if self.unit else "")]
        parts += [f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in self.fields.items()]
        ran = self.done - self.start_done
        if ran > 0:
            per_unit = (now - self.start) / ran
            one = self.unit[:-1] if self.unit.endswith("s") else (self.unit or "unit")
            parts.append(f"{per_unit:.1f} s/{one}" if per_unit >= 1 else f"{1 / per_unit:.1f} {self.unit or 'units'}/s")
            parts.append("done" if self.done >= self.total else f"eta {_duration(per_unit * (self.total - self.done))}")
        return "  ".join(parts)

    def _print_line(self, now: float) -> None:
        print(self.line(now), file=self.stream, flush=True)
        self.printed_at, self.printed_done = now, self.done

    def close(self) -> None:
        """End the bar, or print the final line if the last one printed is out of date."""
        if self.task is not None:
            _LiveBars.remove(self)
            self.task = None
        elif self.enabled and self.done != self.printed_done:
            self._print_line(time.monotonic())
        self.enabled = False

    def __enter__(self) -> "Progress":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def _duration(seconds: float) -> str:
    """``45s``, ``2m05s``, ``1h07m``."""
    s = int(round(seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"


class _LiveBars:
    """The one rich live display that terminal ``Progress`` bars share (rich allows one at a time)."""

    display = None  # rich.progress.Progress while any bar is open
    open = 0

    @classmethod
    def add(cls, p: Progress):
        if cls.display is None:
            from rich.console import Console
            from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeRemainingColumn
            from rich.progress import Progress as RichProgress

            cls.display = RichProgress(TextColumn("{task.fields[label]}"), BarColumn(), MofNCompleteColumn(),
                                       TextColumn("{task.fields[unit]}"), TimeRemainingColumn(),
                                       TextColumn("{task.description}"), console=Console(file=p.stream))
            cls.display.start()
        cls.open += 1
        return cls.display.add_task("", total=p.total, completed=p.done, label=p.label, unit=p.unit)

    @classmethod
    def update(cls, p: Progress) -> None:
        text = "  ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in p.fields.items())
        cls.display.update(p.task, completed=p.done, description=text)

    @classmethod
    def remove(cls, p: Progress) -> None:
        cls.open -= 1
        if cls.open == 0:  # the last one: stop, leaving the finished bars on screen
            cls.display.stop()
            cls.display = None
        else:  # a nested bar (an evaluation inside training) goes away when done
            cls.display.remove_task(p.task)


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
