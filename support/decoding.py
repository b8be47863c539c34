"""
Greedy decoding and label scoring around any model: the parts that do not depend on the network. Each family
(model_t5.py, model_llama.py) supplies its forward passes and calls these.

    out = greedy(next_logits, batch_size, device, max_new_tokens, stop_ids, fill_id)   # (B, <= max_new_tokens)
    tokens, offsets, segments, own = pack(candidates, device)   # candidates side by side, one pass scores all
    scores = per_candidate(token_logp, segments, len(candidates))                         # (B, C)
"""
import torch


@torch.no_grad()
def greedy(next_logits, batch_size, device, max_new_tokens, stop_ids, fill_id):
    """The greedy loop: next_logits(step, tokens (B, 1) or None before the first) -> (B, V) logits of the next
    position. A row that has produced a stop id gets fill_id from then on; the loop ends when every row has, as
    Hugging Face `generate(do_sample=False)` does. -> (B, <= max_new_tokens) new ids."""
    stop = torch.tensor(stop_ids, device=device)
    done = torch.zeros(batch_size, dtype=torch.bool, device=device)
    token, out = None, []
    for step in range(max_new_tokens):
        token = next_logits(step, token).argmax(-1, keepdim=True)  # (B, V) -> (B, 1)
        token = token.masked_fill(done[:, None], fill_id)
        out.append(token)
        done |= torch.isin(token[:, 0], stop)
        if done.all():
            break
    return torch.cat(out, dim=1)


def pack(candidates, device):
    """C candidate token lists side by side in one sequence of L tokens: (tokens (L,), offsets (L,): each token's
    index in its candidate, segments (L,): which candidate, own (L, L): the block-diagonal causal mask, under which
    each token sees only its own candidate's earlier tokens), so that one pass scores each as if it were alone."""
    tokens = torch.tensor([t for c in candidates for t in c], device=device)
    offsets = torch.tensor([i for c in candidates for i in range(len(c))], device=device)
    segments = torch.tensor([j for j, c in enumerate(candidates) for _ in c], device=device)
    own = (segments[None, :] == segments[:, None]) & (offsets[None, :] <= offsets[:, None])
    return tokens, offsets, segments, own


def per_candidate(token_logp, segments, n_candidates):
    """(B, L) log-probabilities of the packed tokens -> (B, C) the sum over each candidate's tokens."""
    return torch.zeros(token_logp.shape[0], n_candidates, device=token_logp.device).index_add_(1, segments,
                                                                                               token_logp)
