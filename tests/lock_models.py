"""Small random-init transformers models for the MergeLock tests (fp32, every family)."""

from __future__ import annotations

import json

import torch

KEY = bytes(range(32))
OTHER_KEY = bytes(range(1, 33))


def tiny_model(kind: str, tied: bool = False, act: str | None = None) -> tuple[dict, dict[str, torch.Tensor]]:
    """A random-init model with weights large enough that attention is far from uniform.

    Causal LMs carry their ``lm_head`` (a copy of the embedding when ``tied``); BERT is a
    sequence classifier (pooler + classifier).
    """
    import transformers

    common = {"vocab_size": 97, "num_hidden_layers": 2, "hidden_size": 64}
    extra = {} if act is None else {"hidden_act": act}
    if kind == "gpt2":
        hf = transformers.GPT2Config(
            vocab_size=97, n_layer=2, n_embd=64, n_head=4, n_positions=64,
            tie_word_embeddings=tied, **({} if act is None else {"activation_function": act}),
        )
        cls = transformers.GPT2LMHeadModel
    elif kind == "llama":
        hf = transformers.LlamaConfig(
            **common, intermediate_size=96, num_attention_heads=4, num_key_value_heads=2,
            tie_word_embeddings=tied, **extra,
        )
        cls = transformers.LlamaForCausalLM
    elif kind == "qwen2":
        hf = transformers.Qwen2Config(
            **common, intermediate_size=96, num_attention_heads=4, num_key_value_heads=2,
            tie_word_embeddings=tied, **extra,
        )
        cls = transformers.Qwen2ForCausalLM
    elif kind == "mistral":
        hf = transformers.MistralConfig(
            **common, intermediate_size=96, num_attention_heads=8, num_key_value_heads=2,
            head_dim=16, tie_word_embeddings=tied, **extra,
        )
        cls = transformers.MistralForCausalLM
    else:
        hf = transformers.BertConfig(
            vocab_size=97, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
            intermediate_size=96, **extra,
        )
        cls = transformers.BertForSequenceClassification
    model = cls(hf)
    gen = torch.Generator().manual_seed(1)
    state = {}
    for name, tensor in model.state_dict().items():
        if tensor.is_floating_point():
            tensor = torch.randn(tensor.shape, generator=gen) * 0.15
            if "norm" in name.lower() and name.endswith("weight") or name.endswith(("ln_1.weight", "ln_2.weight", "ln_f.weight")):
                tensor = tensor + 1.0
        state[name] = tensor
    embedding = next((n for n in state if n.endswith(("embed_tokens.weight", "wte.weight"))), None)
    if "lm_head.weight" in state and embedding is not None:
        state["lm_head.weight"] = state[embedding].clone() if tied else state["lm_head.weight"]
    return json.loads(hf.to_json_string()), state
