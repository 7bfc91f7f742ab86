"""scripts/stack.sh and serving: `up serving` starts `tidal serve` on loopback at TIDAL_SERVING_PORT, a new shell
finds it through TIDAL_SERVING_URL, it answers before any model exists (not ready, with the reason), and `down`
stops it by PID."""

from __future__ import annotations

import httpx
import psutil

from tests.scripts.stack_run import free_ports, sourced, stack, stack_dir_env


def test_up_serving_answers_on_loopback_and_down_stops_it(private_stack):
    ports = free_ports()
    env = stack_dir_env(private_stack, **ports)
    started = stack("up", "serving", env=env)
    assert started.returncode == 0, started.stderr
    url = sourced(stack_dir_env(private_stack), "TIDAL_SERVING_URL")["TIDAL_SERVING_URL"]
    assert url == f"http://127.0.0.1:{ports['TIDAL_SERVING_PORT']}"
    assert "serving: running" in stack("status", env=env).stdout
    pid = int((private_stack / "pids" / "serving.pid").read_text())
    listening = {(c.laddr.ip, c.laddr.port) for c in psutil.Process(pid).net_connections("tcp") if c.status == "LISTEN"}
    assert listening == {("127.0.0.1", int(ports["TIDAL_SERVING_PORT"]))}
    ready = httpx.get(f"{url}/readyz", timeout=5)
    assert ready.status_code == 503 and ready.json()["reason"].startswith("no model in production yet")
    assert httpx.get(f"{url}/healthz", timeout=5).json() == {"alive": True}

    assert stack("down", env=env).returncode == 0
    assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    assert "serving: stopped" in stack("status", env=env).stdout
