"""Greedy decoding: batched answers equal step-by-step decoding with the model's own forward pass."""

from conftest import problems_for
from reference import greedy


def test_greedy_answers_match_step_by_step_decoding(llama_model):
    from lens_digits.model.adapter import ModelAdapter
    from lens_digits.model.greedy import greedy_answers
    from lens_digits.problems.targets import encode_for_model

    problems = problems_for(scales=(1, 2), n=10)
    encoded = encode_for_model(ModelAdapter.wrap(llama_model), problems)
    outputs = greedy_answers(llama_model, [e.prompt_ids for e in encoded], [len(e.answer_ids) + 2 for e in encoded], batch_size=4)
    for e, o in zip(encoded, outputs, strict=True):
        assert greedy(llama_model, e)[: len(o.token_ids)] == o.token_ids[: len(e.answer_ids)]
        assert len(o.token_ids) >= 1


def test_decoding_stops_once_every_answer_is_complete(builtin, monkeypatch):
    """Early stopping changes no answer, only how many steps run (the built-in model ends its answers)."""
    import torch

    from lens_digits.model.adapter import ModelAdapter
    from lens_digits.model.greedy import greedy_answers, number_text
    from lens_digits.model.kvcache import greedy_tokens
    from lens_digits.problems.targets import encode_for_model

    adapter = ModelAdapter.wrap(builtin)
    encoded = encode_for_model(adapter, problems_for(scales=(1, 2), n=12))
    prompts = [e.prompt_ids for e in encoded]
    steps = 8  # far more than any answer here needs
    calls = []
    real = ModelAdapter.last_logits
    monkeypatch.setattr(ModelAdapter, "last_logits", lambda self, *a, **k: calls.append(1) or real(self, *a, **k))
    greedy_answers(adapter, prompts[:4], steps)  # the cache's first-use check, not counted below
    for until in ("number", "eos"):
        calls.clear()
        got = greedy_answers(adapter, prompts, steps, until=until, batch_size=64)
        early = len(calls)
        calls.clear()
        tok = adapter.tokenizer
        for e, o in zip(encoded, got, strict=True):
            full = greedy_tokens(adapter, torch.tensor([e.prompt_ids]), steps)[0].tolist()  # every step, no stopping
            if until == "number":
                assert o == number_text(tok, full)
            else:
                assert o.token_ids == tuple(full[: full.index(tok.eos_token_id)] if tok.eos_token_id in full else full)
        assert len(calls) == steps * len(encoded)  # the unstopped decoding ran every step
        assert early < steps * 2  # two batches (prompt lengths), each stopped before its last step
