"""Emulated links for the benchmark: network namespaces on a bridge, shaped with tbf.

The layout measured in /work/shared/notes/netns-links.md: one hub namespace holding a bridge;
per host (origin, tracker, each client) a namespace with a veth pair, ``eth0`` inside the host,
the other end enslaved to the hub's bridge; addresses from 10.77.0.0/16 inside these namespaces
only. A host's upload cap is tbf on its own ``eth0``, its download cap tbf on the hub-side end.
Nothing is added to the root namespace, so no traffic can leave for any other address.

Every name starts with ``dfb-<run id>-`` (``dfb-`` alone for ``cleanup_leftovers``), so two runs
never collide and a killed run's leftovers can be found. Root only.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

#: Every namespace the benchmark makes starts with this; ``--cleanup`` removes them by it.
PREFIX: Final = "dfb-"
#: The private network inside the namespaces (10.77.0.0/16): never routed anywhere.
NETWORK: Final = ipaddress.IPv4Network("10.77.0.0/16")
#: Hosts per run at most (the /16 holds more; 1000 is far past what this machine can drive).
MAX_HOSTS: Final = 1000
#: tbf: queue at most this long before dropping. Measured here at 2 Mbit/s, 8 TCP flows
#: converging on one link: 50 ms (a 28 KB queue, the notes' figure) gave 20-67% of the line rate
#: (losses, then 200 ms retransmission timeouts: there is no emulated delay, so the queue must
#: hold every flow's window); 200 ms (66 KB) gave 98-100%.
TBF_LATENCY_MS: Final = 200
#: tbf burst: at least 16 KiB (several full frames), at least 10 ms of the rate.
TBF_MIN_BURST_BYTES: Final = 16 * 1024
TBF_BURST_S: Final = 0.010
#: TCP congestion control inside every namespace. Most hosts run CUBIC (Linux's default); this
#: machine's default is BBR, which on links without propagation delay measures a bottleneck of
#: ~1 Gbit/s from the first packets (tbf's burst lets them through at line rate), stays in its
#: start-up gain with application-limited flows and floods the shapers' queues: at 20 clients
#: 27% of the clients' TCP segments were retransmissions, against 6% with CUBIC.
CONGESTION_CONTROL: Final = "cubic"
#: Commands per host run on this many threads while the topology is built.
SETUP_THREADS: Final = 8
COMMAND_TIMEOUT_S: Final = 30.0


class NetnsError(RuntimeError):
    """An ``ip`` or ``tc`` command failed while building or removing the topology."""


def ip_program() -> str | None:
    """Path of ``ip``, or None."""
    return shutil.which("ip") or ("/usr/sbin/ip" if os.path.exists("/usr/sbin/ip") else None)


def unavailable_reason() -> str | None:
    """Why namespaces cannot be used here (not root, no ``ip``/``tc``, netns refused), or None."""
    if os.geteuid() != 0:
        return "not root: network namespaces and tc need root"
    ip = ip_program()
    if ip is None:
        return "the ip program (iproute2) is not installed"
    if shutil.which("tc") is None and not os.path.exists("/usr/sbin/tc"):
        return "the tc program (iproute2) is not installed"
    probe = f"{PREFIX}probe{os.getpid()}"
    done = subprocess.run(
        [ip, "netns", "add", probe], capture_output=True, text=True, check=False, timeout=10
    )
    if done.returncode != 0:
        return f"ip netns add failed: {done.stderr.strip()}"
    subprocess.run([ip, "netns", "del", probe], capture_output=True, check=False, timeout=10)
    return None


def _run(argv: list[str]) -> None:
    done = subprocess.run(
        argv, capture_output=True, text=True, check=False, timeout=COMMAND_TIMEOUT_S
    )
    if done.returncode != 0:
        raise NetnsError(f"{' '.join(argv)}: exit {done.returncode}: {done.stderr.strip()}")


def _tc_tbf(namespace: str, device: str, rate_bits_per_s: float, latency_ms: int) -> list[str]:
    rate_bytes = rate_bits_per_s / 8
    burst = max(TBF_MIN_BURST_BYTES, int(rate_bytes * TBF_BURST_S))
    return [
        "tc", "-n", namespace, "qdisc", "add", "dev", device, "root", "tbf",
        "rate", f"{int(rate_bits_per_s)}bit", "burst", str(burst),
        "latency", f"{latency_ms}ms",
    ]  # fmt: skip


@dataclass(frozen=True, slots=True)
class Host:
    """One emulated machine: its namespace, its address, its shaping (line rates, bits/s)."""

    namespace: str
    address: str
    hub_device: str
    up_bits_per_s: float | None
    down_bits_per_s: float | None
    #: Fixed, locally administered (02:...), so every neighbour entry can be written up front.
    mac: str = ""


@dataclass
class Topology:
    """The namespaces of one run. ``build`` creates hosts, ``teardown`` removes everything.

    Use as a context manager, so the namespaces go even when the run fails.
    """

    run_id: str = field(default_factory=lambda: secrets.token_hex(2))
    tbf_latency_ms: int = TBF_LATENCY_MS
    #: Set on every host's route to the others (``congctl``); None keeps the kernel's default.
    congestion_control: str | None = CONGESTION_CONTROL
    hosts: list[Host] = field(default_factory=list)
    _hub_made: bool = False

    @property
    def prefix(self) -> str:
        return f"{PREFIX}{self.run_id}-"

    @property
    def hub(self) -> str:
        return f"{self.prefix}hub"

    def __enter__(self) -> Topology:
        return self

    def __exit__(self, *_: object) -> None:
        self.teardown()

    def _ensure_hub(self) -> None:
        if self._hub_made:
            return
        if self.congestion_control is not None:
            available = Path("/proc/sys/net/ipv4/tcp_available_congestion_control").read_text()
            if self.congestion_control not in available.split():
                raise NetnsError(
                    f"TCP congestion control {self.congestion_control!r} is not available here "
                    f"(available: {available.strip()})"
                )
        self._hub_made = True  # set first: teardown removes a half-made hub too
        _run(["ip", "netns", "add", self.hub])
        _run(["ip", "-n", self.hub, "link", "add", "br0", "type", "bridge"])
        _run(["ip", "-n", self.hub, "link", "set", "br0", "up"])

    def build(self, specs: list[tuple[str, float | None, float | None]]) -> list[Host]:
        """Create one host per ``(role, up_bits_per_s, down_bits_per_s)``; None = unshaped.

        Hosts get consecutive addresses after those already built. Returns the new hosts.
        """
        self._ensure_hub()
        first = len(self.hosts)
        if first + len(specs) > MAX_HOSTS:
            raise ValueError(f"at most {MAX_HOSTS} hosts per run")
        new: list[Host] = []
        for offset, (role, up, down) in enumerate(specs):
            index = first + offset
            new.append(
                Host(
                    namespace=f"{self.prefix}{role}",
                    address=str(NETWORK.network_address + 2 + index),
                    hub_device=f"v{index}",
                    up_bits_per_s=up,
                    down_bits_per_s=down,
                    mac=f"02:77:00:00:{index >> 8:02x}:{index & 0xFF:02x}",
                )
            )
        self.hosts.extend(new)  # before creating them: teardown removes what was made
        with ThreadPoolExecutor(SETUP_THREADS) as pool:
            for future in [pool.submit(self._make_host, host) for host in new]:
                future.result()
            for future in [pool.submit(self._write_neighbours, host) for host in self.hosts]:
                future.result()
        return new

    def _write_neighbours(self, host: Host) -> None:
        """Permanent ARP entries for every other host: ARP requests share the shaped links, and
        an overfull upload queue dropping them would fail connections ("no route to host")
        instead of slowing them; the benchmark measures TCP on the links, not ARP."""
        lines = [
            f"neigh replace {other.address} lladdr {other.mac} dev eth0 nud permanent\n"
            for other in self.hosts
            if other is not host
        ]
        done = subprocess.run(
            ["ip", "-n", host.namespace, "-batch", "-"],
            input="".join(lines), capture_output=True, text=True, check=False,
            timeout=COMMAND_TIMEOUT_S,
        )  # fmt: skip
        if done.returncode != 0:
            raise NetnsError(f"neighbours of {host.namespace}: {done.stderr.strip()[:500]}")

    def _make_host(self, host: Host) -> None:
        ns, hub, dev = host.namespace, self.hub, host.hub_device
        _run(["ip", "netns", "add", ns])
        _run(["ip", "-n", hub, "link", "add", dev, "type", "veth", "peer", "name", "eth0",
              "netns", ns])  # fmt: skip
        _run(["ip", "-n", hub, "link", "set", dev, "master", "br0", "up"])
        _run(["ip", "-n", ns, "link", "set", "eth0", "address", host.mac])
        _run(["ip", "-n", ns, "addr", "add", f"{host.address}/{NETWORK.prefixlen}", "dev", "eth0"])
        _run(["ip", "-n", ns, "link", "set", "eth0", "up"])
        _run(["ip", "-n", ns, "link", "set", "lo", "up"])
        if self.congestion_control is not None:
            # Per route (the sysctl may not be set inside a namespace): every connection to
            # another host, active or passive, uses it.
            _run(["ip", "-n", ns, "route", "replace", str(NETWORK), "dev", "eth0", "proto",
                  "kernel", "scope", "link", "src", host.address,
                  "congctl", self.congestion_control])  # fmt: skip
        if host.up_bits_per_s is not None:
            _run(_tc_tbf(ns, "eth0", host.up_bits_per_s, self.tbf_latency_ms))
        if host.down_bits_per_s is not None:
            _run(_tc_tbf(hub, dev, host.down_bits_per_s, self.tbf_latency_ms))

    def link_counters(self) -> dict[str, dict[str, int]]:
        """Bytes, packets and drops of every shaper so far, by ``<role>/up`` and ``<role>/down``
        (tbf counts what it sent; a drop is a packet its full queue refused)."""
        by_device = {host.hub_device: host for host in self.hosts}
        counters: dict[str, dict[str, int]] = {}
        for device, figures in tbf_counters(self.hub).items():
            if device in by_device:
                role = by_device[device].namespace.removeprefix(self.prefix)
                counters[f"{role}/down"] = figures
        shaped_up = [host for host in self.hosts if host.up_bits_per_s is not None]
        with ThreadPoolExecutor(SETUP_THREADS) as pool:
            readings = pool.map(lambda host: tbf_counters(host.namespace), shaped_up)
            tcp = pool.map(lambda host: tcp_counters(host.namespace), shaped_up)
            for host, reading, segments in zip(shaped_up, readings, tcp, strict=True):
                role = host.namespace.removeprefix(self.prefix)
                if "eth0" in reading:
                    counters[f"{role}/up"] = reading["eth0"]
                counters[f"{role}/tcp"] = segments
        return counters

    def teardown(self) -> None:
        """Kill what still runs inside, delete every namespace of this run (veths go along)."""
        names = [host.namespace for host in self.hosts]
        if self._hub_made:
            names.append(self.hub)
        remove_namespaces(names)
        self.hosts.clear()
        self._hub_made = False


def tbf_counters(namespace: str) -> dict[str, dict[str, int]]:
    """``tc -s`` figures of every tbf qdisc in ``namespace``, by device."""
    done = subprocess.run(
        ["tc", "-n", namespace, "-s", "-j", "qdisc", "show"],
        capture_output=True, text=True, check=False, timeout=COMMAND_TIMEOUT_S,
    )  # fmt: skip
    if done.returncode != 0:
        raise NetnsError(f"tc -n {namespace} -s qdisc show: {done.stderr.strip()}")
    return {
        entry["dev"]: {key: int(entry.get(key, 0)) for key in ("bytes", "packets", "drops")}
        for entry in json.loads(done.stdout or "[]")
        if entry.get("kind") == "tbf" and "dev" in entry
    }


def tcp_counters(namespace: str) -> dict[str, int]:
    """The namespace's TCP segments sent and retransmitted so far (``/proc/net/snmp``)."""
    done = subprocess.run(
        ["ip", "netns", "exec", namespace, "cat", "/proc/net/snmp"],
        capture_output=True, text=True, check=False, timeout=COMMAND_TIMEOUT_S,
    )  # fmt: skip
    rows = [line.split() for line in done.stdout.splitlines() if line.startswith("Tcp:")]
    if done.returncode != 0 or len(rows) < 2:
        raise NetnsError(f"cannot read TCP counters of {namespace}: {done.stderr.strip()}")
    figures = dict(zip(rows[0][1:], rows[1][1:], strict=False))
    return {"out_segments": int(figures["OutSegs"]), "retransmitted": int(figures["RetransSegs"])}


def exec_argv(namespace: str | None, argv: list[str]) -> list[str]:
    """``argv`` run inside ``namespace`` (``ip netns exec`` execs it: the pid stays the same)."""
    if namespace is None:
        return argv
    return ["ip", "netns", "exec", namespace, *argv]


def namespace_pids(namespace: str) -> list[int]:
    done = subprocess.run(
        ["ip", "netns", "pids", namespace], capture_output=True, text=True, check=False, timeout=10
    )
    return [int(word) for word in done.stdout.split() if word.isdigit()]


def remove_namespaces(names: list[str]) -> None:
    """SIGKILL any process left inside each namespace, then delete it. Errors are reported on
    stderr and do not stop the removal of the others."""
    for name in names:
        for pid in namespace_pids(name):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
    for name in names:
        done = subprocess.run(
            ["ip", "netns", "del", name], capture_output=True, text=True, check=False, timeout=30
        )
        if done.returncode != 0 and "No such file" not in done.stderr:
            print(f"bench: could not delete namespace {name}: {done.stderr.strip()}",
                  file=sys.stderr)  # fmt: skip


def leftover_namespaces() -> list[str]:
    """Namespaces named ``dfb-...``: a run killed before its own cleanup."""
    done = subprocess.run(
        ["ip", "netns", "list"], capture_output=True, text=True, check=False, timeout=10
    )
    names = [line.split()[0] for line in done.stdout.splitlines() if line.strip()]
    return [name for name in names if name.startswith(PREFIX)]


def cleanup_leftovers() -> list[str]:
    """Remove every ``dfb-`` namespace and what runs in it; returns their names."""
    names = leftover_namespaces()
    remove_namespaces(names)
    return names
