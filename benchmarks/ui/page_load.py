"""Load time of the tidal page (plugins/tidal_ui) with many versions in the registry, in headless Chromium.

Starts a private Airflow with the plugin (scripts/stack.sh in a temp folder, moved ports: the fixture of
tests/plugins), fills its home with 3 versions (the baseline), measures, grows the same registry to --versions
(default 100) and measures again. Per size, --repeats page loads of /tidal/ (the page the Airflow UI frames):

  page ms   navigation start -> the page rendered from its JSON (body[data-loaded], Performance API clock)
  +plots ms navigation start -> also the four server-side PNG plots loaded (Python-side wall clock)

and the median time of each JSON route over as many plain HTTP calls. Prints a Markdown table and writes
benchmarks/ui/page_load.json.

Run: PYTHONPATH=. .venv/bin/python benchmarks/ui/page_load.py [--versions 100] [--repeats 5]
(heavy: under `flock -o /tmp/tidal-heavy.lock` on a shared machine; needs `make browser`).
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import pytest

import tests.conftest  # noqa: F401  (the environment the fixtures expect: Airflow home, no user TIDAL_HOME)
from tests.conftest import private_home
from tests.plugins import test_browser
from tests.plugins.conftest import TidalAirflow
from tests.plugins.registry_state import many_versions, stage_candidate
from tests.scripts.stack_run import free_ports, stack, stack_dir_env

ROUTES = ["/tidal/api/serving", "/tidal/api/chain", "/tidal/api/runs", "/tidal/api/quarantine",
          "/tidal/api/plots/quality.png", "/tidal/api/plots/freshness.png"]


def chromium(folder: Path):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    binary, driver_binary = test_browser.chromium_binaries()
    options = webdriver.ChromeOptions()
    options.binary_location = binary
    for flag in test_browser.CHROMIUM_FLAGS + [f"--user-data-dir={tempfile.mkdtemp(dir=folder)}"]:
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(driver_binary), options=options)
    driver.screenshots = folder / "screenshots"
    driver.screenshots.mkdir(exist_ok=True)
    return driver


def page_loads(driver, airflow, repeats: int) -> dict:
    from selenium.webdriver.common.by import By

    page, with_plots = [], []
    for _ in range(repeats):
        started = time.perf_counter()
        driver.get(airflow.base + "/tidal/")
        test_browser.wait(driver, lambda d: d.find_element(By.TAG_NAME, "body").get_attribute("data-loaded") == "true",
                          "the page")
        test_browser.plots_loaded(driver)
        with_plots.append((time.perf_counter() - started) * 1000)
        page.append(float(driver.find_element(By.TAG_NAME, "body").get_attribute("data-loaded-ms")))
    rows = len(driver.find_elements(By.CSS_SELECTOR, "#chain tr[data-decision]"))
    return {"chain_rows": rows, "page_ms": page, "with_plots_ms": with_plots}


def route_times(airflow, repeats: int) -> dict:
    times = {}
    for route in ROUTES:
        samples = []
        for _ in range(repeats):
            started = time.perf_counter()
            status, _body = airflow.request("GET", route)
            samples.append((time.perf_counter() - started) * 1000)
            assert status == 200, (route, status)
        times[route] = statistics.median(samples)
    return times


def measure(driver, airflow, repeats: int) -> dict:
    return {**page_loads(driver, airflow, repeats), "routes_ms": route_times(airflow, repeats)}


def grow(settings, registry, to: int) -> None:
    """More fine-tunes on the same registry, as the cycles would add them."""
    from jobs.release.promote import run_promote

    for i in range(len(registry.versions()), to):
        run_id = f"cycle-{i:04d}"
        gate = stage_candidate(registry, run_id, i, kind="incremental", parent=registry.production().version,
                               anchor="v000001", recall=0.30 + 0.0005 * i)
        run_promote(settings, run_id, gate, None)


def markdown(results: dict) -> str:
    lines = ["| versions | chain rows | page ms (median, min-max) | +plots ms (median) | /api/chain ms | "
             "/api/plots/quality.png ms |", "|---|---|---|---|---|---|"]
    for versions, r in results.items():
        lines.append(f"| {versions} | {r['chain_rows']} | {statistics.median(r['page_ms']):.0f} "
                     f"({min(r['page_ms']):.0f}-{max(r['page_ms']):.0f}) | {statistics.median(r['with_plots_ms']):.0f} "
                     f"| {r['routes_ms']['/tidal/api/chain']:.0f} "
                     f"| {r['routes_ms']['/tidal/api/plots/quality.png']:.0f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--versions", type=int, default=100)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args(argv)
    folder = Path(tempfile.mkdtemp(prefix="tidal-ui-bench-"))
    stack_dir = folder / "stack"
    stack_dir.mkdir()
    with private_home(stack_dir) as settings:
        registry = many_versions(settings, 3)
    env = stack_dir_env(stack_dir, **free_ports(), TIDAL_PARAMS=str(stack_dir / "params.yaml"),
                        TIDAL_INCREMENTAL_EVERY_MINUTES="1440")
    up = stack("up", "airflow", env=env, timeout=600)
    driver = None
    try:
        assert up.returncode == 0, up.stderr[-3000:]
        airflow = TidalAirflow(stack_dir, env, settings)
        driver = chromium(folder)
        test_browser.log_in(driver, airflow)
        results = {3: measure(driver, airflow, args.repeats)}
        with pytest.MonkeyPatch.context() as mp:
            mp.setenv("TIDAL_HOME", str(settings.home))
            mp.setenv("TIDAL_PARAMS", str(stack_dir / "params.yaml"))
            grow(settings, registry, args.versions)
        results[args.versions] = measure(driver, airflow, args.repeats)
    finally:
        if driver is not None:
            driver.quit()
        stack("down", env=env, timeout=300)
    print(markdown(results))
    out = Path(__file__).with_name("page_load.json")
    out.write_text(json.dumps({"repeats": args.repeats, "results": results}, indent=2) + "\n")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
