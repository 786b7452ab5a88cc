"""LoRA fine-tuning with peft: one small loop shared by the sequential inner loop (a fit on a self-edit)
and the M-step (SFT of the policy).

An example is a text, or a (prompt, completion) pair whose loss covers the completion only.
Padding never enters the loss (the reference implementation let it in: a bug not to copy).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Any

from seal.config import LoraConfig
from seal.seeds import seed_everything

log = logging.getLogger(__name__)

IGNORE = -100  # label value the cross-entropy loss skips


@dataclass(frozen=True)
class Example:
    """Training text; with a prompt, the loss covers `text` only (SFT on completions)."""

    text: str
    prompt: str = ""


def leading_specials(tokenizer: Any) -> list[int]:
    """[bos] when the tokenizer starts every text it encodes with BOS (Gemma, Llama), else []: the
    trained rows then begin as the prompts generation feeds the model do (Gemma without its BOS
    answers badly). Tokenizers that add none (Qwen, seal's tiny ones) are unchanged."""
    bos = tokenizer.bos_token_id
    return [bos] if bos is not None and tokenizer("")["input_ids"][:1] == [bos] else []


def encode(tokenizer: Any, example: Example, max_length: int) -> tuple[list[int], list[int]]:
    """Token ids and labels (prompt tokens masked), with EOS so the model learns to stop.

    A row starts as the generation backends start a prompt, with the tokenizer's leading special
    tokens (Gemma's and Llama 3's BOS), so a model trains on the token sequences it is later
    prompted with; the continuation gets none.
    """
    prompt_ids = leading_specials(tokenizer)
    if example.prompt:
        prompt_ids = prompt_ids + tokenizer(example.prompt, add_special_tokens=False)["input_ids"]
    text_ids = tokenizer(example.text, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    ids = (prompt_ids + text_ids)[:max_length]
    labels = ([IGNORE] * len(prompt_ids) + text_ids)[:max_length]
    return ids, labels


def collate(rows: list[tuple[list[int], list[int]]], pad_id: int) -> dict[str, Any]:
    """Right-pad a batch; padded positions get attention 0 and label IGNORE."""
    import torch

    width = max(len(ids) for ids, _ in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    labels = torch.full((len(rows), width), IGNORE, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, (x, y) in enumerate(rows):
        ids[i, : len(x)] = torch.tensor(x)
        labels[i, : len(y)] = torch.tensor(y)
        mask[i, : len(x)] = 1
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def labelled_logits(model: Any, input_ids: Any, attention_mask: Any, labels: Any) -> tuple[Any, Any, Any]:
    """The model's next-token logits at the positions whose shifted label counts, only there:
    (logits [K, vocab], their targets [K], the batch row of each [K]).

    With a 262k vocabulary (Gemma 3) the LM head is most of a small model's compute and its
    logits most of its memory: 1 MB per position in fp32. Prompts (masked in SFT) and padding
    need none, so a pre-hook hands the head only the labelled positions' hidden states; whatever
    the model does to the head's output (Gemma's soft-capping) still applies, element by element.
    The loss is then HF's causal LM loss exactly (labels shifted left by one, IGNORE skipped).
    """
    import torch.nn.functional as F

    shift = F.pad(labels, (0, 1), value=IGNORE)[:, 1:]
    keep = shift != IGNORE

    def only_labelled(module: Any, args: tuple) -> tuple:
        hidden = args[0]
        if hidden.shape[:2] != keep.shape:
            raise RuntimeError(f"LM head input {tuple(hidden.shape)} does not match the batch {tuple(keep.shape)}")
        return (hidden[keep], *args[1:])

    handle = model.get_output_embeddings().register_forward_pre_hook(only_labelled)
    try:
        logits = model(input_ids=input_ids, attention_mask=attention_mask).logits
    finally:
        handle.remove()
    return logits, shift[keep], keep.nonzero()[:, 0]


def causal_lm_loss(model: Any, batch: dict[str, Any]) -> Any:
    """Token-mean cross-entropy over the batch's labelled positions (HF's `model(**batch).loss`)."""
    import torch.nn.functional as F

    logits, targets, _ = labelled_logits(model, batch["input_ids"], batch["attention_mask"], batch["labels"])
    return F.cross_entropy(logits.float(), targets)


def peft_config(lora: LoraConfig) -> Any:
    from peft import LoraConfig as PeftLoraConfig

    return PeftLoraConfig(
        r=lora.rank,
        lora_alpha=lora.alpha,
        lora_dropout=lora.dropout,
        target_modules=list(lora.target_modules),
        bias="none",
        task_type="CAUSAL_LM",
    )


def attach_lora(model: Any, lora: LoraConfig, seed: int, adapter_dir: str | None = None) -> Any:
    """Wrap `model` with a fresh LoRA adapter (seeded init), or a trainable copy of a saved one."""
    from peft import PeftModel, get_peft_model

    seed_everything(seed)
    if adapter_dir:
        return PeftModel.from_pretrained(model, adapter_dir, is_trainable=True)
    return get_peft_model(model, peft_config(lora))


def lora_update(model: Any, tokenizer: Any, examples: list[Example], lora: LoraConfig, seed: int,
                max_length: int) -> tuple[Any, dict[str, float]]:
    """One LoRA adapter trained over `model` on `examples` (a fresh seeded adapter, `train`'s loop):
    the update of the CPT and continual evaluations, many passages' texts or one step of a
    sequence. Returns the PeftModel (save, merge or unload it) and the loss stats."""
    peft_model = attach_lora(model, lora, seed)
    return peft_model, train(peft_model, tokenizer, examples, lora, seed, max_length)


def schedule(n_rows: int, lora: LoraConfig, seed: int) -> list[list[int]]:
    """The batches (row indices) of a fit, in order: `lora.epochs` seeded permutations of the rows,
    cut into `lora.batch_size` batches. `train` walks it, and so does the batched trainer, so both
    see each adapter's data in the same order."""
    import torch

    gen = torch.Generator().manual_seed(seed)
    steps = []
    for _ in range(lora.epochs):
        order = torch.randperm(n_rows, generator=gen).tolist()
        steps.extend(order[s: s + lora.batch_size] for s in range(0, len(order), lora.batch_size))
    return steps


def lr_factor(step: int, total: int, kind: str) -> float:
    """The share of `lr` that optimiser step `step` (from 0) of `total` uses. 'linear' is Hugging
    Face's linear schedule without warm-up, which the paper's Trainer runs: (total - step) / total,
    so the first step uses lr and the last lr / total. 'cosine' is Hugging Face's cosine schedule
    without warm-up (half a cosine from lr to 0), which the paper's ARC test-time training runs.
    Both trainers call this: the sequential one sets its AdamW's lr, the batched one scales each
    adapter's lr in its stacked step."""
    if kind == "constant" or total <= 0:
        return 1.0
    if kind == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * min(step, total) / total))
    return max(0.0, (total - step) / total)


def train(peft_model: Any, tokenizer: Any, examples: list[Example], lora: LoraConfig, seed: int,
          max_length: int, accumulate: int = 1) -> dict[str, float]:
    """Run `lora.epochs` passes of AdamW over the examples in a seeded order; returns loss stats.
    With `accumulate` > 1, that many consecutive batches add their gradients (each loss divided by
    the count) before one optimiser step; the lr schedule counts optimiser steps."""
    import torch

    device = next(peft_model.parameters()).device
    rows = [encode(tokenizer, ex, max_length) for ex in examples]
    rows = [r for r in rows if any(label != IGNORE for label in r[1])]
    params = [p for p in peft_model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lora.lr, weight_decay=lora.weight_decay)
    peft_model.train()
    first = last = float("nan")
    batches = schedule(len(rows), lora, seed)
    # Accumulation restarts every epoch, as in Hugging Face's Trainer: an epoch's last group may be short.
    per_epoch = -(-len(rows) // lora.batch_size)
    epochs = [batches[i: i + per_epoch] for i in range(0, len(batches), per_epoch)] if per_epoch else []
    groups = [ep[i: i + accumulate] for ep in epochs for i in range(0, len(ep), accumulate)]
    steps = 0
    for step, group in enumerate(groups):
        for g in opt.param_groups:
            g["lr"] = lora.lr * lr_factor(step, len(groups), lora.lr_schedule)
        opt.zero_grad(set_to_none=True)
        losses = []
        for batch_rows in group:
            batch = collate([rows[i] for i in batch_rows], tokenizer.pad_token_id)
            batch = {k: v.to(device) for k, v in batch.items()}
            loss = causal_lm_loss(peft_model, batch)
            (loss / len(group) if len(group) > 1 else loss).backward()
            losses.append(float(loss.detach()))
        opt.step()
        last = sum(losses) / len(losses)
        if steps == 0:
            first = last
        steps += 1
    peft_model.eval()
    return {"steps": steps, "first_loss": first, "last_loss": last}
