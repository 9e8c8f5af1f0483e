"""Greedy decoding: batched answers equal step-by-step decoding with the model's own forward pass."""

from conftest import problems_for
from reference import greedy


def test_greedy_answers_match_step_by_step_decoding(llama_model):
    from lens_digits.adapter import ModelAdapter
    from lens_digits.generate import greedy_answers
    from lens_digits.targets import encode_for_model

    problems = problems_for(scales=(1, 2), n=10)
    encoded = encode_for_model(ModelAdapter.wrap(llama_model), problems)
    outputs = greedy_answers(llama_model, [e.prompt_ids for e in encoded], [len(e.answer_ids) + 2 for e in encoded], batch_size=4)
    for e, o in zip(encoded, outputs, strict=True):
        assert greedy(llama_model, e)[: len(o.token_ids)] == o.token_ids[: len(e.answer_ids)]
        assert len(o.token_ids) >= 1


def test_a_cached_draft_is_checked_token_by_token_against_the_bridge(gpt2_model, monkeypatch):
    """The HF model's cached generate only drafts: a draft token the bridge would not say is replaced, and what follows redone."""
    import torch

    from lens_digits import generate
    from lens_digits.adapter import ModelAdapter

    adapter = ModelAdapter.wrap(gpt2_model)
    assert generate._bridged_hf_model(adapter) is not None, "a bridge over a Hugging Face model drafts with its cached generate"
    prompts = [list(p) for p in torch.randint(0, adapter.d_vocab, (6, 5), generator=torch.Generator().manual_seed(0)).tolist()]
    honest = generate.greedy_decode(generate.generator(adapter)[0], prompts, [4] * 6)
    real_draft = generate._hf_cached

    def bad_draft(hf):
        inner = real_draft(hf)

        def corrupted(tokens, n):
            out = inner(tokens, n)
            out[::2, 1] = (out[::2, 1] + 1) % adapter.d_vocab  # every other row: a wrong second token
            return out

        return corrupted

    monkeypatch.setattr(generate, "_hf_cached", bad_draft)
    repaired = generate.greedy_decode(generate.generator(adapter)[0], prompts, [4] * 6)
    assert repaired == honest
    # and both are the step-by-step argmax of the bridge's own forward pass
    for prompt, answer in zip(prompts, honest, strict=True):
        tokens = torch.tensor([prompt])
        for t in answer:
            with torch.inference_mode():
                nxt = int(gpt2_model(tokens, return_type="logits")[0, -1].argmax())
            assert nxt == t
            tokens = torch.cat([tokens, torch.tensor([[nxt]])], dim=1)
