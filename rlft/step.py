"""The data one training step passes between its phases, typed, and the one way completions are scored.

* `Example`: a dataset row made ready for the model -- the prompt as the rewards see it, as the model sees it,
  its tokens, and the row itself (its columns travel to the rewards as keywords; its line names it in errors).
* `StepBatch`: what a step has gathered so far -- examples, rollout, rewards, then the loss mask, reference
  log-probs and advantages (each phase returns a new one with `dataclasses.replace`; nothing is mutated).
* `MicroBatch`: rows of the rollout cut for one forward pass, padding trimmed, prompts shared within groups.
* `score`: every reward on a batch of completions -- the same function for training, the greedy evaluation during
  training and `rlft eval`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from .config import Config
from .data import Row, columns_of
from .errors import ConfigError, RunError
from .policy import encode_prompt, format_prompt
from .rewards import Reward, RewardResult, compute, resolve
from .sampling import Rollout


@dataclass(frozen=True)
class Example:
    prompt: str | list    # as the rewards see it: the template applied (text), or the chat messages
    text: str             # as the model sees it (chat template applied)
    ids: list[int]        # its tokens (cut to data.max_prompt_tokens from the left when data.long_prompts=truncate)
    row: Row              # the dataset row: its columns and its line in the file


@dataclass(frozen=True)
class StepBatch:
    examples: list[Example]                # [N] each prompt's example, repeated G times in a row
    rollout: Rollout
    token_rewards: torch.Tensor            # [N, T] the weighted rewards per token (minus the KL with kl_in: reward)
    valid: torch.Tensor                    # [N] bool: every reward was usable
    reward_metrics: dict
    kl_rewards: torch.Tensor | None = None  # [N, T] what the estimator sees: token_rewards - the KL (kl_in: reward)
    loss_mask: torch.Tensor | None = None  # [N, T] completion tokens that are trained
    ref_logp: torch.Tensor | None = None   # [N, T] under the reference policy (kl_coef > 0)
    advantages: torch.Tensor | None = None  # [N, T]


@dataclass(frozen=True)
class MicroBatch:
    """Rows of a rollout for one forward pass. With shared prompts (``owner`` set), ``prompt_ids`` holds each
    distinct prompt once and row i continues prompt ``owner[i]``; else one prompt per row."""

    rows: torch.Tensor             # [n] indices into the rollout
    prompt_ids: torch.Tensor       # [U, P] left-padded, padding columns trimmed
    prompt_mask: torch.Tensor      # [U, P]
    owner: torch.Tensor | None     # [n] or None
    completion_ids: torch.Tensor   # [n, T] right-padded, trimmed to the longest completion here
    completion_mask: torch.Tensor  # [n, T]

    @property
    def width(self) -> int:  # T
        return self.completion_ids.shape[1]

    @staticmethod
    def of(ro: Rollout, idx: list[int], group: int = 1) -> MicroBatch:
        """Index a micro-batch and trim its padding: prompts from the left, completions from the right.
        ``group > 1``: consecutive groups of that many rows share a prompt, and it comes once per group present."""
        dev = ro.prompt_ids.device
        ix = torch.tensor(idx, device=dev)
        groups = sorted({i // group for i in idx}) if group > 1 else []
        owner = None
        if groups and len(groups) < len(idx):
            where = {k: j for j, k in enumerate(groups)}
            owner = torch.tensor([where[i // group] for i in idx], device=dev)
            pix = torch.tensor([k * group for k in groups], device=dev)  # the first row of each group
        else:
            pix = ix
        pm, cm = ro.prompt_mask[pix], ro.completion_mask[ix]
        p = int(pm.sum(-1).max())
        t = max(1, int(cm.sum(-1).max()))
        w = ro.prompt_ids.shape[1]
        return MicroBatch(ix, ro.prompt_ids[pix, w - p:], pm[:, w - p:], owner, ro.completion_ids[ix, :t], cm[:, :t])

    def unshared(self) -> MicroBatch:
        """The same rows with each row's prompt of its own (for forwards that cannot share prompts)."""
        if self.owner is None:
            return self
        return MicroBatch(self.rows, self.prompt_ids[self.owner], self.prompt_mask[self.owner], None,
                          self.completion_ids, self.completion_mask)


# ------------------------------------------------------------------------------------------- examples

def make_examples(cfg: Config, tokenizer, rows: list[Row], where: str, counts: dict, *,
                  encoder: bool = False) -> list[Example]:
    """Rows -> examples: the template and chat template applied, tokenized, the long-prompt rule applied
    (``counts`` gains truncated_prompts / skipped_prompts). ``encoder``: prompts of a seq2seq model."""
    d = cfg.data
    out = []
    for row in rows:
        prompt = _templated(d, row)
        text = format_prompt(tokenizer, prompt, chat_template=cfg.model.chat_template, system=d.system)
        ids = encode_prompt(tokenizer, text, cfg.model.add_bos, encoder=encoder)
        if len(ids) > d.max_prompt_tokens:
            if d.long_prompts == "error":
                raise RunError(f"{where}, line {row.line}: the prompt has {len(ids)} tokens, over "
                               f"data.max_prompt_tokens={d.max_prompt_tokens} (or set data.long_prompts to "
                               f"truncate or skip)")
            key = "skipped_prompts" if d.long_prompts == "skip" else "truncated_prompts"
            counts[key] = counts.get(key, 0) + 1
            if d.long_prompts == "skip":
                continue
            ids = ids[-d.max_prompt_tokens:]
        out.append(Example(prompt, text, ids, row))
    return out


def _templated(d, row: Row):
    """The prompt as the rewards see it: data.template applied to a text prompt; chat messages as they are."""
    raw = row.columns[d.prompt_column]
    if not isinstance(raw, str):
        return raw
    try:
        return d.template.format(**{**row.columns, "prompt": raw})
    except KeyError as e:
        raise ConfigError(f"data.template {d.template!r} names column {e} that row at line {row.line} does not "
                          f"have") from None


# -------------------------------------------------------------------------------------------- rewards

RESERVED_NAMES = ("mean", "std", "invalid_frac", "len_mean")  # reward/mean, reward/std, ..., eval/len_mean


def build_rewards(cfg: Config, extra: list[Callable] | None = None) -> list[Reward]:
    """The config's rewards (``rewards.components``) and then ``extra`` (the Python API's ``rewards=``)."""
    comps = []
    for spec in cfg.rewards.components:
        try:
            fn = resolve(spec.fn)
        except ValueError as e:
            raise ConfigError(f"rewards: {e}") from None
        comps.append(Reward(spec.name or getattr(fn, "__name__", spec.fn), fn, spec.weight, dict(spec.args)))
    for fn in extra or []:
        comps.append(Reward(getattr(fn, "__name__", "reward"), fn))
    if not comps:
        raise ConfigError("no rewards: list at least one under `rewards:` (e.g. - fn: bleu) or pass rewards=[...]")
    names = [c.name for c in comps]
    if len(set(names)) != len(names):
        raise ConfigError(f"two rewards share a name ({names}); give each a distinct `name:`")
    for name in names:  # its metrics (reward/<name>, eval/<name>) would be the total's or another statistic's
        if name in RESERVED_NAMES or "/" in name or name.endswith("_none_frac"):
            raise ConfigError(f"a reward is named {name!r}, which names a statistic in the metrics (reserved: "
                              f"{', '.join(RESERVED_NAMES)}, names with '/', names ending in _none_frac); give it "
                              f"another `name:` in rewards (or another function name with rewards=)")
    return comps


def reward_columns(examples: list[Example], cfg: Config) -> dict[str, list]:
    """The dataset columns the rewards receive as keywords; the reference column also as ``reference``."""
    cols = columns_of([e.row for e in examples])
    if cfg.data.reference_column in cols and "reference" not in cols:
        cols["reference"] = cols[cfg.data.reference_column]
    return cols


def run_rewards(rewards: list[Reward], examples: list[Example], completions: list[str],
                completion_ids: list[list[int]], cfg: Config, *, step: int = 0, on_error: str | None = None,
                group_size: int | None = None, normalize: str | None = None,
                columns: dict | None = None) -> RewardResult:
    """Every reward on ``completions`` (one per example); the rest as the config says unless given. ``columns``:
    more keywords for the rewards besides the dataset's (e.g. an episode's ``conversation``)."""
    r = cfg.rewards
    return compute(rewards, [e.prompt for e in examples], completions, [len(x) for x in completion_ids],
                   {**reward_columns(examples, cfg), **(columns or {})}, step=step, on_error=on_error or r.on_error,
                   group_size=group_size or cfg.rollout.num_generations, normalize=normalize or r.normalize,
                   completion_ids=completion_ids)


def rollout_ids(ro: Rollout) -> list[list[int]]:
    """Each completion's token ids, without padding."""
    return [row[:n] for row, n in zip(ro.completion_ids.tolist(), ro.lengths.tolist())]


@dataclass(frozen=True)
class Scores:
    token_rewards: torch.Tensor  # [N, T]
    valid: torch.Tensor          # [N] bool
    result: RewardResult


def score(rewards: list[Reward], examples: list[Example], ro: Rollout, cfg: Config, step: int = 0,
          result: RewardResult | None = None, **kw) -> Scores:
    """The rollout's rewards as dense token rewards [N, T] and validity [N] (``result``: already computed, e.g.
    while sampling with rewards.overlap; ``kw``: `run_rewards`' overrides)."""
    if result is None:
        result = run_rewards(rewards, examples, ro.completions, rollout_ids(ro), cfg, step=step, **kw)
    t = ro.completion_ids.shape[1]
    dense = torch.zeros((len(examples), t))
    for i, vals in enumerate(result.token_rewards):
        if t:
            dense[i, :len(vals)] = torch.tensor(vals[:t])
    device = ro.logp.device
    return Scores(dense.to(device), torch.tensor([not b for b in result.invalid], device=device), result)
