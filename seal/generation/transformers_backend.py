"""The transformers generation backend: self-edit sampling and greedy answers on any torch device.

`TransformersGenerator` decodes with its own short loop instead of `model.generate` so that every
sequence samples from its own seeded generator: a self-edit then depends on (run seed, round,
context, k), not on which other prompts shared its batch. `seal.generation.vllm_backend` has the
same `generate()` signature; `seal.generation.backend.make_generator` picks between them.
"""

from __future__ import annotations

from typing import Any

from seal.generation.params import Completion, GenParams


class TransformersGenerator:
    """Batched generation with a KV cache over any HF causal LM (a PeftModel included)."""

    name = "transformers"

    def __init__(self, model: Any, tokenizer: Any, route: Any = None):
        self.model = model
        self.tokenizer = tokenizer
        # route(adapter_ids) tells a multi-adapter model (seal.inner.multilora) which adapter each row of
        # the next batch uses; `generate(..., adapters=[...])` needs it.
        self.route = route

    def generate(self, prompts: list[str], seeds: list[int], params: GenParams,
                 adapters: list[int] | None = None) -> list[Completion]:
        """One completion per prompt; with `adapters`, prompt i is answered by adapter adapters[i]."""
        assert len(prompts) == len(seeds)
        assert adapters is None or (self.route is not None and len(adapters) == len(prompts))
        out: list[Completion] = []
        for start in range(0, len(prompts), params.batch_size):
            end = start + params.batch_size
            chunk = adapters[start:end] if adapters is not None else None
            out.extend(self._batch(prompts[start:end], seeds[start:end], params, chunk))
        if adapters is not None:
            self.route(None)
        return out

    def _batch(self, prompts: list[str], seeds: list[int], params: GenParams,
               adapters: list[int] | None = None) -> list[Completion]:
        import torch

        tok, model = self.tokenizer, self.model
        device = next(model.parameters()).device
        enc = tok(prompts, return_tensors="pt", padding=True, padding_side="left")
        ids = enc["input_ids"].to(device)
        mask = enc["attention_mask"].to(device)
        # Left padding shifts positions; derive them from the mask so padded rows match unpadded ones.
        pos = (mask.cumsum(-1) - 1).clamp(min=0)
        gens = [torch.Generator().manual_seed(s) for s in seeds]
        eos = tok.eos_token_id
        n = len(prompts)
        new_tokens: list[list[int]] = [[] for _ in range(n)]
        finished = [False] * n
        has_text = [False] * n
        past = None
        step_ids = ids
        live = list(range(n))  # rows still decoding; finished ones leave the batch (and its cost)
        if adapters is not None:
            self.route(adapters)
        with torch.no_grad():
            for _ in range(params.max_new_tokens):
                # logits_to_keep=1: only the last position's logits; a prompt's full logits would
                # be 1 MB per token with Gemma 3's 262k vocabulary, and the head most of the compute.
                res = model(
                    input_ids=step_ids, attention_mask=mask, position_ids=pos,
                    past_key_values=past, use_cache=True, logits_to_keep=1,
                )
                past = res.past_key_values
                logits = res.logits[:, -1, :].float().cpu()
                nxt = [self._pick(logits[j], gens[i], params) for j, i in enumerate(live)]
                for i, t in zip(live, nxt, strict=True):
                    if t == eos:
                        finished[i] = True
                        continue
                    if params.stop_at_newline:
                        piece = tok.decode([t])
                        if "\n" in piece and has_text[i]:
                            finished[i] = True
                            continue
                        has_text[i] = has_text[i] or bool(piece.strip())
                    new_tokens[i].append(t)
                if all(finished):
                    break
                keep = [j for j, i in enumerate(live) if not finished[i]]
                if len(keep) < len(live):
                    index = torch.tensor(keep, device=device)
                    past.batch_select_indices(index)
                    mask, pos = mask[index], pos[index]
                    live, nxt = [live[j] for j in keep], [nxt[j] for j in keep]
                    if adapters is not None:
                        self.route([adapters[i] for i in live])
                step_ids = torch.tensor(nxt, device=device).unsqueeze(1)
                mask = torch.cat([mask, mask.new_ones(len(live), 1)], dim=1)
                pos = pos[:, -1:] + 1
        return [
            Completion(
                text=tok.decode(toks, skip_special_tokens=True),
                tokens=len(toks),
                finish="stop" if finished[i] else "length",
            )
            for i, toks in enumerate(new_tokens)
        ]

    @staticmethod
    def _pick(logits: Any, gen: Any, params: GenParams) -> int:
        import torch

        if params.temperature <= 0:
            return int(logits.argmax())
        probs = torch.softmax(logits / params.temperature, dim=-1)
        if params.top_p < 1.0:
            sorted_p, order = _descending(probs, params.top_p)
            # Keep the smallest prefix whose mass reaches top_p (the first token always stays).
            drop = sorted_p.cumsum(-1) - sorted_p >= params.top_p
            sorted_p[drop] = 0.0
            probs = torch.zeros_like(probs).scatter_(0, order, sorted_p)
        return int(torch.multinomial(probs, 1, generator=gen))


# Above this vocabulary size a full sort per sampled token costs more than the model step
# (Gemma 3's 262k: 44 ms against 2 ms for the top 1,024, measured on one core).
LARGE_VOCAB = 65536
NUCLEUS_CANDIDATES = 1024


def _descending(probs: Any, top_p: float) -> tuple[Any, Any]:
    """probs sorted in descending order with their indices, as far as the nucleus reaches: the
    top NUCLEUS_CANDIDATES when their mass already reaches top_p (every later token would be
    dropped), else the full sort. The kept tokens and their probabilities are the full sort's."""
    if probs.numel() > LARGE_VOCAB:
        top, order = probs.topk(NUCLEUS_CANDIDATES)
        if float(top.cumsum(-1)[-1]) >= top_p:
            return top, order
    return probs.sort(descending=True)
