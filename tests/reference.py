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


def _module(hf, paths, what):
    """The first of ``paths`` (dotted attribute paths) that a Hugging Face model has."""
    for path in paths:
        obj = hf
        try:
            for part in path.split("."):
                obj = getattr(obj, part)
        except AttributeError:
            continue
        return obj
    raise AssertionError(f"no {what} found on {type(hf).__name__}")


def final_norm(hf):
    """The final norm module of a Hugging Face causal LM."""
    return _module(hf, ("model.norm", "transformer.ln_f", "gpt_neox.final_layer_norm"), "final norm")


def blocks(hf):
    """The transformer blocks of a Hugging Face causal LM, in order."""
    return list(_module(hf, ("model.layers", "transformer.h", "gpt_neox.layers"), "blocks"))


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


def hf_output_transform(hf):
    """What a Hugging Face causal LM does to its logits after lm_head (Gemma-2's soft-cap), written out here."""
    cap = getattr(hf.config, "final_logit_softcapping", None)
    if cap:
        return lambda logits: cap * torch.tanh(logits / cap)
    return lambda logits: logits


def hf_lens_reference(folder, rs):
    """Top-1, gold rank and gold log-probability per problem, layer and position, from transformers alone.

    output_hidden_states gives the residual entering each block; each goes through the model's final norm,
    its lm_head and its output transform. The last column is the model's own output logits.
    """
    hf = transformers.AutoModelForCausalLM.from_pretrained(folder).eval()
    norm, unembed, transform = final_norm(hf), hf.get_output_embeddings(), hf_output_transform(hf)
    n_layers = hf.config.num_hidden_layers
    shape = (len(rs), n_layers + 1, rs.target_ids.shape[1])
    top1, rank, logp = torch.full(shape, -1), torch.full(shape, -1.0), torch.zeros(shape)
    with torch.no_grad():
        for i, e in enumerate(rs.encoded):
            out = hf(torch.tensor([list(e.prompt_ids) + list(e.answer_ids)]), output_hidden_states=True)
            n_pos = int((rs.target_ids[i] >= 0).sum())
            pos = [len(e.prompt_ids) - 1 + j for j in range(n_pos)]
            gold = rs.target_ids[i, :n_pos]
            for layer in range(n_layers + 1):
                if layer < n_layers:  # hidden_states[l] is the input of block l
                    logits = transform(unembed(norm(out.hidden_states[layer][0, pos])))
                else:  # the last hidden state is already normed by HF: take the model's own logits
                    logits = out.logits[0, pos]
                g = logits.gather(-1, gold[:, None])
                top1[i, layer, :n_pos] = logits.argmax(-1)
                rank[i, layer, :n_pos] = (logits > g).sum(-1).float()
                logp[i, layer, :n_pos] = logits.log_softmax(-1).gather(-1, gold[:, None])[:, 0]
    return top1, rank, logp
