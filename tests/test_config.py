"""Config: frozen, layered (file < env < flags), unknown keys named, secrets masked."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError
from typer.testing import CliRunner

from bot.cli import app
from bot.config import load_settings, require_live_ready
from bot.errors import ConfigError


def test_layers_file_then_env_then_flags(tmp_path: Path) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text('timeframe = "5m"\ninstance = "from-file"\n[exchange]\npoll_interval = 3\n')
    env = {"STACKBOT_INSTANCE": "from-env", "STACKBOT_EXCHANGE_POLL_INTERVAL": "7"}
    s = load_settings(cfg, {"exchange": {"poll_interval": 9}}, environ=env)
    assert s.timeframe == "5m"  # file
    assert s.instance == "from-env"  # env beats file
    assert s.exchange.poll_interval == 9  # flag beats env


def test_unknown_toml_key_is_named(tmp_path: Path) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text("[risk]\nfractoin = 0.2\n")
    with pytest.raises(ConfigError, match=r"unknown config key 'risk.fractoin'"):
        load_settings(cfg, environ={})


def test_unknown_top_level_key_is_named(tmp_path: Path) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text('modes = "paper"\n')
    with pytest.raises(ConfigError, match=r"unknown config key 'modes'"):
        load_settings(cfg, environ={})


def test_unknown_env_var_is_named() -> None:
    with pytest.raises(ConfigError, match="STACKBOT_EXCHANGE_APIKEY"):
        load_settings(environ={"STACKBOT_EXCHANGE_APIKEY": "x"})


def test_bad_value_names_key() -> None:
    with pytest.raises(ConfigError, match=r"invalid value for 'timeframe'.*unknown timeframe '7m'"):
        load_settings(environ={"STACKBOT_TIMEFRAME": "7m"})


def test_settings_are_frozen() -> None:
    s = load_settings(environ={})
    with pytest.raises(ValidationError):
        s.mode = "live"  # type: ignore[assignment]


def test_live_refuses_without_keys_and_confirmation() -> None:
    s = load_settings(environ={"STACKBOT_MODE": "live"})
    with pytest.raises(ConfigError) as exc:
        require_live_ready(s)
    msg = str(exc.value)
    assert "API key" in msg and "API secret" in msg and "--confirm-live" in msg
    ok = load_settings(environ={"STACKBOT_MODE": "live", "STACKBOT_EXCHANGE_API_KEY": "k" * 16,
                                "STACKBOT_EXCHANGE_SECRET": "s" * 16,
                                "STACKBOT_CONFIRM_LIVE": "true"})
    require_live_ready(ok)


def test_secrets_file(tmp_path: Path) -> None:
    secrets = tmp_path / "keys.toml"
    secrets.write_text('api_key = "AK-123456"\nsecret = "SK-abcdef"\n')
    s = load_settings(environ={"STACKBOT_EXCHANGE_SECRETS_FILE": str(secrets)})
    assert s.exchange.api_key is not None
    assert s.exchange.api_key.get_secret_value() == "AK-123456"
    bad = tmp_path / "bad.toml"
    bad.write_text('apikey = "x"\n')
    with pytest.raises(ConfigError, match="unknown key"):
        load_settings(environ={"STACKBOT_EXCHANGE_SECRETS_FILE": str(bad)})


def test_config_show_masks_secrets(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STACKBOT_EXCHANGE_API_KEY", "APIKEY-very-secret-1")
    monkeypatch.setenv("STACKBOT_EXCHANGE_SECRET", "SECRET-very-secret-2")
    monkeypatch.setenv("STACKBOT_DATABASE_URL", "postgresql://bot:hunter22@db:5432/x")
    result = CliRunner().invoke(app, ["config", "show"])
    assert result.exit_code == 0, result.output
    assert "APIKEY-very-secret-1" not in result.output
    assert "SECRET-very-secret-2" not in result.output
    assert "hunter22" not in result.output
    assert '"api_key": "**********"' in result.output
    assert "postgresql://bot:***@db:5432/x" in result.output


def test_cli_reports_unknown_key_and_exits_nonzero(tmp_path: Path) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text("[paper]\nstarting_cash = 5\n")
    result = CliRunner().invoke(app, ["config", "show", "--config", str(cfg)])
    assert result.exit_code == 2
    assert "unknown config key 'paper.starting_cash'" in result.output


def test_run_live_without_keys_says_so(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("STACKBOT_EXCHANGE_API_KEY", "STACKBOT_EXCHANGE_SECRET"):
        monkeypatch.delenv(var, raising=False)
    result = CliRunner().invoke(app, ["run", "--mode", "live", "--db",
                                      "postgresql://nobody@127.0.0.1:1/none"])
    assert result.exit_code == 2
    assert "live mode refuses to start without" in result.output
