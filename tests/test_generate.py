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
