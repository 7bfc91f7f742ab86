"""Every port the stack will open is checked before anything starts: free on its address, within 1024..65535,
and not wanted twice. A refusal names the port, what it was for and who holds it; nothing is started."""

from __future__ import annotations

import os
import random
import socket

import pytest

from tests.scripts.stack_run import TEST_PORTS, stack, stack_dir_env


# What `scripts/stack.sh ports` lists for the default settings; the README documents the same table.
DEFAULT_TABLE = {
    18333: "S3 API", 28333: "S3 gRPC", 19333: "master", 29333: "master gRPC", 19380: "volume",
    29380: "volume gRPC", 19388: "filer", 29388: "filer gRPC", 19346: "admin", 29346: "admin gRPC",
    18090: "API server and UI", 19393: "worker log server", 19394: "triggerer log server", 18379: "online store",
    18400: "recommendations API", 18415: "Spark Connect",
}


def table(ports_stdout: str) -> dict[int, str]:
    rows = [line.split(maxsplit=3) for line in ports_stdout.splitlines()[1:] if line[:1].isdigit()]
    return {int(port): rest.split(" (")[0] for port, _address, _component, rest in rows}


def nothing_started(stack_dir) -> bool:
    pids = stack_dir / "pids"
    return not (stack_dir / "stack.env").exists() and (not pids.exists() or not any(pids.iterdir()))


def bind_below_the_ephemeral_range(sock: socket.socket, address: str) -> int:
    """A free port in 25000..32000, so that the base it implies keeps every derived port under 65536."""
    for port in random.sample(range(25000, 32000), 50):
        try:
            sock.bind((address, port))
            return port
        except OSError:
            continue
    raise AssertionError("no free port in 25000..32000")


@pytest.fixture
def held_port():
    """A port this test listens on; the OS picks it from the ephemeral range, so port - 10000 is a valid S3 port."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield sock.getsockname()[1]


def test_the_table_lists_every_port_and_what_derives_it(tmp_path):
    listed = stack("ports", env=stack_dir_env(tmp_path / "stack"))
    assert table(listed.stdout) == DEFAULT_TABLE
    assert "S3 gRPC (TIDAL_S3_PORT + 10000)" in listed.stdout
    assert "worker log server (TIDAL_WEED_PORT_BASE + 93)" in listed.stdout


def test_moved_ports_move_every_derived_port(tmp_path):
    listed = stack("ports", env=stack_dir_env(tmp_path / "stack", **TEST_PORTS))
    assert table(listed.stdout) == {
        21333: "S3 API", 31333: "S3 gRPC", 20333: "master", 30333: "master gRPC", 20380: "volume",
        30380: "volume gRPC", 20388: "filer", 30388: "filer gRPC", 20346: "admin", 30346: "admin gRPC",
        21090: "API server and UI", 20393: "worker log server", 20394: "triggerer log server", 21379: "online store",
        21400: "recommendations API", 21415: "Spark Connect",
    }


def test_a_derived_port_in_use_is_refused_naming_it_and_its_holder(private_stack, held_port):
    stack_dir = private_stack
    env = stack_dir_env(stack_dir, **{**TEST_PORTS, "TIDAL_S3_PORT": str(held_port - 10000)})

    refused = stack("up", "s3", env=env)

    assert refused.returncode == 1
    assert (f"port {held_port} on 127.0.0.1, wanted for the seaweedfs S3 gRPC (TIDAL_S3_PORT + 10000), "
            f"is in use by ") in refused.stderr
    assert f"(pid {os.getpid()})" in refused.stderr
    assert nothing_started(stack_dir)


def test_a_log_server_port_held_on_ipv6_only_is_refused(private_stack):
    # Airflow's log servers bind every interface, IPv6 included: a port free on 127.0.0.1 can still be taken.
    if not socket.has_ipv6:
        pytest.skip("no IPv6 on this machine")
    with socket.socket(socket.AF_INET6) as sock:
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        held = bind_below_the_ephemeral_range(sock, "::")
        sock.listen()
        env = stack_dir_env(private_stack, **{**TEST_PORTS, "TIDAL_WEED_PORT_BASE": str(held - 93)})

        refused = stack("up", "airflow", env=env)

    assert refused.returncode == 1
    assert (f"port {held} on all interfaces, wanted for the airflow worker log server (TIDAL_WEED_PORT_BASE + 93), "
            f"is in use by ") in refused.stderr
    assert nothing_started(private_stack)


def test_ports_wanted_twice_are_refused_naming_both_uses(private_stack):
    stack_dir = private_stack
    env = stack_dir_env(stack_dir, **{**TEST_PORTS, "TIDAL_S3_PORT": "20333"})  # the master's, base + 33

    refused = stack("up", env=env)

    assert refused.returncode == 1
    assert "port 20333 is wanted twice: S3 API (TIDAL_S3_PORT) and master (TIDAL_WEED_PORT_BASE + 33)" in refused.stderr
    assert "port 30333 is wanted twice: S3 gRPC (TIDAL_S3_PORT + 10000)" in refused.stderr
    assert nothing_started(stack_dir)


@pytest.mark.parametrize(("name", "value", "message"), [
    ("TIDAL_S3_PORT", "60000", "TIDAL_S3_PORT=60000 puts the S3 gRPC (TIDAL_S3_PORT + 10000) at 70000; every port "
                               "must be within 1024..65535, so TIDAL_S3_PORT must be within 1024..55535"),
    ("TIDAL_WEED_PORT_BASE", "900", "TIDAL_WEED_PORT_BASE must be within 991..55447"),
    ("TIDAL_AIRFLOW_PORT", "8o80", "TIDAL_AIRFLOW_PORT=8o80 is not a port number: give a whole number"),
    ("TIDAL_SPARK_PORT", "70000", "TIDAL_SPARK_PORT=70000 puts the Spark Connect (TIDAL_SPARK_PORT) at 70000; every "
                                  "port must be within 1024..65535, so TIDAL_SPARK_PORT must be within 1024..65535"),
])
def test_a_port_out_of_range_is_refused_saying_what_is_allowed(private_stack, name, value, message):
    stack_dir = private_stack
    refused = stack("up", env=stack_dir_env(stack_dir, **{**TEST_PORTS, name: value}))
    assert refused.returncode == 2
    assert message in refused.stderr
    assert nothing_started(stack_dir)
