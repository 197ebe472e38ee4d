"""Risk settings: the ``[risk]`` section of the config."""

from __future__ import annotations

from decimal import Decimal
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class RiskSettings(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    # sizing
    kelly_fraction: float = Field(0.25, gt=0, le=1, description="multiplier on Kelly f*")
    k_stop: float = Field(2.0, gt=0, description="the triple barrier's lower side in ATRs: a "
                          "long's stop, a short's take-profit")
    k_target: float = Field(3.0, gt=0, description="the triple barrier's upper side in ATRs: a "
                            "long's take-profit, a short's stop")
    barrier_horizon: int = Field(
        24, ge=1, description="candles a trade has to touch its target or stop: the triple "
        "barrier's time limit. The ensemble is trained for k_stop, k_target and this horizon "
        "(a model trained for others is refused) and closes a position that reaches it")
    k_chandelier: float = Field(3.0, gt=0, description="trailing stop: highest high - k ATRs")
    max_risk_per_trade: float = Field(0.01, gt=0, le=0.2, description="equity lost at the stop")
    fixed_risk_per_trade: float = Field(
        0.005, gt=0, le=0.2, description="equity at risk per entry for signals without a "
        "calibrated probability (the baseline): fixed-fractional sizing")
    disagreement_limit: float = Field(0.25, gt=0, description="dispersion that zeroes the size")
    # pre-trade controls
    max_order_notional: Decimal = Field(Decimal("100000"), gt=0)
    max_order_quantity: Decimal | None = Field(None, gt=0)
    price_collar: Decimal = Field(Decimal("0.05"), gt=0, description="limit vs last price")
    max_open_positions: int = Field(5, gt=0)
    max_exposure_symbol: Decimal = Field(Decimal("0.25"), gt=0, le=1)
    max_exposure_total: Decimal = Field(Decimal("0.8"), gt=0, le=1)
    max_orders: int = Field(20, gt=0, description="order-rate throttle: orders per window")
    max_orders_window_s: int = Field(60, gt=0)
    # circuit breakers
    drawdown_limit: float = Field(0.10, gt=0, lt=1)
    drawdown_window_days: float = Field(7.0, gt=0)
    daily_loss_limit: float = Field(0.03, gt=0, lt=1)
    consecutive_losses: int = Field(4, gt=0)
    cooldown_candles: int = Field(12, ge=0)
    stale_after_timeframes: float = Field(2.0, gt=0)
    max_exchange_error_rate: float = Field(0.5, gt=0, le=1)
    exchange_error_window: int = Field(40, gt=1)
    volatility_k: float = Field(3.0, gt=1)
    volatility_window: int = Field(200, gt=10)
    volatility_hold_candles: int = Field(24, gt=0)
    model_baseline_accuracy: float | None = Field(None, gt=0, lt=1)
    model_accuracy_drop: float = Field(0.05, gt=0, lt=1)
    # perpetuals
    liquidation_buffer_atr: float = Field(
        1.0, ge=0, description="perpetuals: an entry's stop must sit at least this many ATRs "
        "inside its liquidation price, or the entry is refused")
    liquidation_guard: bool = Field(
        True, description="perpetuals: the liquidation guard above. Off only to test what "
        "a liquidation does")
    margin_ratio_reduce: float = Field(0.5, gt=0, lt=1, description="perpetuals: margin "
                                       "ratio that moves trading to REDUCING")
    margin_ratio_flatten: float = Field(0.8, gt=0, le=1, description="perpetuals: margin "
                                        "ratio at which the position is closed at market")
    # kill switch
    kill_on_signal: Literal["none", "pause", "cancel", "flatten"] = Field(
        "none", description="kill level applied on SIGINT/SIGTERM before stopping")
