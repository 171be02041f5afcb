"""What an operator sees, in a real (headless) browser against real processes: the admin's
order page tells the order's story (a bar per step attempt, retries visible, the timeline
with links to each task), and Flower, behind its proxy, finds an order's tasks by the
order's id. The screenshots land in docs/screenshots/, where the README shows them.

Needs Debian's chromium and chromium-driver; the test installs them when they are missing."""

import base64
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

from tests.factories import ProductFactory, UserFactory, order_payload
from tests.helpers import FAST_TIMINGS, place_as_new_customer, wait_for, wait_for_orders

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]

SCREENSHOTS = Path(__file__).resolve().parent.parent / "docs" / "screenshots"


def _ensure_chromium() -> None:
    if shutil.which("chromium") and shutil.which("chromedriver"):
        return
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    subprocess.run(["apt-get", "update", "-qq"], check=True, env=env, timeout=600)
    subprocess.run(
        ["apt-get", "install", "-y", "-qq", "chromium", "chromium-driver"],
        check=True,
        env=env,
        timeout=900,
        capture_output=True,
    )


@pytest.fixture(scope="module")
def browser():
    _ensure_chromium()
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    profile = tempfile.mkdtemp(prefix="chromium-")
    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which("chromium")
    # As root, headless, and with nothing that reaches for the network on its own.
    for flag in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--window-size=1400,1800",
        f"--user-data-dir={profile}",
    ):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(shutil.which("chromedriver")), options=options)
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


def _shoot(driver, name: str) -> None:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    height = driver.execute_script("return document.body.scrollHeight")
    driver.set_window_size(1400, min(max(height, 900), 3000))
    driver.save_screenshot(str(SCREENSHOTS / name))


def test_an_operator_reads_an_orders_story_in_the_admin_and_flower(stack_factory, browser):
    from selenium.webdriver.common.by import By

    ProductFactory(sku="MUG-001", price="12.50", stock=10)
    UserFactory(username="operator", is_staff=True, is_superuser=True, password="op-pass-123")
    stack = stack_factory(env=FAST_TIMINGS, workers=1, beat=True)
    flower = stack.start_flower(credentials="ops:ops-pass")
    order_id = place_as_new_customer(
        stack.web_url, order_payload(("MUG-001", 2), token="tok_flaky")
    )
    [order] = wait_for_orders([order_id], timeout=60)
    assert order.status == "completed"

    # The admin, logged in through its own login page.
    browser.get(f"{stack.web_url}/admin/login/?next=/admin/orders/order/{order_id}/change/")
    browser.find_element(By.NAME, "username").send_keys("operator")
    browser.find_element(By.NAME, "password").send_keys("op-pass-123")
    browser.find_element(By.CSS_SELECTOR, "input[type=submit]").click()
    wait_for(lambda: "order-waterfall" in browser.page_source, timeout=20, what="the order page")
    bars = browser.find_elements(By.CSS_SELECTOR, "svg.order-waterfall rect")
    rows = browser.find_elements(By.CSS_SELECTOR, "table.order-timeline tbody tr")
    text = browser.find_element(By.CSS_SELECTOR, "table.order-timeline").text
    _shoot(browser, "admin-order.png")

    assert len(bars) == len(rows) == order.events.count()
    assert text.count("retrying") == 2 and "completed" in text  # tok_flaky: two 503s
    assert len(browser.find_elements(By.CSS_SELECTOR, "a[href*='/task/']")) >= 4  # each step

    # Flower, through the proxy: its task list, searched by the order's id.
    browser.execute_cdp_cmd("Network.enable", {})
    token = base64.b64encode(b"ops:ops-pass").decode()
    browser.execute_cdp_cmd(
        "Network.setExtraHTTPHeaders", {"headers": {"Authorization": f"Basic {token}"}}
    )
    browser.get(f"{flower}/tasks")
    search = wait_for(
        lambda: browser.find_elements(By.CSS_SELECTOR, "input[type=search]"),
        timeout=20,
        what="Flower's task search",
    )[0]
    search.send_keys(order_id)
    wait_for(
        lambda: (
            "orders.send_confirmation_email" in browser.page_source
            and "orders.charge_payment" in browser.page_source
        ),
        timeout=30,
        what="the order's tasks in Flower",
    )
    _shoot(browser, "flower-tasks.png")
    # The order's four tasks, and only those, out of all Flower has seen (sweeps included).
    assert "Showing 1 to 4 of 4 tasks (filtered from" in browser.page_source
