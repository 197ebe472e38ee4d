"""MQTT: telemetry out, HMAC-signed operator commands in (``docs/mqtt.md`` lists every topic
and payload)."""
