"""The recurrent family: LSTM, bidirectional LSTM, GRU, stacked LSTM, attention LSTM."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from models.members.base import Member, MemberConfig, head, scaled


class LSTM(Member):
    name = "lstm"

    def __init__(self, cfg: MemberConfig) -> None:
        super().__init__(cfg)
        self.rnn = nn.LSTM(cfg.n_features, cfg.hidden, batch_first=True)
        self.out = head(cfg.hidden)

    def forward(self, x: Tensor) -> Tensor:
        _, (h, _) = self.rnn(x)
        return scaled(self.out(h[-1]))


class BiLSTM(Member):
    """Bidirectional over the lookback window only: both directions read the past."""

    name = "bilstm"

    def __init__(self, cfg: MemberConfig) -> None:
        super().__init__(cfg)
        self.rnn = nn.LSTM(cfg.n_features, cfg.hidden, batch_first=True, bidirectional=True)
        self.out = head(2 * cfg.hidden)

    def forward(self, x: Tensor) -> Tensor:
        _, (h, _) = self.rnn(x)
        return scaled(self.out(torch.cat((h[-2], h[-1]), dim=1)))


class GRU(Member):
    name = "gru"

    def __init__(self, cfg: MemberConfig) -> None:
        super().__init__(cfg)
        self.rnn = nn.GRU(cfg.n_features, cfg.hidden, batch_first=True)
        self.out = head(cfg.hidden)

    def forward(self, x: Tensor) -> Tensor:
        _, h = self.rnn(x)
        return scaled(self.out(h[-1]))


class StackedLSTM(Member):
    name = "stacked_lstm"

    def __init__(self, cfg: MemberConfig) -> None:
        super().__init__(cfg)
        self.rnn = nn.LSTM(cfg.n_features, cfg.hidden, num_layers=3, batch_first=True,
                           dropout=cfg.dropout)
        self.out = head(cfg.hidden)

    def forward(self, x: Tensor) -> Tensor:
        _, (h, _) = self.rnn(x)
        return scaled(self.out(h[-1]))


class AttentionLSTM(Member):
    """LSTM states pooled by learned additive attention over the window."""

    name = "attention_lstm"

    def __init__(self, cfg: MemberConfig) -> None:
        super().__init__(cfg)
        self.rnn = nn.LSTM(cfg.n_features, cfg.hidden, batch_first=True)
        self.score = nn.Sequential(nn.Linear(cfg.hidden, cfg.hidden), nn.Tanh(),
                                   nn.Linear(cfg.hidden, 1))
        self.out = head(2 * cfg.hidden)

    def forward(self, x: Tensor) -> Tensor:
        seq, (h, _) = self.rnn(x)
        w = torch.softmax(self.score(seq).squeeze(-1), dim=1)
        ctx = (w.unsqueeze(-1) * seq).sum(dim=1)
        return scaled(self.out(torch.cat((ctx, h[-1]), dim=1)))
