"""HTTPS only, certificates always checked: the simulator served over TLS with a private CA."""

from __future__ import annotations

import datetime
import ipaddress
import ssl

import certifi
import pytest
from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from simulator.harness import RunningSimulator
from simulator.server import build_app
from telephony.models import PbxAccount
from telephony.providers import provider_for
from telephony.providers.base import ProviderError
from tests.factories import make_account

pytestmark = pytest.mark.django_db


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def private_ca_and_server_cert(tmp_path):
    """A CA nobody's system trusts, and a certificate it issued for 127.0.0.1."""
    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_cert = (
        x509.CertificateBuilder().subject_name(_name("ctihub test CA")).issuer_name(_name("ctihub test CA"))
        .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True, content_commitment=False,
                                     key_encipherment=False, data_encipherment=False, key_agreement=False,
                                     encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder().subject_name(_name("127.0.0.1")).issuer_name(ca_cert.subject)
        .public_key(key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    cert_file, key_file = tmp_path / "server.pem", tmp_path / "server.key"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return ca_cert.public_bytes(serialization.Encoding.PEM).decode(), cert_file, key_file


class TlsSimulator(RunningSimulator):
    def __init__(self, cert_file, key_file):
        super().__init__()
        self.context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self.context.load_cert_chain(cert_file, key_file)

    @property
    def url(self) -> str:
        return f"https://{self.host}:{self.port}"

    async def _serve(self) -> None:
        self._runner = web.AppRunner(build_app(self.state), shutdown_timeout=2)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port, ssl_context=self.context)
        await site.start()
        self.port = self._runner.addresses[0][1]


@pytest.fixture
def tls_sim(tmp_path):
    ca_pem, cert_file, key_file = private_ca_and_server_cert(tmp_path)
    with TlsSimulator(cert_file, key_file) as sim:
        sim.state.istra.add_user("chatfield", "0000", enterprise="acme")
        sim.state.istra.add_extension("5985841581756135023", "144", label="Desk", owner="chatfield")
        yield sim, ca_pem


def test_it_refuses_a_certificate_no_trusted_ca_issued(tls_sim):
    sim, _ = tls_sim
    account = make_account(kind=PbxAccount.Kind.ISTRA_ENDUSER, base_url=sim.istra_base, login="chatfield",
                           password="0000")
    with pytest.raises(ProviderError) as refused:
        provider_for(account).fetch_terminals()
    assert "cannot reach the Istra server" in str(refused.value) and "SSLError" in str(refused.value)
    assert sim.state.istra.requests_received() == []  # nothing was sent over the untrusted connection


def test_it_trusts_the_accounts_own_ca_bundle_for_rest_and_the_websocket(tls_sim, monkeypatch):
    sim, ca_pem = tls_sim
    # Many hosts set this; requests would let it replace the account's trust store.
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", certifi.where())
    account = make_account(kind=PbxAccount.Kind.ISTRA_ENDUSER, base_url=sim.istra_base, login="chatfield",
                           password="0000", ca_bundle=ca_pem)
    provider = provider_for(account)
    try:
        assert [t.pbx_id for t in provider.fetch_terminals()] == ["5985841581756135023"]
        assert provider.session.ws_url() == sim.istra_base.replace("https://", "wss://") + "/ws-service/myIstra"
        [spec] = provider.listener_specs([])
        stream = provider.open_stream(spec)
        provider.close_stream(spec, stream)
    finally:
        provider.close()
    assert ("GET", "/restletrouter/ws-service/myIstra") in [
        (e["method"], e["path"]) for e in sim.state.istra.requests_received()
    ]


def test_it_never_follows_a_redirect_from_https_to_http_and_sends_nothing_in_clear(tls_sim, sim):
    # Followed, the login's Basic credentials went to the plain-HTTP host as they were.
    tls, ca_pem = tls_sim
    tls.state.istra.redirect_next(1, 302, base_url=sim.url)
    account = make_account(kind=PbxAccount.Kind.ISTRA_ENDUSER, base_url=tls.istra_base, login="chatfield",
                           password="0000", ca_bundle=ca_pem)
    provider = provider_for(account)
    try:
        with pytest.raises(ProviderError) as refused:
            provider.fetch_terminals()
    finally:
        provider.close()
    assert "from https to http://127.0.0.1" in str(refused.value) and "in clear" in str(refused.value)
    assert "0000" not in str(refused.value)
    assert sim.state.istra.requests_received() == []  # the plain-HTTP host heard nothing
    assert [e["path"] for e in tls.state.istra.requests_received()] == ["/restletrouter/v1/service/Login"]
