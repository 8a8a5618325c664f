"""The ranking model: embeddings for user, query tokens, item, category and brand, plus price,
and a text tower: frozen pretrained vectors of the query and the item's title.

Scores ``P(click | user, query, item)``. Embedding tables are sparse (``sparse=True``) so an
optimiser step touches only the rows in the batch; the rest is a small dense MLP. The text
tower (``text_dim > 0``) adds the query-title cosine, the title through a small trainable
projection, its products with the projected query and the user, and two wide terms (the cosine
and the projected query . title) straight to the logit: what lets a new item whose
title matches the query rank well before anyone clicks it, while the id embeddings still learn
what behaviour says.
The exporter rebuilds exactly this computation as an ONNX graph (see
``exporter/onnx_export.py``); the parity check keeps the two honest.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
from torch import nn

from rankcore.errors import ConfigError
from rankcore.vocab import PAD, RESERVED

FEATURES = ("user", "token", "item", "category", "brand")


@dataclass(frozen=True)
class RankerConfig:
    """Hyperparameters; capacities are rows per vocabulary (including the 2 reserved rows)."""

    user_capacity: int = 200_000
    token_capacity: int = 50_000
    item_capacity: int = 200_000
    category_capacity: int = 2_000
    brand_capacity: int = 10_000
    dim: int = 16
    hidden: int = 64
    max_tokens: int = 8
    # Width of the frozen text vectors (rankcore.text's table); 0 turns the text tower off.
    text_dim: int = 64
    # Share of training rows that learn as if their item were new (its id embedding and bias
    # dropped, DropoutNet-style), so the model learns to rank items nobody has clicked yet from
    # their title, category, brand and price instead of leaning on ids alone.
    item_dropout: float = 0.2
    # The output bias starts at logit(prior_ctr), so early scores are calibrated and the
    # prequential metrics are not dominated by the bias walking down from 0.5.
    prior_ctr: float = 0.1

    def __post_init__(self) -> None:
        for name, value in self.to_dict().items():
            if name == "prior_ctr":
                if not 0.0 < value < 1.0:
                    raise ConfigError(f"expected prior_ctr strictly between 0 and 1, got {value!r}")
            elif name == "item_dropout":
                if not 0.0 <= value < 1.0:
                    raise ConfigError(f"expected item_dropout in [0, 1), got {value!r}")
            elif name == "text_dim":
                if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                    raise ConfigError(f"expected text_dim to be an integer >= 0, got {value!r}")
            elif not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ConfigError(f"expected {name} to be a positive integer, got {value!r}")
        for feature in FEATURES:
            if self.capacity(feature) <= RESERVED:
                raise ConfigError(
                    f"expected {feature}_capacity > {RESERVED} (rows 0 and 1 are reserved), "
                    f"got {self.capacity(feature)}"
                )

    def capacity(self, feature: str) -> int:
        return int(getattr(self, f"{feature}_capacity"))

    def to_dict(self) -> dict[str, float]:
        return asdict(self)


class Ranker(nn.Module):
    """Click-probability model over (user, query tokens, item, category, brand, price)."""

    def __init__(self, config: RankerConfig) -> None:
        super().__init__()
        self.config = config
        d = config.dim
        self.embeddings = nn.ModuleDict(
            {f: nn.Embedding(config.capacity(f), d, padding_idx=PAD, sparse=True) for f in FEATURES}
        )
        self.item_bias = nn.Embedding(config.item_capacity, 1, padding_idx=PAD, sparse=True)
        for table in self.tables():
            nn.init.normal_(table.weight, std=0.05)
            with torch.no_grad():
                table.weight[PAD].zero_()
        nn.init.zeros_(self.item_bias.weight)
        # A new item starts neutral: on the Diginetica replay random item rows cost 0.018 AUC
        # after the drift (0.605 against 0.622), on the simulator nothing (0.752 both).
        nn.init.zeros_(self.table("item").weight)
        # [user, query, item, category, brand, user*item, query*item, query*category, log price]
        # and with text: [cos(query, title), P title, P query * P title, user * P title]
        inputs = 8 * d + 1
        self.text_proj: nn.Linear | None = None
        # Wide text terms straight to the logit, next to the MLP: the query-title cosine (one
        # weight) and the learned similarity of the projected query and title (P q . P t, a small
        # two-tower head over the frozen vectors, which learns from clicks which words a shop's
        # shoppers treat as the same). Through the MLP alone text was barely used, the ids
        # explaining the warm items first: `bench text`, AUC 0.728 -> 0.737, synonym probes
        # in the top 3 51% -> 60%.
        self.text_weight: nn.Parameter | None = None
        if config.text_dim:
            self.text_proj = nn.Linear(config.text_dim, d, bias=False)
            self.text_weight = nn.Parameter(torch.zeros(1))
            inputs += 3 * d + 1
        self.mlp = nn.Sequential(nn.Linear(inputs, config.hidden), nn.ReLU(), nn.Linear(config.hidden, 1))
        with torch.no_grad():
            self.mlp[2].bias.fill_(  # type: ignore[operator]
                math.log(config.prior_ctr / (1 - config.prior_ctr))
            )

    @torch.no_grad()
    def reset_rows(self, feature: str, rows: list[int]) -> None:
        """Zero the rows a new id took over (so it starts neutral, owing nothing to the old id)."""
        index = torch.tensor(rows, dtype=torch.long, device=self.item_bias.weight.device)
        self.table(feature).weight.index_fill_(0, index, 0.0)
        if feature == "item":
            self.item_bias.weight.index_fill_(0, index, 0.0)

    def table(self, feature: str) -> nn.Embedding:
        table = self.embeddings[feature]
        assert isinstance(table, nn.Embedding)
        return table

    def tables(self) -> list[nn.Embedding]:
        return [t for t in self.embeddings.values() if isinstance(t, nn.Embedding)]

    def sparse_parameters(self) -> list[torch.Tensor]:
        return [t.weight for t in self.tables()] + [self.item_bias.weight]

    def dense_parameters(self) -> list[nn.Parameter]:
        text = list(self.text_proj.parameters()) if self.text_proj is not None else []
        return list(self.mlp.parameters()) + text

    def wide_parameters(self) -> list[nn.Parameter]:
        """The cosine's wide weight, learned at the sparse rate (see the learner)."""
        return [self.text_weight] if self.text_weight is not None else []

    def forward(
        self,
        user: torch.Tensor,
        tokens: torch.Tensor,
        item: torch.Tensor,
        category: torch.Tensor,
        brand: torch.Tensor,
        price: torch.Tensor,
        query_text: torch.Tensor | None = None,
        title_text: torch.Tensor | None = None,
        new_items: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Logits, shape ``[N]``. ``tokens`` is ``[N, T]`` padded with row 0; with the text tower,
        ``query_text`` and ``title_text`` are ``[N, text_dim]`` unit (or zero) vectors. Rows where
        the boolean ``new_items`` holds score as if their item had never been seen (training's
        item dropout; serving never passes it)."""
        e = self.embeddings
        u = e["user"](user)
        tok = e["token"](tokens)
        count = (tokens != PAD).sum(dim=1, keepdim=True).clamp(min=1).to(tok.dtype)
        q = tok.sum(dim=1) / count
        i = e["item"](item)
        item_bias = self.item_bias(item).squeeze(1)
        if new_items is not None:
            keep = (~new_items).to(i.dtype)
            i, item_bias = i * keep.unsqueeze(1), item_bias * keep
        c = e["category"](category)
        b = e["brand"](brand)
        p = torch.log1p(price.clamp(min=0)).unsqueeze(1)
        parts = [u, q, i, c, b, u * i, q * i, q * c, p]
        if self.text_proj is not None:
            if query_text is None or title_text is None:
                raise ValueError("expected query_text and title_text: this ranker has a text tower")
            sim = (query_text * title_text).sum(dim=1, keepdim=True)
            pq, pt = self.text_proj(query_text), self.text_proj(title_text)
            parts += [sim, pt, pq * pt, u * pt]
        x = torch.cat(parts, dim=1)
        logit = self.mlp(x).squeeze(1) + item_bias
        if self.text_weight is not None:
            logit = logit + self.text_weight * sim.squeeze(1) + (pq * pt).sum(dim=1)
        return logit
