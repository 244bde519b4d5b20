"""Fail fast on a broker that refuses our TLS or SASL settings, before any client starts.

aiokafka (and Faust on it) retries a refused login or an untrusted certificate for ever,
logging an error each time; `check_broker` opens one connection to a bootstrap server
with the clients' own options (`Settings.kafka_options`) and names the problem instead.
A broker that is down or not reachable is left to the clients' own retries.

>>> asyncio.run(check_broker(Settings()))  # PLAINTEXT: nothing to check
>>> try:
...     asyncio.run(check_broker(Settings(security_protocol="SASL_SSL")))
... except BrokerSecurityError as exc:
...     print(exc)
HEADWATER_SECURITY_PROTOCOL=SASL_SSL needs HEADWATER_SASL_USERNAME and HEADWATER_SASL_PASSWORD
"""

from __future__ import annotations

import asyncio
import ssl

from aiokafka.conn import create_conn
from aiokafka.errors import BrokerResponseError, UnsupportedSaslMechanismError

from streams.settings import Settings

__all__ = ["BrokerSecurityError", "check_broker"]


class BrokerSecurityError(RuntimeError):
    """The broker refused our credentials or we do not trust its certificate; the message
    names which, and never holds a secret."""


def _servers(bootstrap: str) -> list[tuple[str, int]]:
    """`host:port,host:port` as pairs.

    >>> _servers("127.0.0.1:9094, [::1]:9095")
    [('127.0.0.1', 9094), ('::1', 9095)]
    """
    pairs = []
    for server in bootstrap.split(","):
        host, _, port = server.strip().rpartition(":")
        pairs.append((host.strip("[]"), int(port)))
    return pairs


async def check_broker(settings: Settings, timeout: float = 10.0) -> None:
    """Connect (TLS handshake, SASL login) to the first bootstrap server that answers;
    raise BrokerSecurityError when the certificate is not trusted, the TLS handshake fails
    or the login is refused. Takes `timeout` seconds per server at most."""
    protocol = settings.security_protocol
    if protocol == "PLAINTEXT":
        return
    if protocol == "SASL_SSL" and not (settings.sasl_username and settings.sasl_password):
        raise BrokerSecurityError(f"HEADWATER_SECURITY_PROTOCOL={protocol} needs "
                                  "HEADWATER_SASL_USERNAME and HEADWATER_SASL_PASSWORD")
    try:
        options = settings.kafka_options()
    except (OSError, ssl.SSLError) as exc:  # the CA file is missing or holds no certificate
        raise BrokerSecurityError(f"HEADWATER_SSL_CAFILE={settings.ssl_cafile}: "
                                  f"{exc.strerror or exc}") from None
    options.pop("bootstrap_servers")
    cafile = settings.ssl_cafile or "the system's CAs"
    for host, port in _servers(settings.bootstrap):
        where = f"broker {host}:{port}"
        try:
            async with asyncio.timeout(timeout):
                conn = await create_conn(host, port, request_timeout_ms=int(timeout * 1000),
                                         **options)
        except ssl.SSLCertVerificationError as exc:
            raise BrokerSecurityError(
                f"the TLS certificate of {where} is not trusted ({exc.verify_message}): "
                f"HEADWATER_SSL_CAFILE must name the CA that signed it (now {cafile})"
            ) from None
        except ssl.SSLError as exc:
            raise BrokerSecurityError(f"the TLS handshake with {where} failed "
                                      f"({exc.reason or exc}): is it a {protocol} listener?"
                                      ) from None
        except (BrokerResponseError, UnsupportedSaslMechanismError) as exc:
            message = exc.args[0] if exc.args else type(exc).__name__
            raise BrokerSecurityError(
                f"{where} refused the SCRAM-SHA-512 login of user {settings.sasl_username!r} "
                f"({message}): check HEADWATER_SASL_USERNAME and HEADWATER_SASL_PASSWORD"
            ) from None
        except (OSError, TimeoutError):
            continue  # down or unreachable: the clients retry that themselves
        conn.close()
        return
