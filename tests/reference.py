"""Independent references for the logit lens: the model's own forward pass and plain Hugging Face."""

import torch
import transformers


def own_prediction(model, rs):
    """Argmax of the model's own forward pass at every answer position, one problem at a time."""
    out = torch.full(rs.target_ids.shape, -1)
    with torch.inference_mode():
        for i, e in enumerate(rs.encoded):
            logits = model(torch.tensor([list(e.prompt_ids) + list(e.answer_ids)]))[0]
            p = len(e.prompt_ids) - 1
            for j in range(len(e.answer_ids)):
                out[i, j] = logits[p + j].argmax()
    return out


def final_norm(hf):
    """The final norm module of a Hugging Face causal LM."""
    for path in ("model.norm", "transformer.ln_f", "gpt_neox.final_layer_norm"):
        obj = hf
        try:
            for part in path.split("."):
                obj = getattr(obj, part)
        except AttributeError:
            continue
        return obj
    raise AssertionError(f"no final norm found on {type(hf).__name__}")


def hf_reference_top1(folder, rs):
    """Top-1 per problem, layer and position from transformers alone: output_hidden_states, final norm, unembedding."""
    hf = transformers.AutoModelForCausalLM.from_pretrained(folder).eval()
    norm, unembed = final_norm(hf), hf.get_output_embeddings()
    n_layers = hf.config.num_hidden_layers
    top1 = torch.full((len(rs), n_layers + 1, rs.target_ids.shape[1]), -1)
    with torch.no_grad():
        for i, e in enumerate(rs.encoded):
            out = hf(torch.tensor([list(e.prompt_ids) + list(e.answer_ids)]), output_hidden_states=True)
            pos = [len(e.prompt_ids) - 1 + j for j in range(len(e.answer_ids))]
            for layer in range(n_layers):  # hidden_states[l] is the input of block l
                top1[i, layer, : len(pos)] = unembed(norm(out.hidden_states[layer][0, pos])).argmax(-1)
            top1[i, n_layers, : len(pos)] = out.logits[0, pos].argmax(-1)  # the last one is already normed by HF
    return top1


def greedy(model, e):
    """Greedy continuation of a problem's prompt, as many tokens as its answer has."""
    tokens = list(e.prompt_ids)
    with torch.inference_mode():
        for _ in e.answer_ids:
            tokens.append(int(model(torch.tensor([tokens]))[0, -1].argmax()))
    return tuple(tokens[len(e.prompt_ids) :])
