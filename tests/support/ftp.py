"""Test-side FTP: camera-like ftplib clients, JPEGs to upload, a self-signed certificate."""

from __future__ import annotations

import datetime
import ftplib
import io
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from PIL import Image, ImageDraw


def jpeg(text: str, size: tuple[int, int] = (320, 240)) -> bytes:
    """A small, distinct JPEG."""
    image = Image.new("RGB", size, (40, 90, 140))
    ImageDraw.Draw(image).text((10, 10), text, fill=(255, 255, 0))
    out = io.BytesIO()
    image.save(out, "JPEG", quality=85)
    return out.getvalue()


def connect(port: int, user: str, password: str, *, tls: bool = False) -> ftplib.FTP:
    """A logged-in client, as a camera would open one (passive mode)."""
    client: ftplib.FTP = ftplib.FTP_TLS(timeout=10) if tls else ftplib.FTP(timeout=10)
    client.connect("127.0.0.1", port)
    client.login(user, password)
    if isinstance(client, ftplib.FTP_TLS):
        client.prot_p()
    return client


def upload(client: ftplib.FTP, remote: str, data: bytes) -> None:
    """STOR ``data`` as ``remote``."""
    client.storbinary(f"STOR {remote}", io.BytesIO(data))


def self_signed(folder: Path) -> tuple[Path, Path]:
    """A certificate and key for 127.0.0.1, valid for a day."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = folder / "ftp.crt", folder / "ftp.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path
