"""Certificate steps: SANs, private-key modes, no silent overwrite, expiry reporting."""

from __future__ import annotations

import datetime as dt
import ipaddress
import stat
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from fedcare.cli import main
from fedcare.deploy import certs as certs_mod
from fedcare.deploy.certs import CertError


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture
def certs(tmp_path: Path) -> Path:
    root = tmp_path / "certs"
    certs_mod.init(root, hosts=["superlink.consortium.example", "10.1.2.3", "127.0.0.1"],
                   sites=["alpha", "beta"])
    return root


def test_server_certificate_names_every_host_as_dns_or_ip(certs: Path) -> None:
    cert = x509.load_pem_x509_certificate((certs / certs_mod.SERVER_CERT).read_bytes())
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["superlink.consortium.example"]
    assert san.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address("10.1.2.3"),
                                                       ipaddress.ip_address("127.0.0.1")]
    ca = x509.load_pem_x509_certificate((certs / certs_mod.CA_CERT).read_bytes())
    cert.verify_directly_issued_by(ca)  # raises if the chain is wrong


def test_private_keys_are_owner_only_and_public_files_are_not_secret(certs: Path) -> None:
    for key in (certs / certs_mod.CA_KEY, certs / certs_mod.SERVER_KEY,
                certs_mod.site_key_path(certs, "alpha"), certs_mod.site_key_path(certs, "beta")):
        assert _mode(key) == 0o600, key
    assert _mode(certs / certs_mod.CA_CERT) & 0o044  # readable: it is handed out


def test_site_key_is_an_openssh_ec_key_flower_supernode_can_load(certs: Path) -> None:
    key = serialization.load_ssh_private_key(
        certs_mod.site_key_path(certs, "alpha").read_bytes(), None)
    listed = certs_mod.read_allowlist(certs)["alpha"]["public-key"]
    public = key.public_key().public_bytes(serialization.Encoding.OpenSSH,
                                           serialization.PublicFormat.OpenSSH)
    assert listed == public.decode()


@pytest.mark.parametrize("step", ["ca", "server", "site"])
def test_existing_private_keys_are_never_overwritten_without_force(certs: Path,
                                                                   step: str) -> None:
    paths = {"ca": certs / certs_mod.CA_KEY, "server": certs / certs_mod.SERVER_KEY,
             "site": certs_mod.site_key_path(certs, "alpha")}
    before = paths[step].read_bytes()
    make = {"ca": lambda force: certs_mod.create_ca(certs, force=force),
            "server": lambda force: certs_mod.issue_server_cert(certs, hosts=["h"], force=force),
            "site": lambda force: certs_mod.create_site_key(certs, "alpha", force=force)}
    with pytest.raises(CertError, match="refusing to overwrite"):
        make[step](False)
    assert paths[step].read_bytes() == before
    make[step](True)
    assert paths[step].read_bytes() != before
    assert _mode(paths[step]) == 0o600


def test_rotating_a_listed_site_key_needs_force_and_a_key_serves_one_site(certs: Path) -> None:
    certs_mod.create_site_key(certs, "alpha", force=True)
    with pytest.raises(CertError, match="already listed with another key"):
        certs_mod.allow_site(certs, "alpha")
    certs_mod.allow_site(certs, "alpha", force=True)
    with pytest.raises(CertError, match="already listed for site 'alpha'"):
        certs_mod.allow_site(certs, "gamma", certs_mod.site_pub_path(certs, "alpha"))


def test_removed_site_leaves_the_list(certs: Path) -> None:
    certs_mod.remove_site(certs, "beta")
    assert list(certs_mod.read_allowlist(certs)) == ["alpha"]
    with pytest.raises(CertError, match="got 'beta'"):
        certs_mod.remove_site(certs, "beta")


@pytest.mark.parametrize("bad", ["", "../etc", "a b", "-x"])
def test_site_names_that_are_not_plain_names_are_rejected(tmp_path: Path, bad: str) -> None:
    with pytest.raises(CertError, match="site must be"):
        certs_mod.create_site_key(tmp_path, bad)


def test_status_reports_expiring_and_expired_certificates(certs: Path) -> None:
    server = x509.load_pem_x509_certificate((certs / certs_mod.SERVER_CERT).read_bytes())
    end = server.not_valid_after_utc
    fine = certs_mod.status(certs, now=end - dt.timedelta(days=100))
    assert [r.problem for r in fine] == [None, None]
    soon = certs_mod.status(certs, now=end - dt.timedelta(days=10))
    assert soon[1].problem is not None and soon[1].problem.startswith("EXPIRES SOON")
    gone = certs_mod.status(certs, now=end + dt.timedelta(seconds=1))
    assert gone[1].problem == "EXPIRED"


def test_status_flags_a_server_certificate_from_another_ca(certs: Path, tmp_path: Path) -> None:
    other = tmp_path / "other"
    certs_mod.create_ca(other)
    certs_mod.issue_server_cert(other, hosts=["x"])
    (certs / certs_mod.SERVER_CERT).write_bytes((other / certs_mod.SERVER_CERT).read_bytes())
    assert "NOT SIGNED BY THE CA" in str(certs_mod.status(certs)[1].problem)


def test_certs_status_command_exits_non_zero_on_a_short_lived_cert(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = tmp_path / "certs"
    assert main(["certs", "ca", "--certs", str(root)]) == 0
    assert main(["certs", "server", "--certs", str(root), "--host", "localhost",
                 "--days", "5"]) == 0
    assert main(["certs", "status", "--certs", str(root)]) == 1
    out = capsys.readouterr().out
    assert "EXPIRES SOON" in out and "localhost" in out
    assert main(["certs", "status", "--certs", str(root), "--warn-days", "1"]) == 0


def test_server_certificate_needs_a_ca_and_hosts(tmp_path: Path) -> None:
    with pytest.raises(CertError, match="create the CA first"):
        certs_mod.issue_server_cert(tmp_path, hosts=["localhost"])
    certs_mod.create_ca(tmp_path)
    with pytest.raises(CertError, match="hosts must name at least one"):
        certs_mod.issue_server_cert(tmp_path, hosts=[" "])


def test_fingerprint_is_the_one_ssh_keygen_prints(certs: Path) -> None:
    import base64
    import hashlib

    line = certs_mod.site_pub_path(certs, "alpha").read_text().split()
    expected = "SHA256:" + base64.b64encode(
        hashlib.sha256(base64.b64decode(line[1])).digest()).decode().rstrip("=")
    assert certs_mod.read_allowlist(certs)["alpha"]["fingerprint"] == expected


def _sha256_of_pem_body(path: Path) -> str:
    """Independent of `cryptography`: the DER bytes are the base64 between the PEM markers."""
    import base64
    import hashlib
    body = "".join(line for line in path.read_text().splitlines() if "-----" not in line)
    return hashlib.sha256(base64.b64decode(body)).hexdigest()


def test_certs_ca_and_status_print_the_ca_fingerprint_as_openssl_writes_it(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = tmp_path / "certs"
    assert main(["certs", "ca", "--certs", str(root)]) == 0
    made = capsys.readouterr().out
    assert main(["certs", "server", "--certs", str(root), "--host", "localhost"]) == 0
    assert main(["certs", "status", "--certs", str(root)]) == 0
    shown = capsys.readouterr().out
    digest = _sha256_of_pem_body(root / certs_mod.CA_CERT).upper()
    expected = ":".join(digest[i:i + 2] for i in range(0, len(digest), 2))
    assert f"SHA256 {expected} " in made
    assert f"SHA256 {expected} " in shown
