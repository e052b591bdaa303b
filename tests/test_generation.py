"""The generation engine's use of the transformers cache API (``localpref.generation``).

The suite turns transformers' deprecation notices about what we pass into errors (pyproject's
``filterwarnings``, tests/conftest.py), so these tests also check that no such notice is raised.
"""

from __future__ import annotations

import torch

from localpref.generation import TurnWriter, cache_argument, generate_batch, new_cache


def tiny_model(tokenizer):
    from transformers import AutoModelForCausalLM

    from localpref.models import tiny_llama_config

    torch.manual_seed(0)
    return AutoModelForCausalLM.from_config(tiny_llama_config(vocab_size=len(tokenizer), hidden_size=32,
                                                              num_heads=2, intermediate_size=64)).eval()


def test_a_lora_model_takes_the_cache_as_its_base_does_and_writes_the_same(smollm2_tokenizer):
    # peft's forward takes **kwargs, so the name comes from the model it wraps. LoRA starts as the
    # identity (B = 0), so the wrapped model must write exactly what its base writes.
    from peft import LoraConfig, get_peft_model

    tok = smollm2_tokenizer
    base = tiny_model(tok)
    texts = []
    for model in (base, get_peft_model(tiny_model(tok), LoraConfig(r=2, target_modules=["q_proj", "v_proj"])).eval()):
        assert cache_argument(model) == cache_argument(base)
        writer = TurnWriter(model, tok, "List 3 primes.", max_new_tokens=5)
        while not writer.done:
            writer.step()
        writer.set_text("41,")  # a correction: the cache is cropped to the prompt, then extended
        while not writer.done:
            writer.step()
        texts.append(writer.text)
        texts.append(generate_batch(model, tok, ["Hi", "List 3 primes."], ["", "41,"], max_new_tokens=4)[1].text)
    assert texts[:2] == texts[2:]


def test_the_model_fills_the_cache_we_make_in_place(smollm2_tokenizer):
    model = tiny_model(smollm2_tokenizer)
    cache = new_cache()
    model(input_ids=torch.tensor([[1, 2, 3]]), use_cache=True, **{cache_argument(model): cache})
    assert cache.get_seq_length() == 3
    cache.crop(-2)  # what TurnWriter.set_text does; a negative count removes tokens (transformers 4 and 5)
    assert cache.get_seq_length() == 1
