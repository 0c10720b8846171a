"""Tiny random-init models and a plain torch AdamW reference loop for the training tests."""

import torch

HYPER = dict(lr=2e-3, betas=(0.9, 0.98), eps=1e-8, weight_decay=0.1)


def llama(layers=3, hidden=32, seed=0):
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(
        vocab_size=101,
        hidden_size=hidden,
        intermediate_size=2 * hidden + 6,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
        attention_dropout=0.0,
    )
    torch.manual_seed(seed)
    return LlamaForCausalLM(cfg).float()


def opt(layers=3, hidden=32, seed=0):
    from transformers import OPTConfig, OPTForCausalLM

    cfg = OPTConfig(
        vocab_size=103,
        hidden_size=hidden,
        ffn_dim=2 * hidden + 6,
        num_hidden_layers=layers,
        num_attention_heads=4,
        max_position_embeddings=64,
        word_embed_proj_dim=hidden,
        dropout=0.0,
        attention_dropout=0.0,
        activation_dropout=0.0,
        layerdrop=0.0,
    )
    torch.manual_seed(seed)
    model = OPTForCausalLM(cfg).float()
    # The key bias has zero true gradient (softmax is shift invariant): its gradient is pure
    # rounding noise that Adam's normalisation amplifies, so no two correct AdamW
    # implementations agree on it. Freeze it (this also covers frozen params in OPT).
    for layer in model.model.decoder.layers:
        layer.self_attn.k_proj.bias.requires_grad_(False)
    return model


MODELS = {"llama": llama, "opt": opt}


def batches(model, steps, batch=2, length=9, seed=1):
    gen = torch.Generator().manual_seed(seed)
    vocab = model.config.vocab_size
    return [torch.randint(0, vocab, (batch, length), generator=gen) for _ in range(steps)]


def twin(model):
    """A copy of model with the same weights (built the same way, state copied)."""
    import copy

    return copy.deepcopy(model)


def train_reference(model, data, hyper=HYPER, optimizer=None):
    params = [p for p in model.parameters() if p.requires_grad]
    opt = optimizer or torch.optim.AdamW(params, **hyper)
    losses = []
    for ids in data:
        loss = model(input_ids=ids, labels=ids).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses


def train_offloaded(model, trainer, data, device=None):
    losses = []
    stats = []
    for ids in data:
        if device is not None:
            ids = ids.to(device)
        loss = model(input_ids=ids, labels=ids).loss
        trainer.backward(loss)
        stats.append(trainer.step())
        trainer.zero_grad()
        losses.append(loss.item())
    return losses, stats


def assert_params_close(got, ref_model, rtol=1e-5):
    """Every tensor within rtol of the reference, relative to the tensor's largest entry
    (elementwise relative error is meaningless for entries that cross zero)."""
    ref = dict(ref_model.named_parameters())
    assert set(got) == set(ref), set(got) ^ set(ref)
    for name, value in got.items():
        want = ref[name].detach()
        atol = rtol * float(want.abs().max())
        torch.testing.assert_close(value, want, rtol=rtol, atol=atol, msg=name)
