"""Packed layouts (localpref.packing): the tree layout by hand, and parity with the padded layout.

Parity is the point: per-pair log-probs, losses and parameter gradients of ``pairs`` and
``trees`` must equal ``unpacked`` on the same steers, for a tiny random Llama (and the other
families we accept) and for SmolLM2-135M, with and without LoRA.
"""

from __future__ import annotations

import copy
import random

import pytest
import torch
from transformers import AutoModelForCausalLM, LlamaForCausalLM

from localpref.collate import collate_padded
from localpref.data.tokenize import TokenizedSteer
from localpref.losses import preference_loss, sft_loss
from localpref.models import tiny_llama_config
from localpref.packing import (PACKED_ATTENTION_FAMILIES, attention_from_end, check_packed_attention,
                               collate_packed, lay_out, micro_batches)
from localpref.reference import TokenScorer, score_batch

# fp32 tolerances. Packed and padded rows attend over the same keys, but the kernels sum them in
# another order (other row lengths and masks, hence other blocks), and a shared token's gradient
# is one sum in the packed layout and two in the padded one: fp32 reassociation, ~1e-7 relative
# per operation. SmolLM2's hidden states reach O(100) (its outlier features), so log-probs differ
# by up to ~1e-5 absolute (measured 1e-5 at 250 tokens, 4 layers): atol 5e-5. A weight gradient
# is a sum over every token, so its error scales with the largest terms summed, not with each
# entry; for the attention projections (k_proj above all) those terms cancel through the softmax
# Jacobian, and the error measured on SmolLM2 + LoRA reached 7e-5 of the tensor's max |grad|
# (9e-6 for the other weights): GRAD_TOL 2e-4 of that max. A wrong mask or position is O(1).
TOL = dict(rtol=1e-5, atol=5e-5)
GRAD_TOL = 2e-4


# ------------------------------------------------------------------------------------------------
# The layout, by hand
# ------------------------------------------------------------------------------------------------


def test_two_sequences_share_their_prefix_and_the_branch_restarts_its_positions():
    row = lay_out([[1, 2, 3, 4], [1, 2, 5]])
    # Sorted: [1,2,3,4] < [1,2,5]. The second shares 2 tokens, so its tail is a copy of its parent
    # token 2 (at position 1) and then 5 (position 2).
    assert row.ids == [1, 2, 3, 4, 2, 5]
    assert row.positions == [0, 1, 2, 3, 1, 2]
    # token 1 is seen by both branches (up to row 5); 2, 3, 4 only by the first; the copy by its branch.
    assert row.end == [6, 4, 4, 4, 6, 6]
    # The second sequence reads its token 2 at row 1 (scored from row 0), its 5 at row 5 (from the copy).
    assert row.paths == [[0, 1, 2, 3], [0, 1, 5]]


def test_a_sequence_that_extends_another_continues_its_row_and_equal_ones_share_it():
    row = lay_out([[7, 8, 9], [7, 8], [7, 8], [6]])
    assert row.ids == [6, 7, 8, 9]  # [6] is its own root; [7, 8] is read inside [7, 8, 9]
    assert row.positions == [0, 0, 1, 2]
    assert row.end == [1, 4, 4, 4]
    assert row.paths == [[1, 2, 3], [1, 2], [1, 2], [0]]


def test_mask_rule_on_the_hand_example():
    row = lay_out([[1, 2, 3, 4], [1, 2, 5]])
    mask = attention_from_end(torch.tensor([row.end]))[0, 0]  # (t, t) query x key
    sees = {j: mask[j].nonzero().flatten().tolist() for j in range(len(row.ids))}
    assert sees == {0: [0], 1: [0, 1], 2: [0, 1, 2], 3: [0, 1, 2, 3], 4: [0, 4], 5: [0, 4, 5]}


@pytest.mark.parametrize("seed", range(5))
def test_every_scored_token_is_predicted_from_exactly_its_own_prefix(seed):
    # Independent of how the layout is built: for each sequence s and each token i >= 1, the row
    # position before the one s reads token i from must see exactly s[:i], at positions 0..i-1.
    rng = random.Random(seed)
    trunk = [rng.randrange(4) for _ in range(30)]  # a 4-token alphabet: many shared prefixes
    seqs = [trunk[:rng.randrange(1, 31)] + [rng.randrange(4) for _ in range(rng.randrange(0, 6))]
            for _ in range(12)] + [[rng.randrange(4) for _ in range(5)]]
    row = lay_out(seqs)
    mask = attention_from_end(torch.tensor([row.end]))[0, 0]
    ids, pos = torch.tensor(row.ids), torch.tensor(row.positions)
    for s, path in zip(seqs, row.paths):
        assert [row.ids[q] for q in path] == s
        for i in range(1, len(s)):
            keys = mask[path[i] - 1].nonzero().flatten()
            assert ids[keys].tolist() == s[:i]
            assert pos[keys].tolist() == list(range(i))
    assert len(row.ids) < sum(map(len, seqs))


# ------------------------------------------------------------------------------------------------
# Steers for the parity tests
# ------------------------------------------------------------------------------------------------


def hand_steer(prompt: list[int], prefix: list[int], chosen: list[int], rejected: list[int],
               trajectory: str | None) -> TokenizedSteer:
    """A steer in token space: span = the first 2 chosen / 1 rejected tokens after the prefix."""
    c, r = prompt + prefix + chosen, prompt + prefix + rejected
    start = len(prompt) + len(prefix)
    return TokenizedSteer(
        chosen_ids=c, rejected_ids=r,
        chosen_span_mask=[start <= i < start + 2 for i in range(len(c))],
        rejected_span_mask=[start <= i < start + 1 for i in range(len(r))],
        chosen_completion_mask=[i >= len(prompt) for i in range(len(c))],
        rejected_completion_mask=[i >= len(prompt) for i in range(len(r))],
        prefix_len=start, prompt_len=len(prompt),
        source_record=None if trajectory is None else ("prompt", trajectory))


def random_steers(v: int, seed: int = 0, k: int = 4, prompt_len: int = 60) -> list[TokenizedSteer]:
    """Two trajectories of k steers (long shared prompts), and two flat steers."""
    rng = random.Random(seed)
    tokens = lambda n: [rng.randrange(1, v) for _ in range(n)]  # noqa: E731
    out = []
    for t in range(2):
        prompt, said = tokens(prompt_len), []
        for _ in range(k):
            said += tokens(rng.randrange(2, 8))
            chosen, rejected = tokens(rng.randrange(2, 6)), tokens(rng.randrange(1, 6))
            rejected[0] = chosen[0] % (v - 1) + 1  # they differ at the divergence
            out.append(hand_steer(prompt, said, chosen, rejected, f"traj{t}"))
            said += chosen
    out += [hand_steer(tokens(prompt_len), tokens(5), tokens(3), tokens(4), None) for _ in range(2)]
    rng.shuffle(out)  # a trajectory's steers need not be adjacent in a batch
    return out


def tiny(family: str = "llama", **extra) -> torch.nn.Module:
    torch.manual_seed(0)
    if family == "llama":
        return LlamaForCausalLM(tiny_llama_config(vocab_size=256)).float()
    from transformers import AutoConfig

    config = AutoConfig.for_model(family, vocab_size=256, hidden_size=64, intermediate_size=128,
                                  num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                                  head_dim=16, max_position_embeddings=512, **extra)
    return AutoModelForCausalLM.from_config(config).float()


def with_lora(model: torch.nn.Module) -> torch.nn.Module:
    from peft import LoraConfig, get_peft_model

    model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0,
                                             target_modules=["q_proj", "k_proj", "v_proj", "o_proj"]))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:  # peft starts B at 0 (adapter = identity); make the adapters matter
                p.normal_(0, 0.02)
    return model


def batch_in(layout: str, examples, pad_id: int = 0):
    idx = list(range(len(examples)))
    return (collate_padded(examples, idx, pad_id) if layout == "unpacked"
            else collate_packed(examples, idx, pad_id, layout=layout))


def step(policy: TokenScorer, reference: TokenScorer, batch, mask: str = "span"):
    """Per-pair policy and reference log-probs, per-pair losses and all parameter gradients."""
    policy.zero_grad(set_to_none=True)
    with torch.no_grad():
        ref_chosen_logps, ref_rejected_logps = score_batch(reference, batch, mask)
    policy_chosen_logps, policy_rejected_logps = score_batch(policy, batch, mask)
    chosen_mask, rejected_mask = batch.masks(mask)
    out = preference_loss(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps,
                          chosen_mask, rejected_mask, beta=0.5)
    out.sum.backward()
    grads = {n: p.grad.clone() for n, p in policy.named_parameters() if p.grad is not None}
    return dict(policy_chosen=policy_chosen_logps.detach(), policy_rejected=policy_rejected_logps.detach(),
                ref_chosen=ref_chosen_logps, ref_rejected=ref_rejected_logps, losses=out.losses.detach()), grads


def assert_layouts_agree(model: torch.nn.Module, examples, *, masks=("span", "completion"), pad_id: int = 0):
    policy = TokenScorer(model)
    reference = TokenScorer(copy.deepcopy(model).eval())
    for mask in masks:
        want, want_grads = step(policy, reference, batch_in("unpacked", examples, pad_id), mask)
        assert want_grads and all(g.abs().max() > 0 for g in want_grads.values())
        for layout in ("pairs", "trees"):
            got, got_grads = step(policy, reference, batch_in(layout, examples, pad_id), mask)
            for key in want:
                torch.testing.assert_close(got[key], want[key], **TOL, msg=f"{layout} {mask} {key}")
            assert got_grads.keys() == want_grads.keys()
            for name, want_grad in want_grads.items():
                err = (got_grads[name] - want_grad).abs().max().item()
                assert err <= GRAD_TOL * want_grad.abs().max().item(), f"{layout} {mask} {name}: {err}"


# ------------------------------------------------------------------------------------------------
# Parity
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("lora", [False, True], ids=["full", "lora"])
def test_tiny_llama_pairs_and_trees_equal_unpacked(lora):
    model = tiny()
    assert_layouts_agree(with_lora(model) if lora else model, random_steers(256))


def test_trees_put_a_trajectory_in_one_row_and_save_tokens():
    examples = random_steers(256, k=4)
    unpacked, pairs, trees = (batch_in(layout, examples) for layout in ("unpacked", "pairs", "trees"))
    assert trees.input_ids.shape[0] == 2 + 2  # two trajectories, two flat steers
    assert pairs.input_ids.shape[0] == len(examples)
    assert trees.num_tokens < pairs.num_tokens < unpacked.num_tokens


@pytest.mark.parametrize("family", sorted(PACKED_ATTENTION_FAMILIES - {"llama"}))
def test_other_accepted_families_equal_unpacked(family):
    assert_layouts_agree(tiny(family), random_steers(256, seed=1, k=3), masks=("completion",))


def test_eager_attention_takes_the_packed_mask_as_an_additive_one():
    model = tiny()
    model.config._attn_implementation = "eager"
    assert_layouts_agree(model, random_steers(256, seed=2, k=3), masks=("completion",))


def test_sft_on_the_chosen_sequences_alone_equals_unpacked():
    examples, model = random_steers(256, seed=3), tiny()
    scorer = TokenScorer(model)
    results = {}
    for layout in ("unpacked", "pairs", "trees"):
        scorer.zero_grad(set_to_none=True)
        batch = batch_in(layout, examples)
        chosen = batch.chosen_only()
        assert chosen.num_tokens <= batch.num_tokens
        logps, _ = score_batch(scorer, chosen, "completion")
        out = sft_loss(logps, batch.masks("completion")[0])
        out.sum.backward()
        results[layout] = out.sum.detach(), model.lm_head.weight.grad.clone()
    for layout in ("pairs", "trees"):
        torch.testing.assert_close(results[layout][0], results["unpacked"][0], **TOL)
        want_grad = results["unpacked"][1]
        assert (results[layout][1] - want_grad).abs().max() <= GRAD_TOL * want_grad.abs().max()


# ------------------------------------------------------------------------------------------------
# Refusals: never the wrong attention
# ------------------------------------------------------------------------------------------------


def test_an_untested_family_is_refused_with_the_way_out():
    from transformers import GPT2Config, GPT2LMHeadModel

    model = GPT2LMHeadModel(GPT2Config(vocab_size=256, n_embd=32, n_layer=1, n_head=2))
    with pytest.raises(ValueError, match="model_type 'gpt2'.*data.layout=unpacked"):
        check_packed_attention(model)
    with pytest.raises(ValueError, match="gpt2"):
        score_batch(TokenScorer(model), batch_in("pairs", random_steers(256)), "span")


def test_an_attention_that_cannot_take_the_mask_is_refused():
    model = tiny()
    model.config._attn_implementation = "flash_attention_2"
    with pytest.raises(ValueError, match="flash_attention_2"):
        check_packed_attention(model)


def test_rows_longer_than_a_sliding_window_are_refused():
    model = tiny("mistral", sliding_window=16)
    with pytest.raises(ValueError, match="sliding window"):
        score_batch(TokenScorer(model), batch_in("pairs", random_steers(256)), "span")


# ------------------------------------------------------------------------------------------------
# Micro-batches under a token budget
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("layout", ["pairs", "trees"])
def test_token_budget_cuts_whole_groups_and_keeps_every_pair(layout):
    examples = random_steers(256, seed=4, k=4)
    idx = list(range(len(examples)))
    budget = 300
    micro = micro_batches(examples, idx, layout=layout, micro_batch_size=3, tokens_per_micro_batch=budget)
    assert sorted(i for m in micro for i in m) == idx
    for m in micro:
        batch = collate_packed([examples[i] for i in m], m, 0, layout=layout)
        rows, t = batch.input_ids.shape
        assert rows * t <= budget or rows == 1
        if layout == "trees":  # a trajectory is never cut
            records = {examples[i].source_record for i in m} - {None}
            assert all(sum(examples[i].source_record == r for i in m) == 4 for r in records)
    assert micro_batches(examples, idx, layout=layout, micro_batch_size=3, tokens_per_micro_batch=None) == \
        [idx[0:3], idx[3:6], idx[6:9], idx[9:10]]


# ------------------------------------------------------------------------------------------------
# SmolLM2-135M on real tokenized steers
# ------------------------------------------------------------------------------------------------

ARTICLE = ("The river rose through the night and by morning the lower town was under water. "
           "Volunteers carried sandbags to the bridge while the council met in the school hall. ") * 5


def smollm2_steers(tokenizer, k: int = 3, flat: bool = True) -> list[TokenizedSteer]:
    """One trajectory of k steers and a flat steer with the same ~200-token chat prompt, and a flat
    steer with a plain-string prompt."""
    from localpref.data.load import load_steers
    from localpref.data.tokenize import tokenize_steers

    prompt = [{"role": "user", "content": f"Summarize this report in two sentences.\n\n{ARTICLE}"}]
    steps = [{"accepted": "The river", "rejected": " fell overnight", "corrected": " rose overnight"},
             {"accepted": " and flooded the", "rejected": " upper town", "corrected": " lower town"},
             {"accepted": ", while volunteers", "rejected": " slept at home", "corrected": " carried sandbags"},
             {"accepted": " to the", "rejected": " school", "corrected": " bridge"}][:k]
    rows = [{"prompt": prompt, "steps": steps, "id": "flood"},
            {"prompt": prompt, "prefix": "Floods hit", "rejected": " the upper town.", "corrected": " the lower town."},
            {"prompt": ARTICLE + "\nIn short:", "prefix": " a", "rejected": " drought", "corrected": " flood"}]
    steers = load_steers(rows if flat else rows[:1])
    assert sum(s.id is not None and s.id.startswith("flood/step") for s in steers) == k
    examples, skipped = tokenize_steers(steers, tokenizer, max_length=1024)
    assert len(examples) == k + 2 * flat and min(e.prefix_len for e in examples) > 150
    return examples


@pytest.mark.slow
@pytest.mark.parametrize("lora", [False, True], ids=["full", "lora"])
def test_smollm2_pairs_and_trees_equal_unpacked(lora, smollm2_tokenizer):
    from localpref.models import smollm2_dir

    model = AutoModelForCausalLM.from_pretrained(smollm2_dir(), dtype=torch.float32)
    if lora:  # the training set-up: LoRA on q/k/v/o in all 30 layers (on the trajectory alone: time)
        model = with_lora(model)
    else:  # all weights, in the first 4 layers: the packed attention is the same in every layer,
        # and a backward through all 30 layers and 135M weights takes minutes on 2 cores
        model.model.layers = model.model.layers[:4]
        model.config.num_hidden_layers = 4
    assert_layouts_agree(model, smollm2_steers(smollm2_tokenizer, flat=not lora), masks=("span",),
                         pad_id=smollm2_tokenizer.pad_token_id)


def test_a_tree_longer_than_the_budget_is_cut_into_rows_that_fit():
    examples = [e for e in random_steers(256, seed=5, k=4) if e.source_record == ("prompt", "traj0")]
    whole = collate_packed(examples, list(range(4)), 0, layout="trees").input_ids.shape[1]
    budget = whole - 1
    micro = micro_batches(examples, list(range(4)), layout="trees", micro_batch_size=4, tokens_per_micro_batch=budget)
    assert len(micro) > 1 and sorted(i for m in micro for i in m) == [0, 1, 2, 3]
    for m in micro:
        assert collate_packed([examples[i] for i in m], m, 0, layout="trees").input_ids.numel() <= budget


# ------------------------------------------------------------------------------------------------
# Evaluation in the packed layouts
# ------------------------------------------------------------------------------------------------


def plain_eval(policy: torch.nn.Module, reference: torch.nn.Module, examples) -> dict[str, float]:
    """The held-out metrics from HF's own logits, one unpadded sequence at a time, in fp64."""
    def logps_and_logits(model, ids):
        with torch.no_grad():
            logits = model(input_ids=torch.tensor([ids])).logits[0, :-1].double()  # (t-1, v): predicts ids[1:]
        return torch.log_softmax(logits, -1).gather(-1, torch.tensor(ids[1:])[:, None])[:, 0], logits

    sums = dict(acc=0.0, kl=0.0, nll=0.0, comp=0, span=0)
    for e in examples:
        side = {}
        for name, model in (("pol", policy), ("ref", reference)):
            for s in ("chosen", "rejected"):
                ids = getattr(e, f"{s}_ids")
                logps, logits = logps_and_logits(model, ids)
                span = torch.tensor(getattr(e, f"{s}_span_mask")[1:])
                side[name, s] = (logps[span].sum(), logps, logits)
        margin = (side["pol", "chosen"][0] - side["pol", "rejected"][0]) - (side["ref", "chosen"][0] - side["ref", "rejected"][0])
        sums["acc"] += float(margin > 0) + 0.5 * float(margin == 0)
        comp = torch.tensor(e.chosen_completion_mask[1:])
        p = torch.log_softmax(side["pol", "chosen"][2][comp], -1)
        q = torch.log_softmax(side["ref", "chosen"][2][comp], -1)
        sums["kl"] += float((p.exp() * (p - q)).sum())
        sums["nll"] -= float(side["pol", "chosen"][1][comp].sum())
        sums["comp"] += int(comp.sum())
    return {"span/reward_accuracy": sums["acc"] / len(examples), "drift/kl": sums["kl"] / sums["comp"],
            "drift/nll": sums["nll"] / sums["comp"]}


@pytest.mark.parametrize("layout", ["unpacked", "pairs", "trees"])
@pytest.mark.parametrize("kind", ["adapter_disabled", "copy"])
def test_evaluation_in_every_layout_equals_hf_logits(layout, kind):
    from localpref.evaluate import evaluate
    from localpref.reference import make_model_reference

    examples = random_steers(256, seed=6, k=3)
    if kind == "adapter_disabled":
        model = with_lora(tiny())
        policy = TokenScorer(model)
        reference = make_model_reference(kind, policy)
        with model.disable_adapter():
            base = copy.deepcopy(model.get_base_model())
    else:  # full fine-tuning: the policy's lm_head has moved too, so each side needs its own head
        model = tiny()
        policy = TokenScorer(model)
        reference = make_model_reference(kind, policy)
        base = reference.scorer.model
        with torch.no_grad():
            for param in model.parameters():
                param.add_(0.05 * torch.randn_like(param))
    got = evaluate(policy, reference, examples, 0, batch_size=4, device=torch.device("cpu"), layout=layout)
    want = plain_eval(model, base, examples)
    assert want["drift/kl"] > 1e-4  # the adapters moved the policy away from the reference
    # evaluate scores in fp32 in its layout; the spec is fp64 from HF's fp32 logits of each
    # sequence alone. The NLL (~5.5 per token, v = 256) differs by the fp32 rounding of the
    # activations (1e-7 relative) and of the log-softmax: a few ulps (4.8e-7 each), rel 1e-5. The
    # KL is a difference of two fp32 log-softmaxes: up to about one ulp of log v per token,
    # whatever the KL's size: abs 1e-6. A wrong mask or position moves these by O(1).
    for key, value in want.items():
        assert got[key] == pytest.approx(value, rel=1e-5, abs=1e-6), key


def test_later_evaluations_reuse_the_reference_outputs():
    from localpref.evaluate import evaluate
    from localpref.reference import make_model_reference

    examples = random_steers(256, seed=7, k=3)
    policy = TokenScorer(with_lora(tiny()))
    reference = make_model_reference("adapter_disabled", policy)
    calls = []
    score = reference.score_and_keep
    reference.score_and_keep = lambda *a, **k: calls.append(1) or score(*a, **k)
    cache: dict = {}
    run = lambda: evaluate(policy, reference, examples, 0, batch_size=4, device=torch.device("cpu"),  # noqa: E731
                           layout="trees", reference_cache=cache)
    first = run()
    n = len(calls)
    assert n >= 2 and len(cache) == n
    assert run() == first and len(calls) == n  # no reference forward the second time


@pytest.mark.parametrize("kind", ["adapter_disabled", "copy"])
def test_before_training_one_forward_serves_policy_and_reference(kind):
    # PEFT starts LoRA B at 0 and a copy reference equals the policy until the first step: the
    # reference's outputs are then exactly the policy's, so evaluation runs one forward per batch,
    # gives what two forwards give, and fills the cache. Once the policy moves, the reference
    # model is run again (nothing stale is read).
    from peft import LoraConfig, get_peft_model

    from localpref.evaluate import evaluate
    from localpref.reference import make_model_reference

    examples = random_steers(256, seed=9, k=3)
    model = tiny()
    if kind == "adapter_disabled":
        model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]))
    policy = TokenScorer(model)
    reference = make_model_reference(kind, policy)
    assert reference.is_policy(policy)
    calls = []
    score = reference.score_and_keep
    reference.score_and_keep = lambda *a, **k: calls.append(1) or score(*a, **k)
    cache: dict = {}
    got = evaluate(policy, reference, examples, 0, batch_size=4, device=torch.device("cpu"), layout="pairs",
                   reference_cache=cache)
    assert calls == [] and len(cache) == -(-len(examples) // 4)
    is_policy, reference.is_policy = reference.is_policy, lambda policy: False  # force two forwards
    want = evaluate(policy, reference, examples, 0, batch_size=4, device=torch.device("cpu"), layout="pairs")
    assert len(calls) > 0 and got == want  # the two-forward path: the same numbers, bit for bit
    reference.is_policy = is_policy
    assert got["span/reward_accuracy"] == 0.5 and got["drift/kl"] == 0.0  # every margin an exact tie

    with torch.no_grad():  # as training would: the policy is no longer the reference
        for name, param in model.named_parameters():
            if param.requires_grad and "lora_A" not in name:
                param.add_(0.05 * torch.randn_like(param))
    assert not reference.is_policy(policy)
    calls.clear()
    moved = evaluate(policy, reference, examples, 0, batch_size=4, device=torch.device("cpu"), layout="pairs")
    assert len(calls) == -(-len(examples) // 4) and moved["drift/kl"] > 0


@pytest.mark.gpu
def test_flex_attention_block_mask_equals_unpacked_on_cuda():
    # Only where FlexAttention can run (it compiles a GPU kernel); skipped without CUDA.
    model = tiny().cuda()
    model.config._attn_implementation = "flex_attention"
    examples = random_steers(256, seed=8, k=3)
    scorer = TokenScorer(model)
    want = score_batch(scorer, collate_padded(examples, list(range(len(examples))), 0).to("cuda"), "completion")
    for layout in ("pairs", "trees"):
        got = score_batch(scorer, batch_in(layout, examples).to("cuda"), "completion")
        for g, w in zip(got, want):
            torch.testing.assert_close(g, w, **TOL)


def test_a_token_budget_without_a_packed_layout_is_a_config_error():
    from localpref.config import TrainConfig, validate

    cfg = TrainConfig()
    cfg.model.source, cfg.data.source, cfg.data.tokens_per_micro_batch = "tiny", "examples", 100
    with pytest.raises(ValueError, match="tokens_per_micro_batch applies to data.layout=pairs"):
        validate(cfg)
    cfg.data.layout = "pairs"
    validate(cfg)


def test_trees_with_steers_shuffled_one_by_one_is_a_config_error():
    from localpref.config import TrainConfig, validate

    cfg = TrainConfig()
    cfg.model.source, cfg.data.source, cfg.data.layout, cfg.data.shuffle = "tiny", "examples", "trees", "pairs"
    with pytest.raises(ValueError, match="data.layout=trees needs data.shuffle=trajectories"):
        validate(cfg)
    cfg.data.shuffle = "trajectories"
    validate(cfg)


def test_epoch_order_keeps_trajectories_together_only_when_asked():
    from localpref.packing import epoch_order

    examples = random_steers(64, seed=3, k=3)  # trajectories of 3 steers
    records = [e.source_record for e in examples]
    plain = epoch_order(examples, torch.Generator().manual_seed(5), by_trajectory=False)
    assert plain == torch.randperm(len(examples), generator=torch.Generator().manual_seed(5)).tolist()
    grouped = epoch_order(examples, torch.Generator().manual_seed(5), by_trajectory=True)
    assert sorted(grouped) == list(range(len(examples)))
    # Each trajectory's steers are one run of consecutive positions; the two flat steers (record
    # None) come one by one: 2 + 2 runs.
    runs, start = [], 0
    for end in range(1, len(grouped) + 1):
        if end == len(grouped) or records[grouped[end]] != records[grouped[start]] or records[grouped[start]] is None:
            runs.append(records[grouped[start]])
            start = end
    assert sorted(map(str, runs)) == sorted(map(str, [("prompt", "traj0"), ("prompt", "traj1"), None, None]))


# ------------------------------------------------------------------------------------------------
# Training runs no token that no loss reads
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("layout", ["unpacked", "pairs", "trees"])
def test_dropping_the_tokens_after_the_span_changes_no_loss_and_no_gradient(layout):
    from localpref.data.tokenize import drop_unread_tail

    model = tiny()
    policy, reference = TokenScorer(model), TokenScorer(copy.deepcopy(model).eval())
    examples = random_steers(256)
    cut = [drop_unread_tail(e, "span") for e in examples]
    # hand_steer's spans are the first 2 chosen / 1 rejected tokens after the prefix: the rest goes
    for e, c in zip(examples, cut):
        start = e.prefix_len
        assert (len(c.chosen_ids), len(c.rejected_ids)) == (start + 2, start + 1)
        assert c.chosen_ids == e.chosen_ids[:start + 2] and c.rejected_ids == e.rejected_ids[:start + 1]
        assert sum(c.chosen_span_mask) == sum(e.chosen_span_mask) == 2
        assert drop_unread_tail(e, "completion") is e  # a completion mask runs to the end
    full, cut_batch = batch_in(layout, examples), batch_in(layout, cut)
    assert cut_batch.num_tokens < full.num_tokens
    want, want_grads = step(policy, reference, full, "span")
    got, got_grads = step(policy, reference, cut_batch, "span")
    for key in want:  # (b, w) tensors: the cut batch is narrower, and 0 where the full one is past the span
        w = got[key].shape[-1] if got[key].ndim > 1 else None
        torch.testing.assert_close(got[key], want[key][..., :w] if w else want[key], **TOL, msg=key)
        if w:
            assert not want[key][..., w:].any(), key
    assert got_grads.keys() == want_grads.keys()
    for name, want_grad in want_grads.items():
        err = (got_grads[name] - want_grad).abs().max().item()
        assert err <= GRAD_TOL * want_grad.abs().max().item(), f"{layout} {name}: {err}"


def test_a_side_with_nothing_marked_keeps_the_shared_prefix():
    from localpref.data.tokenize import drop_unread_tail

    e = hand_steer([5, 6, 7], [8, 9], [10, 11, 12], [13, 14], None)
    e.rejected_span_mask[:] = [False] * len(e.rejected_ids)  # an insertion: no rejected token scored
    c = drop_unread_tail(e, "span")
    assert c.rejected_ids == [5, 6, 7, 8, 9] and c.chosen_ids == [5, 6, 7, 8, 9, 10, 11]
    with pytest.raises(ValueError, match="mask must be"):
        drop_unread_tail(e, "hunk")
