"""The tidal page in a real browser: headless Chromium (Debian's chromium and chromium-driver, `make browser`)
driven by selenium logs in to the private Airflow (tests/plugins/conftest.py), opens tidal from the navigation,
checks what serves and the chain's rows against the registry, opens a plot and a drift report, opens the DAG-run
view, and rolls back through the page's form; the registry then shows the rollback. Screenshots are saved in the
test's temp folder (screenshots/, named in the order they are taken).

Skipped, saying why, only where no Chromium can be installed (`make browser` failed: no apt, no network).
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
import urllib.parse
from pathlib import Path

import pytest

from tests.conftest import REPO_ROOT
from tests.plugins.conftest import CYCLE_RUN_IDS
from tidal.storage import safe_name


pytestmark = [pytest.mark.slow]
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--window-size=1400,1000"]
WAIT_S = 60


def chromium_binaries() -> tuple[str, str]:
    """(chromium, chromedriver), installed through `make browser` when missing; skip only when that fails."""
    def found():
        return shutil.which("chromium"), shutil.which("chromedriver")

    if not all(found()):
        make = subprocess.run(["make", "-C", str(REPO_ROOT), "browser"], capture_output=True, text=True, timeout=900)
        if not all(found()):
            pytest.skip(f"no Chromium: `make browser` could not install Debian's chromium and chromium-driver "
                        f"(rc {make.returncode}): {(make.stderr or make.stdout)[-400:]}")
    return found()


@pytest.fixture
def browser(tmp_path):
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:  # pragma: no cover - the lock pins selenium
        pytest.skip("selenium is not installed: make venv installs the pinned one (requirements.lock)")
    chromium, chromedriver = chromium_binaries()
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in CHROMIUM_FLAGS + [f"--user-data-dir={tempfile.mkdtemp(dir=tmp_path, prefix='chromium-')}"]:
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(chromedriver), options=options)
    driver.screenshots = tmp_path / "screenshots"
    driver.screenshots.mkdir()
    yield driver
    driver.quit()


def shot(driver, name: str) -> Path:
    path = driver.screenshots / f"{len(list(driver.screenshots.iterdir())) + 1:02d}-{name}.png"
    assert driver.save_screenshot(str(path)), path
    return path


def wait(driver, condition, what: str):
    """condition(driver) once truthy; on a timeout, a screenshot and where the browser was."""
    from selenium.common.exceptions import (NoSuchElementException, StaleElementReferenceException,
                                            TimeoutException)
    from selenium.webdriver.support.ui import WebDriverWait

    try:
        return WebDriverWait(driver, WAIT_S, ignored_exceptions=(NoSuchElementException,
                                                                 StaleElementReferenceException)).until(condition)
    except TimeoutException:
        where = driver.execute_script("return [document.URL, document.title, document.body.innerText.slice(0, 500)]")
        # What the page's action forms answered (a trigger that failed says why there), wherever they are on it.
        results = driver.execute_script(
            "return Array.from(document.querySelectorAll('[id$=-result]'), e => e.id + ': ' + e.textContent)")
        shot(driver, "timeout")
        raise AssertionError(f"{what}: not within {WAIT_S} s; the browser shows {where}; "
                             f"action results {results}") from None


def log_in(driver, airflow) -> None:
    from selenium.webdriver.common.by import By

    driver.get(airflow.base + "/")
    wait(driver, lambda d: d.find_element(By.NAME, "username"), "the login form")
    shot(driver, "login")
    driver.find_element(By.NAME, "username").send_keys(airflow.user)
    driver.find_element(By.NAME, "password").send_keys(airflow.password)
    driver.find_element(By.XPATH, "//button[normalize-space()='Sign in']").click()
    wait(driver, lambda d: "/auth/login" not in d.current_url and d.find_element(By.LINK_TEXT, "tidal"),
         "the Airflow home page with the tidal entry")


def enter_frame(driver, title: str) -> None:
    """Into the plugin's iframe, once its page has rendered (body[data-loaded])."""
    from selenium.webdriver.common.by import By

    driver.switch_to.default_content()
    driver.switch_to.frame(wait(driver, lambda d: d.find_element(By.CSS_SELECTOR, f"iframe[title='{title}']"),
                                f"the {title} iframe"))
    loaded = wait(driver, lambda d: d.find_element(By.TAG_NAME, "body").get_attribute("data-loaded"), "the page")
    assert loaded == "true", driver.find_element(By.ID, "tidal").text


def open_tidal(driver) -> None:
    from selenium.webdriver.common.by import By

    driver.switch_to.default_content()
    driver.find_element(By.LINK_TEXT, "tidal").click()
    enter_frame(driver, "tidal")


def chain_rows(driver) -> list[tuple[str, str]]:
    from selenium.webdriver.common.by import By

    return [(row.get_attribute("data-version"), row.get_attribute("data-decision"))
            for row in driver.find_elements(By.CSS_SELECTOR, "#chain tr[data-decision]")]


def expected_rows(registry) -> list[tuple[str, str]]:
    versions = [(mv.version, mv.metadata["promoted_at"]) for mv in registry.versions()]
    rejected = [("", e["at"]) for e in registry.events() if e["action"] == "reject"]
    return [(v, "rejected" if not v else "promoted") for v, _at in sorted(versions + rejected, key=lambda x: x[1],
                                                                           reverse=True)]


def plots_loaded(driver) -> None:
    from selenium.webdriver.common.by import By

    wait(driver, lambda d: all(d.execute_script("return arguments[0].complete && arguments[0].naturalWidth > 0", img)
                               for img in d.find_elements(By.CSS_SELECTOR, ".plots img")), "the four plots")


def open_in_frame(driver, airflow, css: str, check, what: str) -> None:
    """Follow a link of the page inside the iframe, check what it opened, then open the page afresh (the UI keeps
    the iframe's history in its own router, so Back is not the iframe's)."""
    from selenium.webdriver.common.by import By

    plots_loaded(driver)  # the plots change the layout as they arrive: click once it is still
    link = driver.find_element(By.CSS_SELECTOR, css)
    driver.execute_script("arguments[0].scrollIntoView({block: 'center'})", link)
    link.click()
    wait(driver, check, what)
    driver.switch_to.default_content()
    shot(driver, what.replace(" ", "-"))
    driver.get(airflow.base + "/plugin/tidal")
    enter_frame(driver, "tidal")


def test_the_tidal_page_in_chromium(browser, tidal_airflow):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    registry = tidal_airflow.registry()
    log_in(browser, tidal_airflow)
    shot(browser, "airflow-home-with-tidal-entry")
    open_tidal(browser)
    serving = registry.serving()["version"]
    assert browser.find_element(By.ID, "serving-version").text == serving
    assert browser.find_element(By.ID, "serving-reported-version").text == "serving not running"
    assert chain_rows(browser) == expected_rows(registry)
    plots_loaded(browser)
    browser.switch_to.default_content()
    shot(browser, "tidal-page")
    browser.switch_to.frame(browser.find_element(By.CSS_SELECTOR, "iframe[title='tidal']"))

    open_in_frame(browser, tidal_airflow, "#plot-quality",
                  lambda d: d.execute_script("return document.contentType") == "image/png", "quality plot")
    drift_run = safe_name(CYCLE_RUN_IDS[1])
    open_in_frame(browser, tidal_airflow, f"tr[data-run='{drift_run}'] a[data-report='drift.html']",
                  lambda d: d.execute_script("return document.title") == f"tidal drift {CYCLE_RUN_IDS[1]}" and
                  d.find_element(By.TAG_NAME, "h1").text.startswith("Drift:"), "drift report")

    # The rollback form: to the version that does not serve now, with a reason; the page names the DAG run.
    # The form is below the plots, which move it as they arrive: a click computed before the last one loaded can
    # land beside the button (once in a clean-clone run the page then never sent the request). Click once it is
    # still, as open_in_frame does.
    plots_loaded(browser)
    target = next(mv.version for mv in reversed(registry.versions()) if mv.version != serving)
    Select(browser.find_element(By.CSS_SELECTOR, "#rollback-form select[name=to]")).select_by_value(target)
    reason = browser.find_element(By.CSS_SELECTOR, "#rollback-form input[name=reason]")
    reason.send_keys(f"browser drill: back to {target}")
    submit = browser.find_element(By.ID, "rollback-submit")
    browser.execute_script("arguments[0].scrollIntoView({block: 'center'})", submit)
    submit.click()
    run_id = wait(browser, lambda d: d.find_element(By.CSS_SELECTOR, "#rollback-result .dag-run-id").text,
                  "the triggered rollback run")
    browser.execute_script("document.getElementById('rollback-form').scrollIntoView()")
    browser.switch_to.default_content()
    shot(browser, "rollback-triggered")
    assert tidal_airflow.wait_for_run("tidal_rollback", run_id)["state"] == "success"
    assert registry.production().version == target
    last = registry.events()[-1]
    assert (last["action"], last["version"], last["by"]) == ("rollback", target, tidal_airflow.user)

    browser.refresh()
    enter_frame(browser, "tidal")
    assert browser.find_element(By.ID, "serving-version").text == target
    browser.switch_to.default_content()
    shot(browser, "after-rollback")

    # The chain's link to the Airflow run that made v000001 moves the Airflow UI itself (not the iframe) there;
    # that run's page has the DAG-run view as a tab.
    browser.switch_to.frame(browser.find_element(By.CSS_SELECTOR, "iframe[title='tidal']"))
    browser.find_element(By.CSS_SELECTOR, "#chain tr[data-version='v000001'] a.airflow-run").click()
    browser.switch_to.default_content()
    run_page = f"/dags/tidal_incremental/runs/{urllib.parse.quote(CYCLE_RUN_IDS[0], safe='')}"
    wait(browser, lambda d: urllib.parse.unquote(urllib.parse.urlparse(d.current_url).path)
         == urllib.parse.unquote(run_page), "the Airflow UI on the run that made v000001")
    wait(browser, lambda d: d.find_element(By.LINK_TEXT, "tidal run"), "the tidal run tab").click()
    enter_frame(browser, "tidal run")
    assert browser.find_element(By.TAG_NAME, "h1").text == f"tidal run {CYCLE_RUN_IDS[0]}"
    assert {e.get_attribute("data-step") for e in browser.find_elements(By.CSS_SELECTOR, "pre[data-step]")} == \
        {"features", "validate", "drift", "gate", "promote"}
    browser.switch_to.default_content()
    shot(browser, "dag-run-view")
    print(f"screenshots: {browser.screenshots}")
