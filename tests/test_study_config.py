"""The fewest-steers study as config: every part x method x stage composes into the schema and
interpolates its data paths; every method's search space covers its loss's parameters over the
same ranges; every method gets the same number of trials."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from localpref.config import TrainConfig, validate
from localpref.losses import LOSSES
from localpref.train import CONF_DIR

PARTS = sorted(p.stem for p in (CONF_DIR / "part").glob("*.yaml"))
METHODS = sorted(p.stem for p in (CONF_DIR / "method").glob("*.yaml"))
SEARCH = CONF_DIR / "search" / "tune"
TINY = "tiny-ranges-systematic"


def _compose(overrides: list[str], hydra: bool = False):
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose("config", overrides=["experiment=fewest_steers", *overrides], return_hydra_config=hydra)


def test_every_part_lists_methods_that_exist_and_can_be_tuned():
    assert len(PARTS) >= 3
    for part in PARTS:
        cfg = OmegaConf.to_object(_compose([f"part={part}"]))
        study = cfg.study
        # >= 5 independent builds of a tiny task model; >= 3 replicates (seeds and train subsets) of SmolLM2
        assert study.part == part and study.builds >= (5 if cfg.model.source == "tiny_task" else 3), part
        assert study.methods and set(study.curve_methods) <= set(study.methods), part
        assert set(study.methods) <= set(METHODS) and "base" not in study.methods
        assert all((SEARCH / f"{m}.yaml").exists() for m in study.methods), part


@pytest.mark.parametrize("stage", ["tune", "final", "base"])
def test_parts_methods_and_stages_compose_and_interpolate_the_builds_files(stage, tmp_path):
    for method in ["base"] if stage == "base" else ["localized", "sft_span", "control", "unlikelihood"]:
        cfg = _compose([f"part={TINY}", f"method={method}", f"stage={stage}", f"study.out={tmp_path}",
                        "model.build=3"], hydra=True)
        sweeper = OmegaConf.to_container(cfg.hydra.sweeper)
        OmegaConf.set_struct(cfg, False)
        del cfg["hydra"]
        typed: TrainConfig = OmegaConf.to_object(cfg)
        collect = tmp_path / TINY / "collect"
        train_file = "train_control_b3.jsonl" if method == "control" else "train_b3.jsonl"
        split = "val" if stage == "tune" else "heldout"
        assert (typed.data.path, typed.data.eval_path) == (str(collect / train_file), str(collect / f"{split}_b3.jsonl"))
        assert typed.steer_eval.split == split and typed.study.stage == stage and typed.study.method == method
        assert typed.data.cost_share == (None if method == "control" else 1.0)
        if stage == "tune":
            assert sweeper["_target_"].endswith("OptunaSweeper") and typed.tune.metric == "eval/steer/steers_to_verify"
            assert sweeper["params"] == yaml.safe_load((SEARCH / f"{method}.yaml").read_text())
        else:  # a final or base run sweeps only what the command line gives (builds), never a search space
            assert sweeper["_target_"].endswith("BasicSweeper") and not sweeper["params"]
        (collect).mkdir(parents=True, exist_ok=True)
        for f in (train_file, f"{split}_b3.jsonl"):
            (collect / f).write_text("")
        validate(typed)  # the files exist: the run would start


def test_search_spaces_cover_each_losss_parameters_over_the_same_ranges():
    shared: dict[str, str] = {}
    for method in [m for m in METHODS if m != "base"]:
        space = yaml.safe_load((SEARCH / f"{method}.yaml").read_text())
        loss = OmegaConf.to_object(_compose([f"method={method}"])).loss
        uses_beta = loss.objective == "preference" and LOSSES[loss.loss_type].uses_beta
        assert ("loss.beta" in space) == uses_beta, method
        assert {"trainer.lr", "trainer.epochs"} <= set(space), method
        if method == "rpo":
            assert "loss.sft_weight" in space  # what RPO adds to localized DPO is a tuned weight
        if method == "unlikelihood":
            assert "loss.params.ul_weight" in space
        for key, value in space.items():
            assert shared.setdefault(key.split(".")[-1] if "weight" in key else key, value) == value, (method, key)


def test_a_parts_own_ranges_go_over_its_methods_and_only_when_tuning():
    cfg = _compose(["part=smollm2-style", "method=localized", "stage=tune"], hydra=True)
    assert cfg.hydra.sweeper.params["trainer.epochs"] == "interval(1, 4)"  # the part's, over the method's 1-8
    assert cfg.hydra.sweeper.params["loss.beta"] == "tag(log, interval(0.03, 3.0))"  # the method's
    cfg = _compose(["part=smollm2-style", "method=localized", "stage=final"], hydra=True)
    assert not cfg.hydra.sweeper.params


def test_every_method_gets_the_same_number_of_trials():
    trials = set()
    for method in [m for m in METHODS if m != "base"]:
        cfg = _compose([f"part={TINY}", f"method={method}", "stage=tune"], hydra=True)
        trials.add((cfg.hydra.sweeper.n_trials, cfg.hydra.sweeper.sampler.n_startup_trials, cfg.hydra.sweeper.sampler.seed))
    assert len(trials) == 1 and next(iter(trials))[0] >= 10
    for path in [*(CONF_DIR / "method").glob("*.yaml"), *(CONF_DIR / "part").glob("*.yaml"), *SEARCH.glob("*.yaml")]:
        assert "n_trials" not in Path(path).read_text(), path  # only conf/stage/tune.yaml sets the budget
