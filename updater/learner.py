"""Test-then-train: score a micro-batch with the current weights, then take one step on it."""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch import nn

from rankcore.errors import ConfigError
from rankcore.features import Batch, score
from rankcore.metrics import Prequential
from rankcore.model import FEATURES, Ranker, RankerConfig

DEFAULT_SPARSE_LR = 0.03
DEFAULT_DENSE_LR = 0.003
PRE_TEXT_SETTINGS = {"text_dim": 0, "item_dropout": 0.0}


def pick_device(requested: str = "auto") -> torch.device:
    """``auto`` takes CUDA when present, else the CPU."""
    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(requested)


# Batches of touched rows kept per table before they are merged into one sorted array.
TOUCHED_PARTS = 256
# Where Learner.state() puts the embedding tables and their moments: the checkpoint's base.
TABLES = "_tables"
MOMENTS = ("exp_avg", "exp_avg_sq")


def _feature_of(name: str) -> str:
    """``embeddings.user.weight`` -> ``user``; the item bias shares the item table's rows."""
    return "item" if name == "item_bias.weight" else name.split(".")[1]


def _compact(parts_by_feature: dict[str, list[np.ndarray]], keep: int = TOUCHED_PARTS) -> None:
    """The same rows, once each, in one sorted array per feature with more than ``keep`` parts."""
    for feature, parts in parts_by_feature.items():
        if len(parts) > keep:
            parts_by_feature[feature] = [np.unique(np.concatenate(parts))]


class Learner:
    """Owns the model, its two optimisers and the prequential metrics."""

    def __init__(
        self,
        config: RankerConfig,
        device: str = "auto",
        sparse_lr: float = DEFAULT_SPARSE_LR,
        dense_lr: float = DEFAULT_DENSE_LR,
        seed: int = 0,
    ) -> None:
        self.config = config
        self.device = pick_device(device)
        # Seeded without touching the process's global RNG (forked and restored around the init).
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            self.model = Ranker(config).to(self.device)
        self.sparse_opt = torch.optim.SparseAdam(self.model.sparse_parameters(), lr=sparse_lr)
        groups: list[dict[str, Any]] = [{"params": self.model.dense_parameters(), "lr": dense_lr}]
        if wide := self.model.wide_parameters():
            # One weight, moving at the embeddings' rate: at the MLP's it reached half as far
            # (0.46 against 0.92) over the text benchmark's stream.
            groups.append({"params": wide, "lr": sparse_lr})
        self.dense_opt = torch.optim.Adam(groups, lr=dense_lr)
        self.loss_fn = nn.BCEWithLogitsLoss()
        # Draws the rows that learn as if their item were new (config.item_dropout); its state is
        # checkpointed, so a restored learner drops the same rows as the one that crashed would.
        self.dropout_rng = torch.Generator().manual_seed(seed)
        self.metrics = Prequential()
        self.samples_trained = 0
        self.steps = 0
        # With tracking on, per feature, the rows each step changed since the last
        # take_touched() (the sparse optimiser moves only the rows a batch holds; a recycled
        # row was reset).
        self.tracking = False
        self._touched: dict[str, list[np.ndarray]] = {f: [] for f in FEATURES}
        # Always, per feature, the rows changed since the last checkpoint base (see state()).
        self._dirty: dict[str, list[np.ndarray]] = {f: [] for f in FEATURES}

    def learn(
        self, batch: Batch, share: slice | None = None, sync: Callable[[Ranker], None] | None = None
    ) -> np.ndarray:
        """Score ``batch`` (recorded in the prequential metrics), then learn from it.

        Returns the scores the model gave before the update. In a data-parallel group
        (:mod:`updater.group`) ``batch`` is the whole step's batch, the same on every rank, and
        this rank scores and learns the rows of ``share`` (its own samples; possibly none): its
        loss is its share of the step's mean, ``sync`` sums the gradients over the group, and
        every rank takes the step one process would take on the whole batch.
        """
        if batch.recycled:
            self._reset_rows(batch.recycled)
        mine = batch if share is None else batch.rows(share)
        self.sparse_opt.zero_grad(set_to_none=True)
        self.dense_opt.zero_grad(set_to_none=True)
        scores = np.zeros(0, dtype=np.float32)
        if len(mine):
            scores = self._backward(mine, len(mine) / len(batch))
        if sync is not None:
            sync(self.model)
        self.sparse_opt.step()
        self.dense_opt.step()
        changed: dict[str, np.ndarray] = {
            "user": batch.user,
            "token": batch.tokens.ravel(),
            "item": batch.item,
            "category": batch.category,
            "brand": batch.brand,
        }
        for feature, reset in (batch.recycled or {}).items():
            changed[feature] = np.concatenate([changed[feature], np.asarray(reset, dtype=np.int64)])
        for tracked in (self._dirty, self._touched) if self.tracking else (self._dirty,):
            for feature, part in changed.items():
                tracked[feature].append(part)
            if len(tracked["user"]) > TOUCHED_PARTS:
                _compact(tracked)
        self.samples_trained += len(mine)
        self.steps += 1
        return scores

    def _backward(self, batch: Batch, weight: float) -> np.ndarray:
        """Scores of ``batch`` (into the metrics), and the gradients of ``weight`` times its mean loss."""
        self.model.train()
        inputs = batch.tensors(self.device)
        dropped = self._dropped(len(batch))
        logits = self.model(*inputs, new_items=dropped)
        labels = torch.from_numpy(batch.label).to(self.device)
        scores: np.ndarray = torch.sigmoid(logits.detach()).cpu().numpy()
        if dropped is not None and bool(dropped.any()):
            # What the model says of these rows with their item known, for the metrics.
            with torch.no_grad():
                rows = dropped.nonzero().squeeze(1)
                clean = self.model(*(t.index_select(0, rows) for t in inputs))
            scores[rows.cpu().numpy()] = torch.sigmoid(clean).cpu().numpy()
        self.metrics.update(scores, batch.label, batch.keys, batch.impression_ts_ms)
        loss = self.loss_fn(logits, labels)
        (loss if weight == 1.0 else loss * weight).backward()
        return scores

    def take_touched(self) -> dict[str, np.ndarray]:
        """Per feature, the sorted rows changed since the last call (the item's bias shares its rows)."""
        out = {f: np.unique(np.concatenate(parts)) for f, parts in self._touched.items() if parts}
        self._touched = {f: [] for f in FEATURES}
        return out

    def _dropped(self, n: int) -> torch.Tensor | None:
        """The rows of a batch of ``n`` that learn as if their item were new (None: none)."""
        rate = self.config.item_dropout
        if not rate:
            return None
        return (torch.rand(n, generator=self.dropout_rng) < rate).to(self.device)

    def _reset_rows(self, recycled: dict[str, list[int]]) -> None:
        """New ids took these rows over: zero their weights and their optimiser moments."""
        model = self.model
        for feature, rows in recycled.items():
            model.reset_rows(feature, rows)
            params = [model.table(feature).weight] + ([model.item_bias.weight] if feature == "item" else [])
            index = torch.tensor(rows, dtype=torch.long, device=self.device)
            for p in params:
                for moment in self.sparse_opt.state.get(p, {}).values():
                    if isinstance(moment, torch.Tensor) and moment.shape == p.shape:
                        moment.index_fill_(0, index, 0.0)

    def score(self, batch: Batch) -> np.ndarray:
        return score(self.model, batch)

    def expect(self, impressions: Batch) -> None:
        """Score impressions as they arrive: their samples count with these scores when learned."""
        if impressions.keys is None:
            raise ValueError("expected impressions with their (request_id, item_id) keys")
        self.metrics.expect(impressions.keys, self.score(impressions))

    def frozen_copy(self) -> Ranker:
        """A CPU copy of the model for export, detached from further training."""
        model = copy.deepcopy(self.model).to("cpu")
        model.eval()
        return model

    def dirty_fraction(self) -> float:
        """Rows changed since the last base, as a share of all embedding rows."""
        _compact(self._dirty, keep=0)
        changed = sum(len(parts[0]) for parts in self._dirty.values() if parts)
        return changed / sum(self.config.capacity(f) for f in FEATURES)

    def state(self, patch: bool = False) -> dict[str, Any]:
        """Everything to resume from. The embedding tables and their optimiser moments (all but
        a few kB of a large model) go under ``TABLES``, a *base* the checkpoint store writes to
        a file of its own; with ``patch``, only the rows changed since the last base do, under
        ``"patch"`` (the rest of the base on disk stands): a checkpoint's cost follows the rows
        the stream touches, not the tables' size. :meth:`base_written` clears the changed rows."""
        sparse = self._sparse_names()
        model = {k: v for k, v in self.model.state_dict().items() if k not in sparse}
        opt = self.sparse_opt.state_dict()
        moments = {i: opt["state"].get(i, {}) for i in range(len(sparse))}
        steps = {i: m["step"] for i, m in moments.items() if "step" in m}
        state: dict[str, Any] = {
            "config": self.config.to_dict(),
            "model": model,
            "sparse_steps": steps,
            "sparse_groups": opt["param_groups"],
            "dense_opt": self.dense_opt.state_dict(),
            "metrics": self.metrics.state(),
            "samples_trained": self.samples_trained,
            "steps": self.steps,
            "dropout_rng": self.dropout_rng.get_state(),
        }
        params = self.model.sparse_parameters()
        if not patch:
            tables: dict[str, torch.Tensor] = {}
            for i, name in enumerate(sparse):
                tables[name] = params[i].detach()
                for moment in MOMENTS:
                    if moment in moments[i]:
                        tables[f"{name}.{moment}"] = moments[i][moment]
            state[TABLES] = tables
            return state
        _compact(self._dirty, keep=0)
        rows = {f: parts[0] if parts else np.zeros(0, np.int64) for f, parts in self._dirty.items()}
        patches: dict[str, dict[str, torch.Tensor]] = {}
        for i, name in enumerate(sparse):
            index = torch.from_numpy(rows[_feature_of(name)]).to(params[i].device)
            entry = {"rows": index.cpu(), "weight": params[i].detach()[index].cpu()}
            for moment in MOMENTS:
                if moment in moments[i]:
                    entry[moment] = moments[i][moment][index].cpu()
            patches[name] = entry
        state["patch"] = patches
        return state

    def base_written(self) -> None:
        """A base with every row is on disk: the next patch starts from nothing."""
        self._dirty = {f: [] for f in FEATURES}

    def _sparse_names(self) -> list[str]:
        """The state-dict names of :meth:`Ranker.sparse_parameters`, in that order."""
        by_id = {id(p): n for n, p in self.model.named_parameters()}
        return [by_id[id(p)] for p in self.model.sparse_parameters()]

    def restore(self, state: dict[str, Any]) -> None:
        # Checkpoints from before the text tower name neither setting: they had neither, so
        # they restore with --model-text-dim 0 --model-item-dropout 0.
        saved = {**PRE_TEXT_SETTINGS, **state["config"]}
        if saved != self.config.to_dict():
            raise ConfigError(
                f"expected the model settings the checkpoint was made with, {saved}"
                " (pass the same --model-* flags, or start from an empty --state-dir),"
                f" got {self.config.to_dict()}"
            )
        if "sparse_opt" in state:  # a checkpoint from before bases and patches: everything inline
            self.model.load_state_dict(state["model"])
            self.sparse_opt.load_state_dict(state["sparse_opt"])
        else:
            self._restore_tables(state)
        self.dense_opt.load_state_dict(state["dense_opt"])
        self.metrics.restore(state["metrics"])
        self.samples_trained = int(state["samples_trained"])
        self.steps = int(state["steps"])
        if "dropout_rng" in state:
            self.dropout_rng.set_state(state["dropout_rng"])

    def _restore_tables(self, state: dict[str, Any]) -> None:
        """The base's tables, the patch's rows over them, then the rest of the model."""
        tables, patches = state[TABLES], state.get("patch", {})
        sparse = self._sparse_names()
        self.model.load_state_dict({**state["model"], **{n: tables[n] for n in sparse}})
        params = self.model.sparse_parameters()
        opt_state: dict[int, dict[str, Any]] = {}
        dirty: dict[str, list[np.ndarray]] = {f: [] for f in FEATURES}
        for i, name in enumerate(sparse):
            entry = patches.get(name)
            moments = {m: tables[f"{name}.{m}"].clone() for m in MOMENTS if f"{name}.{m}" in tables}
            if entry is not None and len(entry["rows"]):
                index = entry["rows"].to(params[i].device)
                with torch.no_grad():
                    params[i].index_copy_(0, index, entry["weight"].to(params[i].device))
                for moment in MOMENTS:
                    if moment in entry:
                        target = moments.setdefault(moment, torch.zeros_like(params[i]))
                        target.index_copy_(0, index.to(target.device), entry[moment].to(target.device))
                if name != "item_bias.weight":
                    dirty[_feature_of(name)].append(entry["rows"].numpy())
            if i in state["sparse_steps"]:
                opt_state[i] = {"step": state["sparse_steps"][i], **moments}
        self.sparse_opt.load_state_dict({"state": opt_state, "param_groups": state["sparse_groups"]})
        # The rows the patch held are still changed since that base.
        self._dirty = dirty
