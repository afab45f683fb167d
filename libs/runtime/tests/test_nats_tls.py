"""``NATS_TLS_CA_FILE`` (and a client certificate): the bus connects with TLS, verifying the
server against that CA, host name included; files that are not what they claim are refused at
start-up. The end-to-end case runs the ``nats-server`` of the test fixtures with TLS on."""

from __future__ import annotations

import datetime
import ipaddress
import secrets
import ssl
from collections.abc import Iterator
from pathlib import Path

import nats
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from pydantic import SecretStr, ValidationError

from praxis_devstack.pytest_plugin import server_unavailable
from praxis_devstack.servers import NatsServer
from praxis_runtime.service import bus_for
from praxis_runtime.settings import ServiceSettings, nats_tls

VARIABLES = (
    "NATS_URL",
    "NATS_USER",
    "NATS_PASSWORD",
    "NATS_PASSWORD_FILE",
    "NATS_TLS_CA_FILE",
    "NATS_TLS_CERT_FILE",
    "NATS_TLS_KEY_FILE",
)


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _write_key(key: ec.EllipticCurvePrivateKey, path: Path) -> Path:
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return path


def _certificate(
    subject: str,
    key: ec.EllipticCurvePrivateKey,
    issuer: tuple[str, ec.EllipticCurvePrivateKey] | None,
    names: list[x509.GeneralName] | None = None,
) -> x509.Certificate:
    now = datetime.datetime.now(datetime.UTC)
    issuer_name, issuer_key = issuer if issuer is not None else (subject, key)
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(subject))
        .issuer_name(_name(issuer_name))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=issuer is None, path_length=None), critical=True)
    )
    if issuer is None:
        builder = builder.add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        builder = builder.add_extension(
            x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False
        )
    else:
        builder = builder.add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_key.public_key()),
            critical=False,
        )
    if names:
        builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
    return builder.sign(issuer_key, hashes.SHA256())


def _write_cert(cert: x509.Certificate, path: Path) -> Path:
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return path


def _make_ca(directory: Path, name: str) -> tuple[Path, Path, ec.EllipticCurvePrivateKey]:
    key = ec.generate_private_key(ec.SECP256R1())
    cert = _certificate(name, key, None)
    return (
        _write_cert(cert, directory / f"{name.replace(' ', '-')}.pem"),
        _write_key(key, directory / f"{name.replace(' ', '-')}.key"),
        key,
    )


@pytest.fixture(scope="module")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A CA; a server certificate it signed for 127.0.0.1 and localhost; a client certificate;
    and a second CA that signed nothing here."""
    directory = tmp_path_factory.mktemp("tls")
    ca, ca_key_path, ca_key = _make_ca(directory, "praxis test CA")
    other_ca, _, _ = _make_ca(directory, "some other CA")
    files = {"ca": ca, "ca_key": ca_key_path, "other_ca": other_ca}
    for role, names in (
        ("server", [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
        ("client", None),
    ):
        key = ec.generate_private_key(ec.SECP256R1())
        cert = _certificate(f"praxis test {role}", key, ("praxis test CA", ca_key), names)
        prefix = "" if role == "client" else "server_"
        files[f"{prefix}cert"] = _write_cert(cert, directory / f"{role}.pem")
        files[f"{prefix}key"] = _write_key(key, directory / f"{role}.key")
    return files


@pytest.fixture(autouse=True)
def _clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in VARIABLES:
        monkeypatch.delenv(name, raising=False)


# ----------------------------------------------------------------------------------- settings


def test_no_tls_files_no_context() -> None:
    assert nats_tls(ServiceSettings()) is None


def test_the_context_verifies_the_server_against_the_given_ca(tls_files: dict[str, Path]) -> None:
    settings = ServiceSettings(nats_url="tls://nats-0.nats:4222", nats_tls_ca_file=tls_files["ca"])
    context = nats_tls(settings)
    assert isinstance(context, ssl.SSLContext)
    assert context.verify_mode == ssl.CERT_REQUIRED and context.check_hostname
    (trusted,) = context.get_ca_certs()  # that CA alone, not the system's
    assert trusted["subject"] == ((("commonName", "praxis test CA"),),)


def test_a_client_certificate_goes_with_its_key(tls_files: dict[str, Path]) -> None:
    settings = ServiceSettings(
        nats_tls_ca_file=tls_files["ca"],
        nats_tls_cert_file=tls_files["cert"],
        nats_tls_key_file=tls_files["key"],
    )
    assert isinstance(nats_tls(settings), ssl.SSLContext)
    with pytest.raises(ValidationError, match="go together"):
        ServiceSettings(nats_tls_cert_file=tls_files["cert"])


@pytest.mark.parametrize(
    ("content", "why"),
    [(None, "cannot be read"), ("not a certificate", "holds no usable CA certificate")],
)
def test_a_bad_ca_file_is_refused(content: str | None, why: str, tmp_path: Path) -> None:
    path = tmp_path / "ca.pem"
    if content is not None:
        path.write_text(content)
    with pytest.raises(ValidationError) as exc:
        ServiceSettings(nats_tls_ca_file=path)
    assert why in str(exc.value) and str(path) in str(exc.value)


def test_a_key_that_is_not_the_certificates_is_refused(tls_files: dict[str, Path]) -> None:
    with pytest.raises(ValidationError, match="are not a certificate and its key"):
        ServiceSettings(nats_tls_cert_file=tls_files["cert"], nats_tls_key_file=tls_files["ca_key"])


# --------------------------------------------------------------------------- a TLS nats-server


class TlsNatsServer(NatsServer):
    """The fixtures' nats-server, requiring TLS with the given certificate."""

    def __init__(self, data_dir: Path, cert: Path, key: Path) -> None:
        super().__init__(data_dir)
        self._tls = ["--tls", "--tlscert", str(cert), "--tlskey", str(key)]

    def _argv(self) -> list[str]:
        return [*super()._argv(), *self._tls]


@pytest.fixture(scope="module")
def tls_server(
    tmp_path_factory: pytest.TempPathFactory, tls_files: dict[str, Path]
) -> Iterator[str]:
    server = TlsNatsServer(
        tmp_path_factory.mktemp("nats-tls"), tls_files["server_cert"], tls_files["server_key"]
    )
    try:
        server.start()
    except Exception as exc:  # no nats-server binary here: a skip, an error under CI
        server_unavailable(f"could not start nats-server with TLS: {exc}")
    try:
        yield f"tls://127.0.0.1:{server.port}"
    finally:
        server.stop()


@pytest.mark.integration
@pytest.mark.parametrize("user", [None, "scheduler"])
async def test_the_bus_connects_with_tls_to_a_server_the_ca_signed(
    tls_server: str, tls_files: dict[str, Path], user: str | None
) -> None:
    """With and without a NATS identity (the two ways the bus passes the context on)."""
    settings = ServiceSettings(
        nats_url=tls_server,
        nats_tls_ca_file=tls_files["ca"],
        nats_user=user,
        nats_password=SecretStr(secrets.token_urlsafe(24)) if user else None,
    )
    bus = bus_for(settings)
    await bus.connect()
    try:
        assert bus.connected
        assert bus.nc.connected_url is not None and bus.nc.connected_url.scheme == "tls"
        await bus.nc.flush()
    finally:
        await bus.stop()


@pytest.mark.integration
async def test_a_server_the_ca_did_not_sign_is_refused(
    tls_server: str, tls_files: dict[str, Path]
) -> None:
    context = nats_tls(ServiceSettings(nats_tls_ca_file=tls_files["other_ca"]))
    with pytest.raises(ssl.SSLCertVerificationError):
        await nats.connect(tls_server, tls=context, allow_reconnect=False, connect_timeout=5)
