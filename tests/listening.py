"""Which TCP ports a set of processes listens on, and whether each refuses a client without Ray's
token. From /proc (no psutil): /proc/net/tcp{,6} lists listening sockets by inode, and
/proc/PID/fd links name the inodes a process holds.

A socket passes when it is bound to loopback, or when a client without the token is refused:
HTTP 401/403 (Ray's aiohttp servers), or gRPC UNAUTHENTICATED (Ray's C++ and Python gRPC servers)
for a harmless method of one of Ray's services. A socket that answers anything else, or whose
service none of the probes knows, fails: a new kind of port must be looked at, not passed.
"""
from __future__ import annotations

import http.client
import ipaddress
import os
import socket
from dataclasses import dataclass

# One harmless (read-only) method per gRPC service Ray runs; a server answers UNIMPLEMENTED for
# the services it does not serve, and UNAUTHENTICATED (before any handler runs) for its own.
GRPC_PROBES = (
    "/ray.rpc.NodeInfoGcsService/GetClusterId",  # GCS
    "/ray.rpc.InternalKVGcsService/InternalKVKeys",  # GCS
    "/ray.rpc.NodeManagerService/GetSystemConfig",  # raylet
    "/ray.rpc.ObjectManagerService/Pull",  # raylet's object manager (an empty pull: nothing)
    "/ray.rpc.CoreWorkerService/GetCoreWorkerStats",  # every worker and driver
    "/ray.rpc.RayletDriver/ClusterInfo",  # Ray Client server
    "/ray.rpc.ReporterService/HealthCheck",  # dashboard agent (gRPC)
    "/ray.rpc.RuntimeEnvService/GetRuntimeEnvsInfo",  # runtime env agent (gRPC, older Rays)
)


@dataclass(frozen=True)
class Listener:
    pid: int
    comm: str
    ip: str
    port: int

    @property
    def loopback(self) -> bool:
        ip = ipaddress.ip_address(self.ip)
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        return ip.is_loopback

    def __str__(self) -> str:
        return f"{self.comm} (pid {self.pid}) on {self.ip}:{self.port}"


def _listening_inodes() -> dict[int, tuple[str, int]]:
    found = {}
    for table, family in (("tcp", socket.AF_INET), ("tcp6", socket.AF_INET6)):
        try:
            lines = open(f"/proc/net/{table}").read().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if fields[3] != "0A":  # TCP_LISTEN
                continue
            addr, port = fields[1].split(":")
            raw = bytes.fromhex(addr)
            # the kernel prints each 32-bit word of the address in host (little-endian) order
            raw = b"".join(raw[i:i + 4][::-1] for i in range(0, len(raw), 4))
            found[int(fields[9])] = (socket.inet_ntop(family, raw), int(port, 16))
    return found


def listeners(pids: list[int]) -> list[Listener]:
    """Every listening TCP socket held by one of PIDS."""
    inodes = _listening_inodes()
    out = set()
    for pid in pids:
        try:
            comm = open(f"/proc/{pid}/comm").read().strip()
            fds = os.listdir(f"/proc/{pid}/fd")
        except OSError:
            continue
        for fd in fds:
            try:
                link = os.readlink(f"/proc/{pid}/fd/{fd}")
            except OSError:
                continue
            if link.startswith("socket:[") and int(link[8:-1]) in inodes:
                out.add(Listener(pid, comm, *inodes[int(link[8:-1])]))
    return sorted(out, key=lambda s: (s.port, s.pid))


def _connect_host(listener: Listener) -> str:
    """Where a client reaches LISTENER: its own address, or this host's for a wildcard bind."""
    if listener.ip in ("0.0.0.0", "::"):
        return "127.0.0.1"
    ip = ipaddress.ip_address(listener.ip)
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return str(ip.ipv4_mapped)
    return listener.ip


def http_status(host: str, port: int, token: str | None = None) -> int | None:
    """The status of GET / (None when the port does not speak HTTP/1.1)."""
    try:
        conn = http.client.HTTPConnection(host, port, timeout=5)
        conn.request("GET", "/", headers={"Authorization": f"Bearer {token}"} if token else {})
        return conn.getresponse().status
    except (OSError, http.client.HTTPException):
        return None


def grpc_codes(host: str, port: int, token: str | None = None) -> dict[str, str]:
    """{probe method: gRPC status code name} without (or with) the token."""
    import grpc

    metadata = (("authorization", f"Bearer {token}"),) if token else None
    codes = {}
    with grpc.insecure_channel(f"{host}:{port}") as channel:
        for method in GRPC_PROBES:
            try:
                channel.unary_unary(method)(b"", timeout=10, metadata=metadata)
                codes[method] = "OK"
            except grpc.RpcError as exc:
                codes[method] = exc.code().name
    return codes


def refuses_without_token(listener: Listener) -> tuple[bool, str]:
    """(refused, what it answered) for a client without the token."""
    host = _connect_host(listener)
    status = http_status(host, listener.port)
    if status is not None:
        return status in (401, 403), f"HTTP {status}"
    codes = grpc_codes(host, listener.port)
    answered = {m: c for m, c in codes.items() if c != "UNIMPLEMENTED"}
    refused = bool(answered) and set(answered.values()) == {"UNAUTHENTICATED"}
    return refused, f"gRPC {answered or 'UNIMPLEMENTED for every probe (an unknown service)'}"


def accepts_token(listener: Listener, token: str) -> bool:
    """The same probes with the token get past authentication (the probes are not refused for
    some other reason, so a refusal above means what it says)."""
    host = _connect_host(listener)
    status = http_status(host, listener.port, token)
    if status is not None:
        return status not in (401, 403)
    codes = grpc_codes(host, listener.port, token)
    return any(c not in ("UNAUTHENTICATED", "UNIMPLEMENTED") for c in codes.values())
