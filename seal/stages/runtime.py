"""What one process loads once and reuses across stages and shards: the task's contexts, the
tokenizer, and the policy model of the round at hand."""

from __future__ import annotations

import logging
import tempfile
import time
from typing import Any

from seal.config import RunConfig
from seal.generation.backend import make_generator
from seal.generation.vllm_backend import local_dir
from seal.models.loading import choose_placement, load_model, load_tokenizer
from seal.stages.runs import fetch_policy, policy_has_adapter
from seal.store import Store
from seal.tasks import get_task
from seal.tasks.base import Task

log = logging.getLogger(__name__)


class Runtime:
    """The config, the run's store (None for evaluations without a run), and what is loaded lazily."""

    def __init__(self, cfg: RunConfig, run: Store | None):
        self.cfg, self.run = cfg, run
        self.task: Task = get_task(cfg.task.name)
        self._records: list[dict[str, Any]] | None = None
        self._tokenizer: Any = None
        self._model: Any = None
        self._model_round: int | None = None
        self._adapter_dirs: dict[int, str] = {}  # round -> its policy adapter, fetched for vLLM

    def context_count(self) -> int:
        """How many contexts the task has, without loading the tokenizer (the plan needs no more)."""
        return len(self._records) if self._records is not None else len(self.task.load_contexts(self.cfg.task))

    @property
    def records(self) -> list[dict[str, Any]]:
        """The task's contexts; a task with `bind_tokenizer` (ARC: the chat format) gets the
        tokenizer once here, so its prompts are built as the model reads them."""
        if self._records is None:
            records = self.task.load_contexts(self.cfg.task)
            bind = getattr(self.task, "bind_tokenizer", None)
            self._records = bind(records, self.tokenizer, self.cfg.task) if bind else records
        return self._records

    @property
    def tokenizer(self) -> Any:
        if self._tokenizer is None:
            self._tokenizer = load_tokenizer(self.cfg.model.base)
        return self._tokenizer

    def load_base(self) -> Any:
        placement = choose_placement(self.cfg.model.device, self.cfg.model.dtype)
        return load_model(self.cfg.model.base, placement)

    def has_policy_adapter(self, round_: int) -> bool:
        """Whether the model acting in round r carries an adapter (round r-1's M-step kept some)."""
        return round_ > 0 and self.run is not None and policy_has_adapter(self.run, round_ - 1)

    def policy_model(self, round_: int) -> Any:
        """The model acting in round r: the base with round r-1's policy adapter merged in."""
        if self._model_round != round_:
            self._model = None  # free the previous round's weights before loading new ones
            t0 = time.perf_counter()
            model = self.load_base()
            if self.has_policy_adapter(round_):
                from peft import PeftModel

                with tempfile.TemporaryDirectory(prefix="seal-policy-") as tmp:
                    fetch_policy(self.run, round_ - 1, tmp)
                    model = PeftModel.from_pretrained(model, tmp).merge_and_unload()
                model.eval()
            # A pod's fixed cost: compare it with the stage's time to size shards (shards.*_size).
            log.info("round %d model loaded in %.1f s", round_, time.perf_counter() - t0)
            self._model, self._model_round = model, round_
        return self._model

    def policy_generator(self, round_: int) -> Any:
        """The self-edit sampler of round r, on the backend sampling.backend picks: vLLM serves the
        base plus round r-1's policy adapter as a LoRARequest; transformers runs the base with that
        adapter merged in (policy_model)."""
        def fetch_adapter() -> str | None:
            if not self.has_policy_adapter(round_):
                return None
            if round_ not in self._adapter_dirs:  # once per round: shards and seeds ask again
                folder = local_dir("seal-policy-")  # lives until exit: vLLM reads adapters lazily
                fetch_policy(self.run, round_ - 1, folder)
                self._adapter_dirs[round_] = folder
            return self._adapter_dirs[round_]

        return make_generator(self.cfg, self.tokenizer, lambda: self.policy_model(round_), fetch_adapter)

    def release(self) -> None:
        self._model, self._model_round = None, None
