"""Kafka's TLS and SASL settings reach every client: aiokafka's options and Faust's credentials, from the config
and the environment (the password only from a secret). Not exercised against a SASL broker here."""

from __future__ import annotations

import ssl
from pathlib import Path

import faust
import pytest

from framewatch.agents.app import broker_credentials
from framewatch.clients.bus import kafka_options
from framewatch.schemas.config import ConfigError, load_config
from tests.conftest import write_config


def test_plaintext_by_default() -> None:
    config, _ = load_config(None, environ={"FRAMEWATCH_KAFKA_BOOTSTRAP": "k1:9092,k2:9092"})
    assert kafka_options(config) == {"bootstrap_servers": "k1:9092,k2:9092", "security_protocol": "PLAINTEXT"}
    assert broker_credentials(config) is None


def test_sasl_over_tls_from_the_config_and_the_environment(tmp_path: Path) -> None:
    path = write_config(tmp_path / "c.toml", '[framewatch]\nkafka_security_protocol = "SASL_SSL"\n'
                                             'kafka_sasl_mechanism = "SCRAM-SHA-512"\n')
    config, _ = load_config(path, environ={"FRAMEWATCH_KAFKA_SASL_USERNAME": "fw",
                                           "FRAMEWATCH_KAFKA_SASL_PASSWORD": "s3cret"})
    options = kafka_options(config)
    assert options["security_protocol"] == "SASL_SSL" and options["sasl_mechanism"] == "SCRAM-SHA-512"
    assert (options["sasl_plain_username"], options["sasl_plain_password"]) == ("fw", "s3cret")
    assert isinstance(options["ssl_context"], ssl.SSLContext)
    credentials = broker_credentials(config)
    assert isinstance(credentials, faust.SASLCredentials)
    assert credentials.protocol.value == "SASL_SSL" and credentials.mechanism.value == "SCRAM-SHA-512"
    assert "s3cret" not in repr(credentials) and "s3cret" not in str(config)


def test_sasl_without_a_user_is_refused_naming_the_key(tmp_path: Path) -> None:
    path = write_config(tmp_path / "c.toml", '[framewatch]\nkafka_security_protocol = "SASL_PLAINTEXT"\n')
    with pytest.raises(ConfigError, match="needs kafka_sasl_username"):
        load_config(path, environ={})
