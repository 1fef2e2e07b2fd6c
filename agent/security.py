"""Credentials and TLS for an MQTT client, as the config says; shared by the uplink and `tail`."""

from __future__ import annotations

import os
import ssl

import paho.mqtt.client as mqtt

from agent.config import Mqtt


def secure(client: mqtt.Client, settings: Mqtt) -> None:
    """Credentials and TLS for a client, as the config says. The password is read now, from
    the environment or a file, and is never logged."""
    if settings.username is not None:
        password = None
        if settings.password_env:
            password = os.environ.get(settings.password_env)
            if password is None:
                raise ValueError(f"the environment variable {settings.password_env} is not set")
        elif settings.password_file:
            try:
                password = settings.password_file.read_text().strip()
            except OSError as e:
                raise ValueError(f"cannot read password_file {settings.password_file}: {e}") from e
        client.username_pw_set(settings.username, password)
    if settings.tls is not None:
        tls = settings.tls
        files = [str(f) for f in (tls.ca_file, tls.cert_file, tls.key_file) if f is not None]
        try:
            client.tls_set(
                ca_certs=str(tls.ca_file) if tls.ca_file else None,
                certfile=str(tls.cert_file) if tls.cert_file else None,
                keyfile=str(tls.key_file) if tls.key_file else None,
                cert_reqs=ssl.CERT_NONE if tls.insecure else ssl.CERT_REQUIRED,
            )
        except (OSError, ssl.SSLError) as e:
            raise ValueError(f"cannot use the TLS files {', '.join(files)}: {e}") from None
        client.tls_insecure_set(tls.insecure)
