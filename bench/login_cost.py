"""What one login costs a pooler: poold, PgBouncer and a canned-bytes server.

    .venv/bin/python bench/login_cost.py [--rounds 5] [--logins 2000]

A login here is what pgbench -C does per transaction: connect over TCP,
SCRAM-SHA-256 with the bench user's verifier, one simple query, Terminate. The
client is this process, on raw sockets, one login at a time; it derives its
SCRAM key once per salt and reuses it, so that the server side is what is
measured. Each round runs the logins against every target in turn (the order
rotated each round) and reads each server's CPU time from /proc/PID/stat;
printed are the medians of user and kernel CPU per login, of their sum
(each round's, so not always the sum of the two medians), and of logins per
second (one client: that is the latency of a login).

The *canned server* (``canned_login.py``) answers the same messages with fixed
bytes: no password check, no pool, nothing of its own. It is the least a
Python server on uvloop spends per connection (accept, transports, close and
the kernel's part), to compare poold's login and PgBouncer's with. Two more
targets split poold's cost (``poold_canned_login.py``): *poold, login canned*
is poold with the login's work replaced by canned bytes (its session, pool
and relay are its own), and *poold, all canned* answers the query with canned
bytes as well (poold's session object and transport, nothing else). Same rig
as ``make bench`` (bench/run.py): a throwaway PostgreSQL, loopback only,
bounded in time.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import hmac
import os
import shutil
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import run as bench_run  # bench/run.py
from canned_login import msg
from run import PASSWORD, USER, Rig, proc_cpu_split, wait_port

HERE = Path(__file__).resolve().parent


class LoginClient:
    """connect, SCRAM-SHA-256, ``SELECT 1``, Terminate; the salted password cached per salt."""

    def __init__(self, user: str, password: str) -> None:
        self.user, self.password = user, password.encode()
        self.salted: dict[tuple[str, str], bytes] = {}

    def login(self, port: int) -> None:
        with socket.create_connection(("127.0.0.1", port)) as sock:
            self.sock, self.buf = sock, bytearray()
            params = f"user\0{self.user}\0database\0{self.user}\0\0".encode()
            sock.sendall(struct.pack("!ii", len(params) + 8, 196608) + params)
            client_nonce = ""
            client_first_bare = server_first = ""
            while True:
                kind, body = self._recv()
                if kind == b"E":
                    raise RuntimeError(f"login failed: {body!r}")
                if kind == b"Z":
                    break
                if kind != b"R":
                    continue
                (code,) = struct.unpack("!i", body[:4])
                if code == 10:  # AuthenticationSASL
                    client_nonce = base64.b64encode(os.urandom(18)).decode()
                    client_first_bare = f"n=,r={client_nonce}"
                    first = ("n,," + client_first_bare).encode()
                    sock.sendall(msg(b"p", b"SCRAM-SHA-256\0" + struct.pack("!i", len(first)) + first))
                elif code == 11:  # AuthenticationSASLContinue
                    server_first = body[4:].decode()
                    sock.sendall(msg(b"p", self._final(client_first_bare, server_first)))
            sock.sendall(msg(b"Q", b"SELECT 1\0"))
            while self._recv()[0] != b"Z":
                pass
            sock.sendall(msg(b"X", b""))

    def _final(self, client_first_bare: str, server_first: str) -> bytes:
        attrs = dict(part.split("=", 1) for part in server_first.split(","))
        key = (attrs["s"], attrs["i"])
        if key not in self.salted:
            self.salted[key] = hashlib.pbkdf2_hmac("sha256", self.password, base64.b64decode(attrs["s"]),
                                                   int(attrs["i"]))
        client_key = hmac.digest(self.salted[key], b"Client Key", "sha256")
        without_proof = f"c=biws,r={attrs['r']}"
        auth_message = f"{client_first_bare},{server_first},{without_proof}".encode()
        signature = hmac.digest(hashlib.sha256(client_key).digest(), auth_message, "sha256")
        proof = bytes(a ^ b for a, b in zip(client_key, signature, strict=True))
        return (without_proof + ",p=" + base64.b64encode(proof).decode()).encode()

    def _recv(self) -> tuple[bytes, bytes]:
        while True:
            if len(self.buf) >= 5:
                (length,) = struct.unpack_from("!i", self.buf, 1)
                if len(self.buf) >= length + 1:
                    kind, body = bytes(self.buf[:1]), bytes(self.buf[5:length + 1])
                    del self.buf[:length + 1]
                    return kind, body
            chunk = self.sock.recv(65536)
            if not chunk:
                raise EOFError("the server closed the connection")
            self.buf += chunk


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--logins", type=int, default=2000, help="logins per target per round")
    args = ap.parse_args()
    bench_run.ensure_pgbouncer()
    work = Path(tempfile.mkdtemp(prefix="poold-login-"))
    os.chmod(work, 0o755)
    rig = Rig(work, "scram-sha-256")
    references: dict[str, subprocess.Popen[bytes]] = {}
    try:
        rig.start_postgres()
        rig.start_poolers()
        ports = {"poold": rig.ports["poold"], "pgbouncer": rig.ports["pgbouncer"]}
        pids = {"poold": rig.pid("poold"), "pgbouncer": rig.pid("pgbouncer")}
        poold_config = (work / "poold.toml").read_text()
        for name, mode in (("poold, login canned", "login"), ("poold, all canned", "all"), ("canned", None)):
            port = bench_run.pgcluster.free_port()
            if mode is None:
                argv = ["canned_login.py", str(port)]
            else:  # poold's configuration, on a port of its own
                config = work / f"poold-{mode}.toml"
                listen = f"port = {rig.ports['poold']}\n"
                assert listen in poold_config, "the bench's poold.toml has changed shape"
                config.write_text(poold_config.replace(listen, f"port = {port}\n", 1))
                argv = ["poold_canned_login.py", mode, "-c", str(config)]
            references[name] = subprocess.Popen([sys.executable, str(HERE / argv[0]), *argv[1:]],
                                                cwd=work, stdout=subprocess.DEVNULL)
            wait_port(port)
            ports[name], pids[name] = port, references[name].pid
        client = LoginClient(USER, PASSWORD)
        results: dict[str, list[tuple[float, float, float]]] = {t: [] for t in ports}
        for r in range(args.rounds):
            for target in bench_run.round_order(r, tuple(ports)):
                port, pid = ports[target], pids[target]
                assert pid is not None
                for _ in range(50):  # warm: the pool's connections, the client's key
                    client.login(port)
                before, start = proc_cpu_split(pid), time.perf_counter()
                for _ in range(args.logins):
                    client.login(port)
                elapsed, after = time.perf_counter() - start, proc_cpu_split(pid)
                user, system = ((b - a) / args.logins * 1e6 for a, b in zip(before, after, strict=True))
                results[target].append((user, system, args.logins / elapsed))
        print(f"one login (connect, SCRAM with a verifier, SELECT 1, Terminate): medians of {args.rounds} "
              f"alternating rounds of {args.logins} logins")
        print(f"{'':20} {'user us':>8} {'kernel us':>10} {'total us':>9} {'vs pgbouncer':>13} {'logins/s':>9}")
        totals = {t: statistics.median(u + s for u, s, _ in rows) for t, rows in results.items()}
        for target, rows in results.items():
            user, system, rate = (statistics.median(row[i] for row in rows) for i in range(3))
            print(f"{target:20} {user:8.0f} {system:10.0f} {totals[target]:9.0f} "
                  f"{totals[target] / totals['pgbouncer']:13.2f} {rate:9.0f}")
        return 0
    finally:
        for proc in references.values():
            proc.kill()
        rig.stop()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    raise SystemExit(main())
