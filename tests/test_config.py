"""Every config file composes against the typed schema; every experiment runs; bad configs fail early."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.errors import ConfigCompositionException
from omegaconf import OmegaConf

from localpref.config import TrainConfig, validate
from localpref.train import CONF_DIR, train

# Every group file but the search spaces (conf/search/tune/<method>.yaml and conf/search_part/tune/<part>.yaml:
# the Optuna sweeper's params, chosen by stage=tune; tests/test_study_config.py checks them).
GROUP_FILES = sorted(p for p in CONF_DIR.rglob("*.yaml")
                     if p.parent != CONF_DIR and not {"search", "search_part"} & set(p.parts))
EXPERIMENTS = sorted(p.stem for p in (CONF_DIR / "experiment").glob("*.yaml"))
# An experiment whose steers come from a study's collections runs here on the built-in examples.
EXPERIMENT_DATA = {"fewest_steers": ["data=examples", "data.eval_path=null"]}


def _compose(overrides: list[str], hydra: bool = False):
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose("config", overrides=overrides, return_hydra_config=hydra)


def test_every_config_file_composes():
    # Choosing a file in its group merges it into the schema; to_object would fail on an unknown
    # key or a wrong type. Values the user must give (model=local's path, data=jsonl's path) are
    # supplied, as validate() requires them.
    required = {"model/local": ["model.path=/x"], "data/jsonl": ["data.path=/x"],
                "data/collected": ["data.path=/x", "data.eval_path=/y"]}
    checked = 0
    for path in GROUP_FILES:
        group, name = path.parent.relative_to(CONF_DIR).as_posix(), path.stem
        cfg = _compose([f"{group}={name}", *required.get(f"{group}/{name}", [])], hydra=group in ("launcher", "stage"))
        if group == "stage":  # its Hydra part: the sweeper (tune: Optuna) and where the runs go
            assert cfg.hydra.sweep.dir.startswith(f"{cfg.study.out}/None/runs/"), path  # <out>/<part>/runs/...
            OmegaConf.set_struct(cfg, False)
            del cfg["hydra"]
        if group == "launcher":
            assert cfg.hydra.launcher._target_, path  # the plugin's launcher is selected
            OmegaConf.set_struct(cfg, False)
            del cfg["hydra"]
        typed = OmegaConf.to_object(cfg)
        assert isinstance(typed, TrainConfig)
        checked += 1
    # 4 model + 4 data + 11 loss + 3 reference + 2 peft + 1 trainer + 3 logger + 3 launcher
    # + 1 debug + 4 part + 12 method + 3 stage + experiments: update when a file is added, so none
    # is silently skipped.
    assert checked == len(GROUP_FILES) == 51 + len(EXPERIMENTS)
    assert len(EXPERIMENTS) >= 1


def test_root_config_defaults_are_the_schema_defaults_where_not_overridden():
    cfg = OmegaConf.to_object(_compose([]))
    assert cfg.model.source == "tiny" and cfg.loss.mask == "span" and cfg.reference.kind == "copy"
    assert cfg.peft.kind == "none" and cfg.logger.wandb == "disabled"
    validate(cfg)


def test_loss_variants_inherit_from_localized():
    cfg = _compose(["loss=localized_ipo"])
    assert (cfg.loss.mask, cfg.loss.loss_type, cfg.loss.params) == ("span", "ipo", {"ipo_tau": 0.1})


def test_experiment_sweep_is_declared_in_its_file():
    cfg = _compose(["experiment=ablation_methods"], hydra=True)
    assert cfg.hydra.sweeper.params == {"loss": "sft,dpo,localized", "seed": "0,1,2"}
    assert cfg.model.source == "smollm2" and cfg.peft.kind == "lora"
    # debug=tiny is applied after the experiment, so it wins.
    cfg = _compose(["experiment=ablation_methods", "debug=tiny"])
    assert cfg.model.source == "tiny" and cfg.trainer.max_steps == 2


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_every_experiment_runs_two_steps_on_tiny(experiment, tmp_path):
    cfg = _compose([f"experiment={experiment}", "debug=tiny", f"run_dir={tmp_path}", *EXPERIMENT_DATA.get(experiment, [])])
    train(cfg)
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if "train/loss" in r] == [1, 2]
    assert (tmp_path / "config.yaml").exists()


# -- bad configs fail before training, with a message naming the key --------------------------


def test_unknown_key_is_an_error():
    with pytest.raises(ConfigCompositionException) as e:
        _compose(["loss.betta=0.2"])
    assert "betta" in str(e.value.__cause__ or e.value)


def test_misspelt_key_in_a_yaml_file_is_an_error(tmp_path):
    # A user's own group file with a typo: the schema rejects it at composition.
    conf = tmp_path / "conf"
    (conf / "loss").mkdir(parents=True)
    (conf / "loss" / "mine.yaml").write_text("objective: preference\nbetta: 0.2\n")
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        with pytest.raises(ConfigCompositionException) as e:
            compose("config", overrides=[f"hydra.searchpath=[file://{conf}]", "loss=mine"])
    assert "betta" in repr(e.value) + repr(e.value.__cause__)


def test_missing_required_value_is_an_error(tmp_path):
    cfg = _compose(["data=jsonl", f"run_dir={tmp_path}"])
    with pytest.raises(ValueError, match="data=jsonl needs data.path"):
        train(cfg)
    assert not (tmp_path / "metrics.jsonl").exists()


def test_missing_data_file_is_an_error(tmp_path):
    cfg = _compose(["debug=tiny", "data=jsonl", f"data.path={tmp_path}/nope.jsonl", f"run_dir={tmp_path}"])
    with pytest.raises(FileNotFoundError, match="nope.jsonl"):
        train(cfg)
    assert not (tmp_path / "metrics.jsonl").exists()


def test_model_folder_without_weights_is_an_error(tmp_path):
    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    cfg = _compose(["debug=tiny", "model=local", f"model.path={folder}", f"run_dir={tmp_path}"])
    with pytest.raises(FileNotFoundError, match="no weights"):
        train(cfg)


@pytest.mark.parametrize("override, message", [
    (["loss.mask=spam"], "loss.mask='spam'"),
    (["reference=adapter_disabled"], "needs peft=lora"),
    (["trainer.micro_batch_size=0"], "micro_batch_size"),
])
def test_invalid_values_are_errors(override, message):
    cfg = OmegaConf.to_object(_compose(override))
    with pytest.raises(ValueError, match=message):
        validate(cfg)


def test_task_families_are_checked_against_the_names_the_caller_passes():
    # config.py knows no task family (STYLE.md: ground floors): the names come from localpref.tasks
    from localpref.models import build_model
    from localpref.tasks import family_names

    cfg = OmegaConf.to_object(_compose(["model=tiny_task", "model.family=nope"]))
    with pytest.raises(ValueError, match="model.family='nope' is not one of arith, lists"):
        validate(cfg, families=family_names())
    validate(cfg)  # without the names, only that a family is named
    cfg.model.family = None
    with pytest.raises(ValueError, match="model=tiny_task needs model.family"):
        validate(cfg)
    cfg = OmegaConf.to_object(_compose(["steer_eval.family=nope"]))
    with pytest.raises(ValueError, match="steer_eval.family='nope' is not one of"):
        validate(cfg, families=family_names())
    cfg = OmegaConf.to_object(_compose(["model=tiny_task", "model.family=lists"]))
    with pytest.raises(ValueError, match=r"pass folder=localpref.tasks.pretrain.model_folder\(model_cfg\)"):
        build_model(cfg.model, cfg.peft, seed=0)  # no folder: models.py cannot build a task model itself


def test_wrong_type_is_an_error():
    with pytest.raises(ConfigCompositionException):
        _compose(["trainer.max_steps=many"])


def test_cli_entry_points_exist():
    # `localpref train` hands sys.argv to hydra_main; `python -m localpref.train` runs it too.
    import localpref.train as module

    assert callable(module.hydra_main)
    assert (Path(module.__file__).read_text().rstrip().endswith("hydra_main()"))
