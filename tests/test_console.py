"""The web console at /ui, in a real browser: Debian's chromium, headless, driven by Selenium through
Debian's chromedriver, against a real daemon with real agents. Every wait is on the page or the log
(WebDriverWait polls the DOM), never a fixed sleep."""

from __future__ import annotations

import hashlib
import json
import os
import re
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from lazarus_bus import events as ev
from tests.conftest import Cli
from tests.support import Up, wait

CHROMIUM, DRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage", "--window-size=1280,900"]
SHOTS = os.environ.get("LAZARUS_SCREENSHOTS", "")  # a directory: the main pages are saved there (docs/)

pytestmark = pytest.mark.skipif(not (os.path.exists(CHROMIUM) and os.path.exists(DRIVER)),
                                reason="needs Debian's chromium and chromium-driver (.ci/run installs them)")


@pytest.fixture
def browser() -> Iterator[Any]:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in FLAGS:
        options.add_argument(flag)
    service = Service(DRIVER, popen_kw={"start_new_session": True})  # its own group, killed at the end
    driver = webdriver.Chrome(service=service, options=options)
    driver.set_page_load_timeout(60)
    try:
        yield driver
    finally:
        try:
            driver.quit()
        finally:
            proc = service.process
            if proc is not None and proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)


def until(driver: Any, check: Any, what: str, timeout: float = 60) -> Any:
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, timeout, poll_frequency=0.1).until(lambda d: check(d), message=what)


def row(driver: Any, agent: str) -> Any:
    from selenium.webdriver.common.by import By

    found = driver.find_elements(By.CSS_SELECTOR, f"#cells tr.agent[data-agent='{agent}']")
    return found[0] if found else None


def health(driver: Any, agent: str) -> str | None:
    from selenium.common.exceptions import StaleElementReferenceException

    try:
        r = row(driver, agent)
        return r.get_attribute("data-health") if r is not None else None
    except StaleElementReferenceException:  # swapped by htmx between find and read
        return None


def shot(driver: Any, name: str) -> None:
    if SHOTS:
        driver.save_screenshot(str(Path(SHOTS) / name))


def test_fleet_death_approval_and_revival_without_a_reload(up: Up, cli: Cli, browser: Any) -> None:
    from selenium.webdriver.common.by import By

    up.config('[resurrection]\nmode = "ask"\n[approvals]\ntimeout = 600\n')
    cli.ok("cell", "create", "forge", "--mission", "write the release notes")
    cli.ok("agent", "invite", "forge", "w", "--role", "write", "--cmd", "sleep 600")
    cli.ok("agent", "invite", "forge", "scout", "--role", "read")  # unsupervised, never seen: unknown
    up.start("--http", "127.0.0.1:0")
    cell = up.cell()
    wait(lambda: cell.refresh().agents["w"].phase == "running", "the start")
    first = cell.refresh().agents["w"].pid

    browser.get(up.http + "/ui")
    until(browser, lambda d: health(d, "w") == "healthy", "w healthy on the fleet page")
    assert health(browser, "scout") == "unknown"
    assert row(browser, "w").find_element(By.CSS_SELECTOR, "td.pid").text == str(first)
    browser.execute_script("window.__same_page = 1")  # gone if the page were loaded again

    os.kill(first, signal.SIGKILL)
    until(browser, lambda d: health(d, "w") == "dead", "w dead, shown without a reload")
    need = until(browser, lambda d: d.find_elements(By.CSS_SELECTOR, "#needs-you li.approval[data-agent='w']"),
                 "the approval in 'needs you'")[0]
    countdown = need.find_element(By.CSS_SELECTOR, ".countdown").text
    assert re.fullmatch(r"(10m|9m|\d+s) left before deny", countdown), countdown
    assert browser.execute_script("return window.__same_page") == 1
    shot(browser, "console-fleet.png")

    need.find_element(By.CSS_SELECTOR, "button.approve").click()
    until(browser, lambda d: health(d, "w") == "healthy" and row(d, "w").find_element(
        By.CSS_SELECTOR, "td.pid").text not in ("-", str(first)), "w revived after Approve")
    approved = [e for e in cell.log.read() if isinstance(e, ev.RevivalApproved)]
    assert len(approved) == 1 and approved[0].by == "operator" and approved[0].note == "from the console"
    assert cell.refresh().agents["w"].attempt == 2
    assert not browser.find_elements(By.CSS_SELECTOR, "#needs-you li.approval")


def test_cell_page_timeline_live_events_and_log_tail(up: Up, cli: Cli, browser: Any) -> None:
    from selenium.webdriver.common.by import By

    up.config()
    cid = cli.ok("cell", "create", "forge").strip()
    script = "import time\nprint('hello from w', flush=True)\ntime.sleep(600)\n"
    cli.ok("agent", "invite", "forge", "w", "--role", "write", "--cmd", f"python3 -c \"{script}\"")
    cli.ok("agent", "invite", "forge", "scout", "--role", "read")
    up.start("--http", "127.0.0.1:0")
    cell = up.cell()
    wait(lambda: cell.refresh().agents["w"].phase == "running", "the start")

    browser.get(f"{up.http}/ui/cells/{cid}")
    until(browser, lambda d: d.execute_script(
        "var i = document.getElementById('timeline-img'); return i.complete && i.naturalWidth > 0"),
        "the timeline SVG drawn")
    until(browser, lambda d: d.find_elements(By.CSS_SELECTOR, "#events li[data-type='agent.spawned']"),
          "the backlog of events over SSE")
    seq = cli.ok("heartbeat", "forge", "scout", "--cycle", "3").strip()
    until(browser, lambda d: d.find_elements(By.CSS_SELECTOR, f"#events li[data-seq='{seq}']"),
          "a new event appended live")
    item = browser.find_element(By.CSS_SELECTOR, f"#events li[data-seq='{seq}']")
    assert "agent.heartbeat" in item.text and "by scout" in item.text
    shot(browser, "console-cell.png")

    browser.get(f"{up.http}/ui/cells/{cid}/agents/w/log")
    until(browser, lambda d: "hello from w" in d.find_element(By.ID, "log-text").text, "the log tail")
    shot(browser, "console-log.png")


def test_a_tokens_file_puts_the_console_behind_a_login(up: Up, cli: Cli, browser: Any, tmp_path: Path) -> None:
    from selenium.webdriver.common.by import By

    tokens = tmp_path / "tokens.toml"
    tokens.write_text("".join(f'[[token]]\nsha256 = "{hashlib.sha256(t.encode()).hexdigest()}"\n'
                              f'identity = "{who}"\n' for t, who in (("op-tok", "operator"), ("aud-tok", "auditor"))))
    tokens.chmod(0o600)
    up.config(f'[http]\ntokens_file = "{tokens}"\n')
    cli.ok("cell", "create", "forge")
    cli.ok("agent", "invite", "forge", "w", "--role", "write", "--cmd", "sleep 600")
    up.start("--http", "127.0.0.1:0")
    wait(lambda: up.cell().refresh().agents["w"].phase == "running", "the start")

    browser.get(up.http + "/ui")
    until(browser, lambda d: d.current_url.endswith("/ui/login"), "sent to the login form")
    assert not browser.find_elements(By.CSS_SELECTOR, "#cells")
    shot(browser, "console-login.png")
    browser.find_element(By.ID, "token").send_keys("wrong")
    browser.find_element(By.ID, "login").click()
    until(browser, lambda d: d.find_elements(By.ID, "login-error"), "a wrong token refused")
    browser.find_element(By.ID, "token").send_keys("op-tok")
    browser.find_element(By.ID, "login").click()
    until(browser, lambda d: health(d, "w") == "healthy", "the fleet, once logged in")
    # the API is unchanged: without a bearer token it still answers 401, cookie or not
    import urllib.error
    import urllib.request

    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(up.http + "/cells", timeout=30)
    assert refused.value.code == 401


def test_an_agent_over_its_budget_is_raised_from_the_console(up: Up, cli: Cli, browser: Any) -> None:
    from selenium.webdriver.common.by import By

    up.config('[resurrection]\nmode = "yes"\n[budget]\nmax_cost = 1.0\n')
    cli.ok("cell", "create", "forge")
    usage = json.dumps({"agent": "w", "cost": 1.2})
    (up.root_dir.parent / "spend.sh").write_text(  # spends past the cap on its first run only
        f"[ -e spent ] || {' '.join(cli.argv('emit'))} forge agent.usage --by w --data '{usage}'\n"
        "touch spent\nexec sleep 600\n")
    cli.ok("agent", "invite", "forge", "w", "--role", "write", "--cmd", f"sh {up.root_dir.parent / 'spend.sh'}")
    up.start("--http", "127.0.0.1:0")
    cell = up.cell()
    wait(lambda: cell.refresh().agents["w"].budget_exceeded == "cost", "the agent crosses the cap", timeout=90)

    browser.get(up.http + "/ui")
    need = until(browser, lambda d: d.find_elements(By.CSS_SELECTOR, "#needs-you li.budget[data-agent='w']"),
                 "the exceeded budget in 'needs you'")[0]
    assert "cost cap" in need.text and "/1 cost" in need.text
    need.find_element(By.CSS_SELECTOR, "button.raise").click()
    raised = wait(lambda: [e for e in cell.log.read() if isinstance(e, ev.BudgetRaised)], "budget.raised")
    assert raised[0].by == "operator" and raised[0].cost == 1.0 and raised[0].note == "from the console"
    until(browser, lambda d: not d.find_elements(By.CSS_SELECTOR, "#needs-you li.budget"), "nothing more to raise")
    assert cell.refresh().agents["w"].budget_exceeded is None
