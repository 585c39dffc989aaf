"""A model behind an OpenAI-compatible endpoint, evaluated like a local one (``ServedLM.iter_generate``)."""

from __future__ import annotations

import collections
import dataclasses
from collections.abc import Iterator, Sequence
from typing import Any

from textbooks.errors import ConfigError, TextbooksError
from textbooks.eval.models.completions import Completion, GenerationConfig, TextModel, row_seed

CHAT_INSTRUCTION = (  # EvalPlus's instruction for chat models; the problem follows in a code block
    "Please provide a self-contained Python script that solves the following problem in a markdown code block:"
)
SERVED_APIS = ("chat", "completions")


class ServedLM(TextModel):
    """A model behind an OpenAI-compatible endpoint, generating through ``textbooks.llm.client``'s client
    (response cache, retries, concurrency): the same ``iter_generate`` as a local ``LM``.

    ``api="completions"`` (base models): the prompt is continued as is, with the stop sequences sent to the
    server and applied again here (servers cap how many they take). ``api="chat"`` (instruct models): one
    user message, ``instruction`` then the prompt in a code block; the answer comes back whole, for the
    caller to sanitize. Greedy decoding asks once per prompt (copied ``n`` times); sampling asks ``n``
    times with per-sample seeds (``row_seed``), so a rerun asks the same requests and the cache answers.
    Failed requests (after the client's retries) are not yielded; when the others are done,
    ``GenerationError`` says how many failed and why (their problems are generated on the rerun).
    """

    def __init__(self, llm: Any, *, api: str = "chat", instruction: str = CHAT_INSTRUCTION) -> None:
        if api not in SERVED_APIS:
            raise ConfigError(f"api={api!r}: use chat (instruct models) or completions (base models)")
        self.llm = llm  # textbooks.llm.client.LLMConfig, with base_url set
        self.api = api
        self.instruction = instruction

    def chat_prompt(self, prompt: str) -> str:
        return f"{self.instruction}\n```python\n{prompt.strip()}\n```\n"

    def describe(self) -> dict[str, Any]:
        return {
            "kind": "served",
            "name": self.llm.model,
            "endpoint": self.llm.base_url,
            "api": self.api,
            **({"instruction": self.instruction} if self.api == "chat" else {}),
        }

    def iter_generate(
        self, prompts: Sequence[str], config: GenerationConfig, keys: Sequence[str] | None = None
    ) -> Iterator[Completion]:
        """Yield a ``Completion`` for every answered request, in prompt order (see the class docstring)."""
        from textbooks.llm.client import LLMClient

        if keys is not None and len(keys) != len(prompts):
            raise ConfigError(f"generate: {len(keys)} keys for {len(prompts)} prompts")
        keys = [str(k) for k in keys] if keys is not None else [str(i) for i in range(len(prompts))]
        llm = dataclasses.replace(self.llm, progress=False)
        rows: list[tuple[int, int]] = []
        with LLMClient(llm) as client:
            requests = []
            for i, prompt in enumerate(prompts):
                for j in [-1] if config.greedy else range(config.n):
                    params: dict[str, Any] = {"max_tokens": config.max_new_tokens, "temperature": 0.0}
                    if not config.greedy:
                        params.update(temperature=config.temperature, seed=row_seed(config.seed, keys[i], j))
                        params["top_p"] = config.top_p if config.top_p < 1 else None
                    if self.api == "completions":
                        requests.append(
                            client.completion_request(prompt, stop=list(config.stop) or None, **params)
                        )
                    else:
                        requests.append(client.request(self.chat_prompt(prompt), **params))
                    rows.append((i, j))
            failed: collections.Counter[str] = collections.Counter()
            example = ""
            for (i, j), res in zip(rows, client.iter_results(requests, desc="generating")):
                if not res.ok:
                    failed[str(res.error_kind)] += 1
                    example = example or str(res.error)
                    continue
                c = self._completion(i, j, res, config)
                if j >= 0:
                    yield c
                else:
                    for k in range(config.n):
                        yield dataclasses.replace(c, sample=k)
        if failed:
            raise GenerationError(
                f"{sum(failed.values())} of {len(requests)} requests to {self.llm.base_url} failed after "
                f"{self.llm.max_attempts} attempts ({dict(failed)}; e.g. {example[:200]}). The samples of every "
                "other problem are saved: fix the endpoint and rerun the same command to generate only the rest"
            )

    def _completion(self, i: int, j: int, res: Any, config: GenerationConfig) -> Completion:
        """An answer as a ``Completion``: "length" when cut at max_tokens, "stop" when cut here at a stop
        sequence, else "eos" (a stop sequence the server applied counts here: servers do not say which)."""
        from textbooks.benchmarks import truncate

        text, reason = res.text, "length" if res.finish_reason == "length" else "eos"
        if self.api == "completions" and config.stop:
            cut = truncate(text, config.stop)
            if cut != text:
                text, reason = cut, "stop"
        return Completion(
            index=i,
            sample=max(j, 0),
            text=text,
            finish_reason=reason,
            n_tokens=res.completion_tokens,
            prompt_tokens=res.prompt_tokens,
            prompt_dropped=0,
        )


class GenerationError(TextbooksError):
    """Generation could not finish; what was generated is kept and a rerun resumes."""
