"""scripts/stack.sh and the online store: `up valkey` starts Valkey on loopback with the generated password, a new
shell reaches it through TIDAL_REDIS_URL, data survives down and up, `up s3` does not start it, `down` stops it."""

from __future__ import annotations

import psutil
import pytest

from tests.scripts.stack_run import free_ports, sourced, stack, stack_dir_env


@pytest.mark.stack
def test_up_valkey_serves_the_password_from_secrets_and_keeps_data_across_down_and_up(private_stack):
    import redis

    ports = free_ports()
    env = stack_dir_env(private_stack, **ports)
    started = stack("up", "valkey", env=env)
    assert started.returncode == 0, started.stderr
    status = stack("status", env=env).stdout
    assert f"online store at 127.0.0.1:{ports['TIDAL_REDIS_PORT']}" in status and "seaweedfs: stopped" in status
    secrets = dict(line.split("=", 1) for line in (private_stack / "secrets.env").read_text().splitlines())
    url = sourced(stack_dir_env(private_stack), "TIDAL_REDIS_URL")["TIDAL_REDIS_URL"]
    assert url == f"redis://:{secrets['TIDAL_REDIS_PASSWORD']}@127.0.0.1:{ports['TIDAL_REDIS_PORT']}/0"

    pid = int((private_stack / "pids" / "valkey.pid").read_text())
    server = psutil.Process(pid)
    assert {(c.laddr.ip, c.laddr.port) for c in server.net_connections("tcp") if c.status == "LISTEN"} == \
        {("127.0.0.1", int(ports["TIDAL_REDIS_PORT"]))}
    assert secrets["TIDAL_REDIS_PASSWORD"] not in " ".join(server.cmdline())  # in the 0600 config file, not in ps
    assert (private_stack / "valkey.conf").stat().st_mode & 0o077 == 0
    with pytest.raises(redis.AuthenticationError):
        redis.Redis.from_url(url.replace(secrets["TIDAL_REDIS_PASSWORD"], "wrong")).ping()
    redis.Redis.from_url(url).hset("tidal:user:u1", mapping={"recent:items": '["i1"]', "_ts:recent": "1.0"})

    assert stack("down", env=env).returncode == 0
    assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    assert "valkey: stopped" in stack("status", env=env).stdout
    assert stack("up", "valkey", env=env).returncode == 0
    assert redis.Redis.from_url(url, decode_responses=True).hgetall("tidal:user:u1") == \
        {"recent:items": '["i1"]', "_ts:recent": "1.0"}


def test_a_busy_redis_port_is_refused_naming_it(private_stack):
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        held = sock.getsockname()[1]
        ports = {**free_ports(), "TIDAL_REDIS_PORT": str(held)}
        refused = stack("up", "valkey", env=stack_dir_env(private_stack, **ports))
        assert refused.returncode == 1
        assert f"port {held} on 127.0.0.1, wanted for the valkey online store (Redis) (TIDAL_REDIS_PORT)" in refused.stderr
        assert "TIDAL_REDIS_PORT" in refused.stderr.splitlines()[-1]
