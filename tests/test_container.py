"""Issue 17: the compose file and the image, as written (no Docker engine runs here, so this
reads them rather than starting them): least privilege for each container, the owner's
database password only where migrations run, and an image built from the hashed lock."""

from __future__ import annotations

from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def _compose() -> dict:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())  # resolves the << merges


def test_every_container_is_read_only_without_capabilities_or_privilege_gain() -> None:
    services = _compose()["services"]
    assert set(services) >= {"db", "mqtt", "migrate", "bot"}
    for name, svc in services.items():
        assert svc.get("read_only") is True, name
        assert svc.get("cap_drop") == ["ALL"], name
        assert "no-new-privileges:true" in svc.get("security_opt", []), name
        assert "/tmp" in svc.get("tmpfs", []), name
        for port in svc.get("ports", []):
            assert str(port).startswith("127.0.0.1:"), (name, port)
    # the stackbot containers need no capability at all
    for name in ("migrate", "bot"):
        assert "cap_add" not in services[name] and "privileged" not in services[name]
    assert "ports" not in services["db"]


def test_only_the_migration_holds_the_owners_password() -> None:
    services = _compose()["services"]
    bot, migrate = services["bot"], services["migrate"]
    assert "env_file" not in bot  # every variable the bot gets is listed
    assert not any("POSTGRES_PASSWORD" in str(v) for v in bot["environment"].values())
    assert bot["environment"]["STACKBOT_DATABASE_URL"].startswith("postgresql://stackbot_app:")
    assert "${POSTGRES_PASSWORD}" in migrate["environment"]["STACKBOT_DATABASE_MIGRATE_URL"]
    assert migrate["command"] == ["db", "upgrade"] and migrate["restart"] == "no"
    assert bot["depends_on"]["migrate"]["condition"] == "service_completed_successfully"


def test_mosquittos_password_file_lives_in_its_tmpfs() -> None:
    conf = (ROOT / "docker" / "mosquitto.conf").read_text()
    [line] = [x for x in conf.splitlines() if x.startswith("password_file ")]
    path = line.split()[1]
    mqtt = _compose()["services"]["mqtt"]
    assert any(path.startswith(t + "/") for t in mqtt["tmpfs"]), (path, mqtt["tmpfs"])
    assert "allow_anonymous false" in conf


def test_the_image_installs_the_hashed_lock_and_keeps_no_compiler_or_pip() -> None:
    final = (ROOT / "Dockerfile").read_text().split("\nFROM ")[-1]  # the runtime stage
    assert "--require-hashes -r /tmp/requirements.lock" in final
    assert "pip uninstall -y pip" in final and "--no-cache-dir" in final
    for tool in ("gcc", "build-essential", "apt-get install"):
        assert tool not in final, tool
    assert "\nUSER stackbot" in final
    # LightGBM needs the OpenMP runtime: copied as a file from the build stage, not installed
    assert "COPY --from=build /usr/lib/x86_64-linux-gnu/libgomp.so.1" in final


def test_every_long_running_service_has_a_healthcheck_and_the_bots_is_its_heartbeat() -> None:
    services = _compose()["services"]
    assert set(services) >= {"db", "mqtt", "migrate", "bot", "web", "prometheus", "grafana"}
    for name, svc in services.items():
        check = svc.get("healthcheck", {})
        if name == "migrate":  # a one-shot job: compose waits for it to complete
            assert check.get("disable") is True
            continue
        assert check.get("test"), name
    assert services["bot"]["healthcheck"]["test"][:2] == ["CMD", "stackbot"]
    assert "healthcheck" in services["bot"]["healthcheck"]["test"]
    assert services["bot"]["environment"]["STACKBOT_METRICS_ENABLED"] == "true"
    assert services["web"]["command"][0] == "serve"
    assert services["web"]["ports"] == ["127.0.0.1:8080:8080"]


def test_the_image_is_chosen_cpu_by_default_and_cuda_by_the_gpu_file() -> None:
    docker = (ROOT / "Dockerfile").read_text()
    assert "ARG TORCH=cpu" in docker and "download.pytorch.org/whl/cpu" in docker
    assert "-r /tmp/requirements-cuda.lock" in docker
    lock = (ROOT / "requirements.lock").read_text()
    cuda = (ROOT / "requirements-cuda.lock").read_text()
    # the default image's lock holds no torch and no CUDA runtime; the cuda lock holds both
    assert "\ntorch==" not in lock and "\nnvidia-" not in lock and "\nfastapi==" in lock
    assert "\ntorch==" in cuda and "\nnvidia-cublas" in cuda
    gpu = yaml.safe_load((ROOT / "docker-compose.gpu.yml").read_text())["services"]["bot"]
    [device] = gpu["deploy"]["resources"]["reservations"]["devices"]
    assert device["capabilities"] == ["gpu"] and gpu["build"]["args"]["TORCH"] == "cuda"
    env = (ROOT / ".env.example").read_text()
    for key in ("STACKBOT_WEB_PASSWORD_HASH=", "STACKBOT_WEB_SESSION_SECRET=", "TORCH=cpu",
                "GRAFANA_ADMIN_PASSWORD="):
        assert key in env, key
    compose = _compose()["services"]
    for name in ("bot", "web", "migrate"):
        assert "${" not in str(compose[name].get("env_file", ""))
