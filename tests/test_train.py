"""The training loop on a tiny model: normalization, references, learning, multirun."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from safetensors.torch import load_file

from localpref.train import CONF_DIR, train

REPO = Path(__file__).resolve().parents[1]


def run(run_dir: Path, *overrides: str) -> list[dict]:
    """Train with debug=tiny plus overrides; return the metrics rows."""
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose("config", overrides=["debug=tiny", f"run_dir={run_dir}", *overrides])
    train(cfg)
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def final_weights(run_dir: Path) -> dict[str, torch.Tensor]:
    latest = (run_dir / "checkpoints" / "latest").read_text().strip()
    return load_file(str(run_dir / "checkpoints" / latest / "trainable.safetensors"))


def assert_same_weights(a: dict, b: dict, atol: float) -> None:
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=atol, msg=k)


SGD = ["trainer.optimizer=sgd", "trainer.lr=1.0", "trainer.schedule=constant", "trainer.max_grad_norm=null",
       "trainer.max_steps=1"]
# Weights after one SGD step (lr 1) of two routes to the same gradient, in fp32. The weights are
# at most ~1 (the RMSNorm gains) and the gradient entries at most ~0.3 (debug=tiny): the routes
# sum each entry's terms in another order, a few ulps of its largest terms, and w - g then rounds
# at ulp(1) = 1.2e-7. 8 such ulps (measured: 4.5e-8). A wrong normalizer or mask is O(|g|).
SGD_WEIGHT_ATOL = 1e-6


@pytest.mark.parametrize("loss", ["localized", "sft"])
def test_accumulation_gives_the_gradient_of_one_big_batch(loss, tmp_path):
    # One SGD step with lr=1 moves the weights by exactly the gradient: 1 micro-batch of 4 pairs,
    # 2 of 2 and 4 of 1 must agree. For SFT the normalizer is the token count, which differs
    # between micro-batches, so a per-micro-batch mean would fail this test.
    runs = {}
    for micro, accum in [(4, 1), (2, 2), (1, 4)]:
        d = tmp_path / f"{micro}x{accum}"
        rows = run(d, f"loss={loss}", *SGD, f"trainer.micro_batch_size={micro}", f"trainer.grad_accum={accum}")
        runs[(micro, accum)] = (final_weights(d), next(r["train/loss"] for r in rows if "train/loss" in r))
    (w, l), *others = runs.values()
    for w2, l2 in others:
        # The same per-pair (localized: log 2 each, exactly) or per-token (SFT, ~11 each) terms,
        # summed in other groups in fp32: a few ulps of the total (rel 1e-6 is 8).
        assert l2 == pytest.approx(l, rel=1e-6)
        assert_same_weights(w, w2, atol=SGD_WEIGHT_ATOL)


def test_first_step_preference_loss_is_log_two(tmp_path):
    # Policy == reference at step 1, so every margin is 0 and -log sigmoid(0) = log 2 (DPO eq. 7).
    rows = run(tmp_path, "loss=dpo")
    first = next(r for r in rows if "train/loss" in r)
    assert first["step"] == 1
    assert first["train/loss"] == pytest.approx(math.log(2), abs=1e-6)  # fp32 log 2: ulp 6e-8
    assert first["train/rewards/margins"] == 0.0  # the copy's forward is the policy's, op for op


def test_logged_lr_is_the_lr_each_step_used(tmp_path):
    # Linear warmup over 2 steps to 1e-4, then linear decay to 0 at step 4 (make_optimizer's factor):
    # steps 1..4 use 1e-4 x (1/2, 2/2, 1 - 0/2, 1 - 1/2).
    rows = run(tmp_path, "trainer.warmup_steps=2", "trainer.lr=1e-4", "trainer.schedule=linear",
               "trainer.max_steps=4")
    logged = [(r["step"], r["train/lr"]) for r in rows if "train/lr" in r]
    assert logged == [(1, pytest.approx(5e-5)), (2, pytest.approx(1e-4)), (3, pytest.approx(1e-4)),
                      (4, pytest.approx(5e-5))]


def test_localized_training_learns_the_corrections(tmp_path):
    # 40 steps at a high lr on 16 steers: the span reward margin on the training pairs must grow
    # and the loss fall below log 2 (a tiny random model can memorize 16 one-token edits).
    rows = run(tmp_path, "trainer.max_steps=40", "trainer.lr=3e-3", "trainer.micro_batch_size=4",
               "trainer.schedule=constant", "loss.beta=0.5")
    train_rows = [r for r in rows if "train/loss" in r]
    assert len(train_rows) == 40
    last = sum(r["train/loss"] for r in train_rows[-5:]) / 5
    assert last < 0.5 < math.log(2)
    assert train_rows[-1]["train/rewards/margins"] > 0.5
    assert train_rows[-1]["train/epoch"] >= 9  # 16 pairs / 4 per step: wrapped around epochs


@pytest.mark.parametrize("loss", ["localized", "dpo"])
def test_precomputed_reference_equals_frozen_copy(loss, tmp_path, monkeypatch):
    from localpref.models import cache_root, smollm2_dir

    smollm2_dir()  # converted once in the real cache; the private cache below links to it
    (tmp_path / "cache").mkdir()
    (tmp_path / "cache" / "models").symlink_to(cache_root() / "models")
    monkeypatch.setenv("LOCALPREF_CACHE", str(tmp_path / "cache"))
    run(tmp_path / "copy", f"loss={loss}", *SGD, "reference=copy")
    rows = run(tmp_path / "pre", f"loss={loss}", *SGD, "reference=precomputed")
    # Same numbers by a different route: cached fp32 log-probs vs a live frozen copy. Not bit for
    # bit: the cache is scored in batches of 8 (reference.batch_size), the copy in the training
    # micro-batches, and a matmul row's rounding may depend on the batch it is in. With AdamW
    # (the default) one ulp there could move a weight by up to lr: SGD moves it by the gradient,
    # which those ulps change by ~1e-7 relative.
    assert_same_weights(final_weights(tmp_path / "copy"), final_weights(tmp_path / "pre"),
                        atol=SGD_WEIGHT_ATOL)
    cache = Path(next(r["data/reference_cache"] for r in rows if "data/reference_cache" in r))
    assert cache.parent == tmp_path / "cache" / "reflogps"
    table = load_file(str(cache / "logps.safetensors"))
    assert len(table) == 2 * 16  # chosen and rejected of each training pair
    # Another run over the same model and data (here: the other loss of a sweep) reuses the table.
    stamp = (cache / "logps.safetensors").stat().st_mtime_ns
    other = "dpo" if loss == "localized" else "localized"
    rows2 = run(tmp_path / "pre2", f"loss={other}", *SGD, "reference=precomputed")
    assert next(r["data/reference_cache"] for r in rows2 if "data/reference_cache" in r) == str(cache)
    assert (cache / "logps.safetensors").stat().st_mtime_ns == stamp


def _hand_pairs() -> list:
    """Two tokenized pairs over a 256-token vocabulary (for models built from tiny_llama_config)."""
    from localpref.data.tokenize import TokenizedSteer

    def pair(ids: list[int], chosen: int, rejected: int) -> TokenizedSteer:
        n = len(ids) + 1
        span = [i == len(ids) - 1 for i in range(n)]
        completion = [i >= 2 for i in range(n)]
        c, r = ids[:-1] + [chosen, ids[-1]], ids[:-1] + [rejected, ids[-1]]
        return TokenizedSteer(c, r, span, span, completion, completion, prefix_len=len(ids) - 1, prompt_len=2)

    return [pair([3, 14, 15, 92, 65], 35, 89), pair([27, 18, 28, 18, 28, 45], 90, 45)]


def test_precomputed_cache_is_keyed_on_the_model_config(tmp_path, monkeypatch):
    # Two tiny models that differ only in their head count have weights of the same shapes, and
    # the same seed makes them equal; their log-probs differ all the same. Each must get its own table.
    from transformers import LlamaForCausalLM

    from localpref.collate import collate_padded
    from localpref.models import tiny_llama_config
    from localpref.reference import PrecomputedReference, TokenScorer, _fingerprint, make_model_reference

    monkeypatch.setenv("LOCALPREF_CACHE", str(tmp_path))
    pairs = _hand_pairs()
    batch = collate_padded(pairs, [0, 1], pad_id=0)
    folders, live = [], []
    for heads in (2, 4):
        config = tiny_llama_config(hidden_size=16, num_heads=heads)
        config.initializer_range = 0.5  # sharper attention, so the head count matters visibly
        torch.manual_seed(0)
        reference = make_model_reference("copy", TokenScorer(LlamaForCausalLM(config), "fp32"))
        cached, folder = PrecomputedReference.build(reference, pairs, 0, batch_size=2, device=torch.device("cpu"))
        # "completion" covers every cached position (span is a subset): the same forward, bit for bit
        live.append(reference.token_logps(batch, "completion"))
        for got, want in zip(cached.token_logps(batch, "completion"), live[-1]):
            torch.testing.assert_close(got, want, rtol=0, atol=0)
        folders.append(folder)
    assert (live[0][0] - live[1][0]).abs().max() > 0.1  # the head count does change the log-probs
    assert folders[0] != folders[1]
    # The attention implementation, the weights' dtype and the autocast precision are in the key too.
    model = reference.scorer.model.to(torch.bfloat16).float()  # weights that bf16 holds exactly
    keys = {_fingerprint(TokenScorer(model, "fp32"), pairs), _fingerprint(TokenScorer(model, "bf16"), pairs)}
    model.config._attn_implementation = "eager"
    keys.add(_fingerprint(TokenScorer(model, "fp32"), pairs))
    keys.add(_fingerprint(TokenScorer(model.to(torch.bfloat16), "fp32"), pairs))  # the same weights, in bf16
    assert len(keys) == 4


def test_adapter_disabled_reference_equals_frozen_copy_with_lora(tmp_path):
    run(tmp_path / "copy", "peft=lora", "reference=copy", "trainer.max_steps=3")
    run(tmp_path / "off", "peft=lora", "reference=adapter_disabled", "trainer.max_steps=3")
    a, b = final_weights(tmp_path / "copy"), final_weights(tmp_path / "off")
    assert all("lora_" in k for k in a)  # only the adapters are trained (and checkpointed)
    # Bit for bit: both references score the same micro-batches; the copy's adapters keep B = 0,
    # so each of its LoRA layers computes base(x) + 0, which is base(x) exactly.
    assert_same_weights(a, b, atol=0)


def test_eval_metrics_before_training_are_the_references(tmp_path):
    rows = run(tmp_path)
    before = next(r for r in rows if "eval/span/margin" in r)
    assert before["step"] == 0
    assert before["eval/span/margin"] == 0.0 and before["eval/span/reward_accuracy"] == 0.5  # all ties
    assert before["eval/drift/kl"] == 0.0  # one forward serves both (is_policy), and the heads are equal
    assert before["eval/span/nll"] > 0 and before["eval/drift/nll"] > 0
    after = [r for r in rows if "eval/span/margin" in r][-1]
    assert after["step"] == 2 and after["eval/drift/kl"] > 0


def test_eval_before_training_is_the_same_with_a_cached_reference(tmp_path, monkeypatch):
    # Before any step the policy is the reference: every span margin must be an exact tie, with
    # a live copy and with cached log-probs alike, also under bf16. Scoring the policy through
    # full bf16 logits and the cache through the fp32-accumulating span-only path made the
    # precomputed run's margins rounding noise (reward accuracy 0.625 vs 0 with a copy).
    from localpref.models import cache_root, smollm2_dir

    smollm2_dir()
    (tmp_path / "cache").mkdir()
    (tmp_path / "cache" / "models").symlink_to(cache_root() / "models")
    monkeypatch.setenv("LOCALPREF_CACHE", str(tmp_path / "cache"))
    before = {}
    for kind in ("copy", "precomputed"):
        rows = run(tmp_path / kind, f"reference={kind}", "trainer.precision=bf16", "data.n_eval=16",
                   "trainer.max_steps=1")
        before[kind] = next(r for r in rows if "eval/span/margin" in r and r["step"] == 0)
    assert [row["eval/span/margin"] for row in before.values()] == [0.0, 0.0]
    for kind, row in before.items():
        assert row["eval/span/reward_ties"] == 1.0, kind  # every pair ties...
        assert row["eval/span/reward_accuracy"] == 0.5, kind  # ...and a tie counts half
    assert before["copy"]["eval/span/nll"] == before["precomputed"]["eval/span/nll"]


@pytest.mark.slow
def test_three_run_multirun_completes(tmp_path):
    env = {**os.environ, "WANDB_MODE": "disabled"}
    proc = subprocess.run([sys.executable, "-m", "localpref.train", "-m", "debug=tiny", "loss=sft,dpo,localized",
                           f"hydra.sweep.dir={tmp_path}"], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    runs = sorted(p.parent for p in tmp_path.rglob("metrics.jsonl"))
    assert [p.name for p in runs] == [f"debug=tiny,loss={m}" for m in ("dpo", "localized", "sft")]
    for p in runs:
        rows = [json.loads(line) for line in (p / "metrics.jsonl").read_text().splitlines()]
        assert any(r["step"] == 2 and "train/loss" in r for r in rows)


def test_generation_eval_hook_is_called_and_logged(tmp_path, monkeypatch):
    # A task-specific hook lives in the user's own module, named "module:function".
    (tmp_path / "my_hook.py").write_text(
        "def score(model, tokenizer, steers, cfg):\n"
        "    return {'n_steers': len(steers), 'training': float(model.training)}\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    rows = run(tmp_path / "run", "generation_eval=my_hook:score")
    logged = [r for r in rows if "eval/generation/n_steers" in r]
    assert [r["step"] for r in logged] == [0, 2]  # before and after training
    assert logged[0]["eval/generation/n_steers"] == 4  # debug=tiny holds out 4 steers
    assert logged[0]["eval/generation/training"] == 0.0  # the hook sees the model in eval mode


def test_wandb_offline_needs_no_network(tmp_path, monkeypatch):
    # wandb in offline mode writes a local run (synced later with `wandb sync`); no login, no network.
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    # debug=tiny turns wandb off; a command-line value wins over it.
    run(tmp_path / "run", "logger=wandb_offline", "logger.wandb=offline", "logger.example_table=4")
    runs = list((tmp_path / "run").rglob("offline-run-*"))
    assert len(runs) == 1 and list(runs[0].glob("*.wandb"))
    table = (tmp_path / "run" / "examples.jsonl").read_text().splitlines()
    assert len(table) == 4 and "corrected_span" in json.loads(table[0])


def test_examples_table_pairs_each_span_with_its_own_steer(tmp_path):
    # Steers without ids (all `None`) must not collapse onto one steer's prompt in the table.
    from localpref.data.load import write_steers
    from localpref.data.schema import Steer

    steers = [Steer(prompt=f"Prompt number {i}:", prefix=" the answer is", rejected=" x", corrected=f" {i}")
              for i in range(10)]
    write_steers(steers, tmp_path / "steers.jsonl")
    run(tmp_path / "run", "data=jsonl", f"data.path={tmp_path / 'steers.jsonl'}", "logger.example_table=3",
        "trainer.micro_batch_size=1", "trainer.max_steps=1")
    table = [json.loads(line) for line in (tmp_path / "run" / "examples.jsonl").read_text().splitlines()]
    assert len(table) == 3
    for row in table:
        assert row["prompt"] == f"Prompt number {row['corrected_span'].strip()}:"


def test_data_min_match_reaches_tokenization(tmp_path):
    # Two differences separated by one equal token (" sat"): min_match=2 joins them into one hunk
    # of 4 tokens per side (" A dog sat by"), where the default stops after " A dog".
    from localpref.data.load import write_steers
    from localpref.data.schema import Steer

    steers = [Steer(prompt=f"Q{i}:", prefix="", rejected=" The cat sat on the mat", corrected=" A dog sat by the mat")
              for i in range(20)]
    write_steers(steers, tmp_path / "steers.jsonl")
    rows = run(tmp_path / "run", "data=jsonl", f"data.path={tmp_path / 'steers.jsonl'}", "data.min_match=2",
               "trainer.max_steps=1")
    assert rows[0]["data/span/chosen_tokens"] == 4 and rows[0]["data/span/rejected_tokens"] == 4


def test_any_steer_jsonl_trains_with_a_held_out_fraction(tmp_path):
    from localpref.data.examples import example_steers
    from localpref.data.load import write_steers

    write_steers(example_steers("train", n=40), tmp_path / "steers.jsonl")
    rows = run(tmp_path / "run", "data=jsonl", f"data.path={tmp_path / 'steers.jsonl'}", "data.eval_fraction=0.25",
               "data.n_train=null", "data.n_eval=null")
    counts = rows[0]
    assert (counts["data/train_pairs"], counts["data/eval_pairs"]) == (30, 10)


def test_held_out_split_keeps_each_source_record_whole(tmp_path):
    # Steps of one trajectory share their prompt and earlier text: one in training and another
    # held out would leak. 10 three-step trajectories, eval_fraction=0.1: one whole trajectory.
    from localpref.config import DataConfig
    from localpref.data.load import write_steers
    from localpref.data.schema import Steer
    from localpref.train import load_data

    def record(i: int) -> dict:
        steps = [{"accepted": f"{k}, ", "rejected": f"x{k}, ", "corrected": f"y{k}, "} for k in range(3)]
        return {"prompt": [{"role": "user", "content": f"Trajectory {i}"}], "id": f"t{i}", "steps": steps}

    path = tmp_path / "trajectories.jsonl"
    path.write_text("".join(json.dumps(record(i)) + "\n" for i in range(10)))
    train_steers, held, _ = load_data(DataConfig(source="jsonl", path=str(path), eval_fraction=0.1))
    assert len(train_steers) == 27 and len(held) == 3
    (trajectory,) = {s.id.split("/")[0] for s in held}
    assert sorted(s.id for s in held) == [f"{trajectory}/step{k}" for k in range(3)]
    assert not any(s.id.startswith(trajectory + "/") for s in train_steers)
    # Hunks of one edited answer (`--hunks all`) stay together; steers without ids group by prompt.
    steers = [Steer(prompt=f"p{i}", prefix="", rejected="a", corrected="b", id=f"e{i}/hunk{k}")
              for i in range(5) for k in range(2)]
    steers += [Steer(prompt=f"q{i}", prefix=f"{k}", rejected="a", corrected="b") for i in range(5) for k in range(2)]
    write_steers(steers, tmp_path / "mixed.jsonl")
    train_steers, held, _ = load_data(DataConfig(source="jsonl", path=str(tmp_path / "mixed.jsonl"),
                                                 eval_fraction=0.2))
    assert len(held) == 4 and len(train_steers) == 16  # 2 of the 10 records, whole
    records = lambda ss: {s.id.split("/")[0] if s.id else s.prompt for s in ss}  # noqa: E731
    assert len(records(held)) == 2 and not records(held) & records(train_steers)


def test_defacto_trains_from_the_shared_folder(defacto_dir, tmp_path):
    rows = run(tmp_path / "run", "data=defacto", f"data.path={defacto_dir}")
    assert rows[0]["data/train_pairs"] == 16 and rows[0]["data/span/chosen_tokens"] > 0
    assert any("train/loss" in r for r in rows)


def test_sft_first_step_loss_equals_transformers_own_loss(tmp_path):
    # Peer check of the shift and the masks: HF's causal-LM loss (labels shifted inside the model,
    # -100 ignored, mean over all scored tokens of the batch) on the same first global batch.
    from omegaconf import OmegaConf

    from localpref.data.tokenize import tokenize_steers
    from localpref.models import build_model
    from localpref.train import load_data

    rows = run(tmp_path, "loss=sft", "trainer.micro_batch_size=4")
    ours = next(r["train/loss"] for r in rows if "train/loss" in r)
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = OmegaConf.to_object(compose("config", overrides=["debug=tiny", "loss=sft"]))
    model, tokenizer = build_model(cfg.model, cfg.peft, seed=cfg.seed)
    steers, _, _ = load_data(cfg.data)
    pairs, _ = tokenize_steers(steers, tokenizer, span=cfg.data.span, max_length=cfg.data.max_length,
                               on_error=cfg.data.on_error)
    first = torch.randperm(len(pairs), generator=torch.Generator().manual_seed(0))[:4].tolist()  # seed 0, epoch 0
    t = max(len(pairs[i].chosen_ids) for i in first)
    ids = torch.full((4, t), tokenizer.pad_token_id)
    labels = torch.full((4, t), -100)
    attention = torch.zeros((4, t), dtype=torch.long)
    for row, i in enumerate(first):
        e = pairs[i]
        ids[row, :len(e.chosen_ids)] = torch.tensor(e.chosen_ids)
        attention[row, :len(e.chosen_ids)] = 1
        keep = torch.tensor(e.chosen_completion_mask)
        labels[row, :len(e.chosen_ids)] = torch.where(keep, torch.tensor(e.chosen_ids), -100)
    with torch.no_grad():
        theirs = model(input_ids=ids, attention_mask=attention, labels=labels).loss.item()
    # Both fp32 means of the same ~10.8-nat token NLLs, ours from span-only rows, HF's from full
    # logits: a few ulps (9.5e-7) per token and a regrouped sum, ~1e-7 relative; rel 1e-5.
    assert ours == pytest.approx(theirs, rel=1e-5)


def test_span_only_lm_head_gives_the_full_logits_step(tmp_path, monkeypatch):
    # trainer.span_only_lm_head=false forces full (r, t, v) logits; the default projects only the
    # span rows. One SGD step must move the weights the same (fp32 summation order: a few ulps).
    import localpref.reference as reference

    calls = []
    original = reference.token_logps_from_hidden
    monkeypatch.setattr(reference, "token_logps_from_hidden",
                        lambda *a, **k: calls.append(1) or original(*a, **k))
    runs = {}
    for flag in ("true", "false"):
        d = tmp_path / flag
        calls.clear()
        rows = run(d, "loss=localized", *SGD, f"trainer.span_only_lm_head={flag}")
        assert bool(calls) == (flag == "true")  # the flag really picks the path
        runs[flag] = (final_weights(d), next(r["train/loss"] for r in rows if "train/loss" in r))
    (w_span, l_span), (w_full, l_full) = runs["true"], runs["false"]
    assert l_span == pytest.approx(l_full, rel=1e-6)  # log 2 per pair at step 1, exactly
    # lm_head's gradient summed over the n span rows or over all r*t rows (zeros elsewhere), the
    # rest the same: the arithmetic of SGD_WEIGHT_ATOL (was 1e-5; measured: equal).
    assert_same_weights(w_span, w_full, atol=SGD_WEIGHT_ATOL)


def _trajectory_file(path: Path, n: int, seed: int) -> Path:
    """Trajectory records of 3 steps each (lists of numbers corrected at three points), and flat steers."""
    import random

    rng = random.Random(seed)
    rows = []
    for i in range(n):
        numbers = [str(rng.randrange(10, 99)) for _ in range(9)]
        steps = [{"accepted": ", ".join(numbers[3 * k:3 * k + 2]) + ", ", "rejected": f"{rng.randrange(100, 999)},",
                  "corrected": f" {numbers[3 * k + 2]}, "[1:] + ("" if k < 2 else "done")} for k in range(3)]
        rows.append({"prompt": [{"role": "user", "content": f"List nine numbers, case {i}."}], "steps": steps,
                     "id": f"t{i}"})
        rows.append({"prompt": f"Say a number for case {i}:", "prefix": " I say", "rejected": " seven",
                     "corrected": f" {numbers[0]}", "id": f"f{i}"})
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def train_in_float64(monkeypatch) -> None:
    """Make ``train`` build its model in float64 (the config offers fp32, bf16, fp16 only)."""
    import localpref.train

    build = localpref.train.build_model

    def build_float64(*args, **kwargs):
        model, tokenizer = build(*args, **kwargs)
        return model.double(), tokenizer

    monkeypatch.setattr(localpref.train, "build_model", build_float64)


def test_a_short_run_gives_the_same_metrics_in_every_layout(tmp_path, monkeypatch):
    # The same pairs in the same steps (data.shuffle=trajectories keeps a trajectory's steers
    # together in every layout), only laid out differently, in the padded layout, pairs, trees,
    # and trees under a token budget: every logged metric must agree.
    # In float64, because exact parity is the point. In fp32 the layouts' summation orders differ
    # by ~1e-7 relative, and AdamW at lr 5e-2 amplifies that ~10x a step (it divides each
    # gradient entry by its own size, so noise on entries near zero turns into whole steps): the
    # eval margin differed by 2e-6, 1e-5, 2e-4 after 1, 2, 4 steps (SGD: 2e-7 relative after 4),
    # by different amounts on each CPU kind and thread count (eval/span/nll 11.06954 vs 11.06967).
    train_in_float64(monkeypatch)
    data = ["data=jsonl", f"data.path={_trajectory_file(tmp_path / 'train.jsonl', 8, 0)}",
            f"data.eval_path={_trajectory_file(tmp_path / 'eval.jsonl', 2, 1)}", "data.n_train=null",
            "data.n_eval=null", "trainer.max_steps=4", "trainer.micro_batch_size=3", "trainer.grad_accum=2",
            "trainer.lr=5e-2", "trainer.eval_every=2", "loss.beta=0.5", "data.shuffle=trajectories"]
    runs = {}
    for name, layout in [("unpacked", ["data.layout=unpacked"]), ("pairs", ["data.layout=pairs"]),
                         ("trees", ["data.layout=trees"]),
                         ("trees_budget", ["data.layout=trees", "data.tokens_per_micro_batch=256"])]:
        rows = run(tmp_path / name, *data, *layout)
        runs[name] = {(r["step"], k): v for r in rows for k, v in r.items()
                      if k.startswith(("train/", "eval/")) and isinstance(v, float)}
    # What differs is what the layouts are for: the input tokens per pair.
    tokens = {name: sum(v for (_, k), v in got.items() if k == "train/tokens_per_pair") for name, got in runs.items()}
    assert tokens["trees"] < tokens["pairs"] < tokens["unpacked"] / 1.5
    for got in runs.values():
        for key in [key for key in got if key[1] == "train/tokens_per_pair"]:
            del got[key]
    want = runs.pop("unpacked")
    assert want[4, "eval/drift/kl"] > 1e-3 and want[4, "train/loss"] < 0.65  # the run went somewhere
    # What float64 leaves in fp32, each rounding 6e-8 relative: HF's Llama computes RMSNorm and
    # the RoPE tables in fp32 whatever the model's dtype; the loop sums logged metrics in fp32
    # (train.py); evaluation computes the drift KL in fp32 (evaluate._kl_rows). rel 1e-5 is ~150
    # such roundings (measured: <= 3e-7 after 4 steps, on AVX-512, AVX2 and plain CPU kernels,
    # 1 and 2 threads). abs 1e-6 is for the KL (~1e-2), which takes its error from the
    # logsumexp of 49152 fp32 logits, ~11: up to one fp32 ulp of 11 (1e-6) per token, whatever the
    # KL's own size (measured: 5e-8). A wrong mask, position or normalizer moves a metric by O(1).
    for name, got in runs.items():
        assert got.keys() == want.keys(), name
        for key in want:
            assert got[key] == pytest.approx(want[key], rel=1e-5, abs=1e-6), (name, key)
