"""localpref.log: progress lines where there is no terminal (a log file, CI, a SLURM job)."""

from __future__ import annotations

import io
import re

from localpref.log import Progress


def test_progress_prints_plain_lines_without_a_terminal():
    out = io.StringIO()  # not a TTY, like stdout redirected to a file
    with Progress(4, 1, label="train", unit="steps", every_seconds=0, stream=out) as progress:
        for loss in (0.69, 0.61, 0.5):
            progress.update(loss=loss, note="ok")
    lines = out.getvalue().splitlines()
    assert [line.split("  ")[0] for line in lines] == ["train 2/4 steps", "train 3/4 steps", "train 4/4 steps"]
    assert "loss 0.69" in lines[0] and "note ok" in lines[0] and "loss 0.5" in lines[2]
    assert re.search(r"  [0-9.]+ (s/step|steps/s)  eta \d", lines[0])  # a rate and what is left
    assert lines[2].endswith("done")  # the end says so instead of an eta
    assert "\x1b" not in out.getvalue()  # no terminal control codes in a log


def test_progress_lines_are_periodic_and_can_be_off():
    out = io.StringIO()
    with Progress(100, label="eval", unit="pairs", every_seconds=3600, stream=out) as progress:
        for _ in range(25):
            progress.update(advance=4)
    # the first update and the end only: 3600 s never pass here
    assert [line.split("  ")[0] for line in out.getvalue().splitlines()] == ["eval 4/100 pairs", "eval 100/100 pairs"]
    quiet = io.StringIO()
    with Progress(10, label="eval", enabled=False, stream=quiet) as progress:
        progress.update(advance=10)
    assert quiet.getvalue() == ""


def test_training_prints_progress_for_each_long_phase(tmp_path, capsys, monkeypatch):
    # Reference precomputation (16 training and 4 held-out pairs), evaluation and training each
    # print their lines when stdout is not a terminal (here: pytest's capture).
    from hydra import compose, initialize_config_dir

    from localpref.models import cache_root, smollm2_dir
    from localpref.train import CONF_DIR, train

    smollm2_dir()
    (tmp_path / "cache").mkdir()
    (tmp_path / "cache" / "models").symlink_to(cache_root() / "models")
    monkeypatch.setenv("LOCALPREF_CACHE", str(tmp_path / "cache"))
    capsys.readouterr()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose("config", overrides=["debug=tiny", f"run_dir={tmp_path / 'run'}", "reference=precomputed",
                                           "trainer.progress=true", "trainer.progress_every=0"])
    train(cfg)
    lines = capsys.readouterr().out.splitlines()
    for start in ("reference 16/16 pairs", "reference 4/4 pairs", "eval 4/4 pairs", "train 1/2 steps",
                  "train 2/2 steps"):
        assert any(line.startswith(start) for line in lines), start
    assert any(line.startswith("train 2/2 steps  loss ") for line in lines)
