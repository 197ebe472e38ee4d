"""The ensemble's members, one file per family. ``REGISTRY`` maps names to classes."""

from models.members.base import Member, MemberConfig
from models.members.conv import TCN
from models.members.gnn import CrossAssetGNN
from models.members.mdn import MixtureDensity
from models.members.ppo import PPOAgent
from models.members.recurrent import GRU, LSTM, AttentionLSTM, BiLSTM, StackedLSTM
from models.members.tft import TemporalFusionTransformer
from models.members.transformer import TransformerEncoder
from models.members.vae import VAERegime

REGISTRY: dict[str, type[Member]] = {m.name: m for m in (
    LSTM, BiLSTM, GRU, StackedLSTM, AttentionLSTM, TCN, TransformerEncoder,
    TemporalFusionTransformer, MixtureDensity, CrossAssetGNN, VAERegime, PPOAgent)}
SUPERVISED = tuple(n for n, m in REGISTRY.items() if m.kind == "supervised")
ALL = (*REGISTRY, "meta")

__all__ = ["ALL", "REGISTRY", "SUPERVISED", "Member", "MemberConfig"]
