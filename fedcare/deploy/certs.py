"""Consortium certificates and site keys, made by small declarative steps.

One folder (``certs/`` by default, git-ignored) holds everything a deployment needs::

    ca/ca.pem ca/ca.key            the consortium CA (the key signs server certificates)
    superlink/server.pem .key      the SuperLink's TLS certificate, SANs = its host names/IPs
    sites/<site>/auth.key .pub     a hospital's SuperNode authentication key pair (EC P-384,
                                   OpenSSH format, as flower-supernode reads it)
    authorized-sites.json          the sites the SuperLink accepts: name -> public key.
                                   ``fedcare superlink`` registers exactly these with Flower.

Each step is one function that writes its files or refuses: private keys are written
0600 and never replaced unless ``force`` is given. Certificates carry an expiry that
:func:`status` reports (expired or expiring soon are problems, not footnotes).
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import ipaddress
import json
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from fedcare.common.errors import FedcareError, describe_value
from fedcare.common.files import strict_json_loads, write_text_atomic

logger = logging.getLogger(__name__)

CA_CERT = Path("ca/ca.pem")
CA_KEY = Path("ca/ca.key")
SERVER_CERT = Path("superlink/server.pem")
SERVER_KEY = Path("superlink/server.key")
ALLOWLIST = Path("authorized-sites.json")
SITE_KEY = "auth.key"
SITE_PUB = "auth.pub"
CA_DAYS = 5 * 365
SERVER_DAYS = 397  # what public CAs may issue at most; rotate yearly
WARN_DAYS = 30
PRIVATE_MODE = 0o600


class CertError(FedcareError):
    """A certificate step cannot be done as asked (would overwrite a key, missing CA...)."""


def site_key_path(certs: Path, site: str) -> Path:
    return certs / "sites" / site / SITE_KEY


def site_pub_path(certs: Path, site: str) -> Path:
    return certs / "sites" / site / SITE_PUB


def _check_site_name(site: str) -> str:
    ok = bool(site) and all(c.isalnum() or c in "-_." for c in site) and site[0].isalnum()
    if not ok:
        raise CertError(f"certs: site must be letters, digits, '-', '_' or '.', starting with a "
                        f"letter or digit; got {describe_value(site)}")
    return site


def _write_private(path: Path, data: bytes, *, force: bool) -> None:
    """Create ``path`` readable by its owner only; never replace it unless ``force``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.exists() and not force:
        raise CertError(f"certs: {path} already exists; refusing to overwrite a private key "
                        "(pass --force to replace it, after revoking what it protected)")
    tmp = path.with_name(path.name + ".tmp")
    tmp.unlink(missing_ok=True)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, PRIVATE_MODE)
    try:
        os.fchmod(fd, PRIVATE_MODE)  # whatever the umask
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)


def _write_public(path: Path, data: bytes, *, force: bool) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.exists() and not force:
        raise CertError(f"certs: {path} already exists; pass --force to replace it")
    write_text_atomic(path, data.decode("ascii"))


def _new_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP384R1())


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _check_days(days: int) -> None:
    if isinstance(days, bool) or not isinstance(days, int) or days < 1:
        raise CertError(f"certs: days must be a whole number >= 1; got {describe_value(days)}")


def create_ca(certs: Path, *, name: str = "fedcare consortium CA", days: int = CA_DAYS,
              force: bool = False) -> Path:
    """Step 1: the consortium's certificate authority (self-signed)."""
    _check_days(days)
    key = _new_key()
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = _now()
    cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=days))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=False, content_commitment=False,
                                         key_encipherment=False, data_encipherment=False,
                                         key_agreement=False, key_cert_sign=True, crl_sign=True,
                                         encipher_only=False, decipher_only=False),
                           critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()),
                           critical=False)
            .sign(key, hashes.SHA384()))
    _write_private(certs / CA_KEY, _pem_key(key), force=force)
    _write_public(certs / CA_CERT, cert.public_bytes(serialization.Encoding.PEM), force=True)
    logger.info("CA %r written to %s (valid until %s)", name, certs / CA_CERT,
                cert.not_valid_after_utc.date())
    return certs / CA_CERT


def _san(host: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(host))
    except ValueError:
        return x509.DNSName(host)


def issue_server_cert(certs: Path, *, hosts: Sequence[str], days: int = SERVER_DAYS,
                      force: bool = False) -> Path:
    """Step 2: the SuperLink's TLS certificate, signed by the CA, valid for ``hosts``."""
    _check_days(days)
    hosts = [h.strip() for h in hosts if h.strip()]
    if not hosts:
        raise CertError("certs: hosts must name at least one host name or IP the SuperLink "
                        "is reached at; got nothing")
    ca_cert, ca_key = load_ca(certs)
    key = _new_key()
    now = _now()
    not_after = min(now + dt.timedelta(days=days), ca_cert.not_valid_after_utc)
    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hosts[0])]))
            .issuer_name(ca_cert.subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(not_after)
            .add_extension(x509.SubjectAlternativeName([_san(h) for h in hosts]), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]),
                           critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(
                ca_key.public_key()), critical=False)
            .sign(ca_key, hashes.SHA384()))
    _write_private(certs / SERVER_KEY, _pem_key(key), force=force)
    _write_public(certs / SERVER_CERT, cert.public_bytes(serialization.Encoding.PEM), force=True)
    logger.info("SuperLink certificate for %s written to %s (valid until %s)", ", ".join(hosts),
                certs / SERVER_CERT, cert.not_valid_after_utc.date())
    return certs / SERVER_CERT


def load_ca(certs: Path) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    if not (certs / CA_KEY).exists():
        raise CertError(f"certs: {certs / CA_KEY} is missing; create the CA first "
                        "(fedcare certs ca)")
    cert = x509.load_pem_x509_certificate((certs / CA_CERT).read_bytes())
    key = serialization.load_pem_private_key((certs / CA_KEY).read_bytes(), password=None)
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise CertError(f"certs: {certs / CA_KEY} must be an EC private key")
    return cert, key


def create_site_key(certs: Path, site: str, *, force: bool = False) -> Path:
    """Step 3 (at the hospital, or by the operator for a test bed): the site's SuperNode
    authentication key pair. Only ``auth.pub`` ever leaves the site."""
    _check_site_name(site)
    key = _new_key()
    private = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH,
                                serialization.NoEncryption())
    public = key.public_key().public_bytes(serialization.Encoding.OpenSSH,
                                           serialization.PublicFormat.OpenSSH)
    _write_private(site_key_path(certs, site), private, force=force)
    _write_public(site_pub_path(certs, site), public + f" fedcare-site-{site}\n".encode(),
                  force=True)
    logger.info("site %s: key pair written to %s (fingerprint %s)", site,
                site_key_path(certs, site).parent, fingerprint(public))
    return site_pub_path(certs, site)


def load_site_public_key(path: Path) -> bytes:
    """The OpenSSH public key line in ``path``, checked to be an EC NIST-curve key."""
    text = path.read_bytes().strip()
    try:
        key = serialization.load_ssh_public_key(text)
    except (ValueError, TypeError) as err:
        raise CertError(f"certs: {path} must hold an OpenSSH EC public key; got {err}") from err
    if not isinstance(key, ec.EllipticCurvePublicKey):
        raise CertError(f"certs: {path} must hold an EC (NIST curve) public key; got "
                        f"{type(key).__name__}")
    return key.public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)


def fingerprint(public_openssh: bytes) -> str:
    """OpenSSH's own fingerprint (``ssh-keygen -lf auth.pub`` prints the same)."""
    blob = base64.b64decode(public_openssh.split(b" ")[1])
    return "SHA256:" + base64.b64encode(hashlib.sha256(blob).digest()).decode().rstrip("=")


def certificate_fingerprint(path: Path) -> str:
    """SHA-256 of a PEM certificate's DER bytes, written as
    ``openssl x509 -noout -fingerprint -sha256`` writes it (``AB:CD:...``), so a hospital can
    compare the file it received with what the operator reads out."""
    cert = x509.load_pem_x509_certificate(path.read_bytes())
    return cert.fingerprint(hashes.SHA256()).hex(":").upper()


def read_allowlist(certs: Path) -> dict[str, dict[str, str]]:
    path = certs / ALLOWLIST
    if not path.exists():
        return {}
    data = strict_json_loads(path.read_text())
    sites = data.get("sites") if isinstance(data, dict) else None
    if not isinstance(sites, dict):
        raise CertError(f"certs: {path} must hold {{\"sites\": {{...}}}}; got {data!r}")
    return sites


def _write_allowlist(certs: Path, sites: dict[str, dict[str, str]]) -> None:
    write_text_atomic(certs / ALLOWLIST, json.dumps({"sites": dict(sorted(sites.items()))},
                                                    indent=2) + "\n")


def allow_site(certs: Path, site: str, public_key: Path | None = None, *,
               force: bool = False) -> dict[str, str]:
    """Step 4 (consortium): put a site's public key on the list the SuperLink accepts."""
    _check_site_name(site)
    pub = load_site_public_key(public_key or site_pub_path(certs, site))
    sites = read_allowlist(certs)
    if site in sites and sites[site]["public-key"] != pub.decode() and not force:
        raise CertError(f"certs: site {site!r} is already listed with another key; pass "
                        "--force to rotate it (the old key stops working at the next sync)")
    for other, entry in sites.items():
        if other != site and entry["public-key"] == pub.decode():
            raise CertError(f"certs: this public key is already listed for site {other!r}; "
                            "each site needs its own key pair")
    entry = {"public-key": pub.decode(), "fingerprint": fingerprint(pub),
             "added": _now().strftime("%Y-%m-%dT%H:%M:%SZ")}
    sites[site] = entry
    _write_allowlist(certs, sites)
    logger.info("site %s allowed (%s)", site, entry["fingerprint"])
    return entry


def remove_site(certs: Path, site: str) -> None:
    """Take a site off the list; the next ``fedcare superlink``/``certs sync`` unregisters it."""
    sites = read_allowlist(certs)
    if site not in sites:
        raise CertError(f"certs: site must be on {certs / ALLOWLIST}; got {site!r} (listed: "
                        f"{', '.join(sorted(sites)) or 'none'})")
    del sites[site]
    _write_allowlist(certs, sites)


def init(certs: Path, *, hosts: Sequence[str], sites: Sequence[str],
         force: bool = False) -> None:
    """The steps for a test bed: CA, SuperLink certificate, one key pair per site, list."""
    create_ca(certs, force=force)
    issue_server_cert(certs, hosts=hosts, force=force)
    for site in sites:
        create_site_key(certs, site, force=force)
        allow_site(certs, site, force=force)


@dataclass(frozen=True)
class CertStatus:
    what: str
    path: Path
    not_after: dt.datetime | None
    problem: str | None

    def line(self, now: dt.datetime) -> str:
        if self.not_after is None:
            return f"{self.what:<22} {self.path}: {self.problem}"
        state = self.problem or "ok"
        if self.not_after <= now:  # never "-2 days left"
            ago = (now - self.not_after).days
            return (f"{self.what:<22} {self.path}: expired {self.not_after:%Y-%m-%d %H:%M} UTC "
                    f"({'less than a day' if ago < 1 else f'{ago} day(s)'} ago) - {state}")
        left = (self.not_after - now).days
        return (f"{self.what:<22} {self.path}: expires {self.not_after:%Y-%m-%d %H:%M} UTC "
                f"({left} days left) - {state}")


def _cert_status(what: str, path: Path, now: dt.datetime, warn_days: int,
                 issuer: x509.Certificate | None = None) -> CertStatus:
    if not path.exists():
        return CertStatus(what, path, None, "MISSING")
    cert = x509.load_pem_x509_certificate(path.read_bytes())
    not_after = cert.not_valid_after_utc
    problem = None
    if not_after <= now:
        problem = "EXPIRED"
    elif not_after - now <= dt.timedelta(days=warn_days):
        problem = f"EXPIRES SOON (within {warn_days} days): renew it"
    elif issuer is not None:
        try:
            cert.verify_directly_issued_by(issuer)
        except (ValueError, TypeError, InvalidSignature) as err:
            problem = f"NOT SIGNED BY THE CA ({type(err).__name__})"
    return CertStatus(what, path, not_after, problem)


def key_mismatch(cert_path: Path, key_path: Path) -> str | None:
    """Why a certificate and the private key beside it do not belong together, or ``None``
    (a server started with a mismatched pair fails every TLS handshake)."""
    if not cert_path.exists() or not key_path.exists():
        return None
    try:
        key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
    except (ValueError, TypeError) as err:
        return f"KEY UNREADABLE ({key_path.name}: {type(err).__name__})"
    cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
    form = (serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    if key.public_key().public_bytes(*form) != cert.public_key().public_bytes(*form):
        return f"DOES NOT MATCH ITS KEY {key_path.name} (reissue: fedcare certs server --force)"
    return None


def status(certs: Path, *, now: dt.datetime | None = None,
           warn_days: int = WARN_DAYS) -> list[CertStatus]:
    """Expiry and chain of the CA and SuperLink certificates present under ``certs``."""
    now = now or _now()
    rows = [_cert_status("consortium CA", certs / CA_CERT, now, warn_days)]
    ca = (x509.load_pem_x509_certificate((certs / CA_CERT).read_bytes())
          if (certs / CA_CERT).exists() else None)
    if (certs / SERVER_CERT).exists() or (certs / CA_KEY).exists():
        row = _cert_status("SuperLink certificate", certs / SERVER_CERT, now, warn_days,
                           issuer=ca)
        mismatch = key_mismatch(certs / SERVER_CERT, certs / SERVER_KEY)
        if mismatch:
            row = CertStatus(row.what, row.path, row.not_after,
                             "; ".join(filter(None, [row.problem, mismatch])))
        rows.append(row)
    return rows


def server_hosts(certs: Path) -> list[str]:
    """The SANs of the SuperLink certificate (for status output and checks)."""
    cert = x509.load_pem_x509_certificate((certs / SERVER_CERT).read_bytes())
    names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    return [str(n.value) for n in names]
