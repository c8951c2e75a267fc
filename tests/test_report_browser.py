"""The HTML report in a real headless Chromium (Debian's chromium + chromium-driver;
`tests/run` installs them when missing). Without them this test fails and says what to install."""

import shutil

import pytest

from harness.cli import main

CHROMIUM, DRIVER = shutil.which("chromium"), shutil.which("chromedriver")


@pytest.fixture
def browser(tmp_path):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    if not (CHROMIUM and DRIVER):
        pytest.fail("the HTML report test needs Debian's chromium and chromium-driver: "
                    "apt-get install chromium chromium-driver")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 f"--user-data-dir={tmp_path / 'profile'}", "--window-size=1400,1000"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(DRIVER), options=options)
    yield driver
    driver.quit()


def test_report_page_has_the_rows_loads_every_plot_and_sorts(logged_cells, tmp_path, browser):
    from selenium.webdriver.common.by import By

    _, _, uri, _, _ = logged_cells
    out = tmp_path / "report"
    assert main(["report", "--experiment", "checked", "--tracking-uri", uri, "--out", str(out)]) == 0
    browser.get((out / "report.html").as_uri())
    rows = browser.find_elements(By.CSS_SELECTOR, "#results tbody tr")
    classifiers = [row.find_elements(By.TAG_NAME, "td")[3].text for row in rows]
    assert sorted(classifiers) == ["query", "softmax"]
    images = browser.find_elements(By.TAG_NAME, "img")
    assert len(images) == 6  # five plots (the reliability diagram included) and the predictions panel
    assert all(browser.execute_script("return arguments[0].complete && arguments[0].naturalWidth", img) > 0
               for img in images)
    panel = browser.find_element(By.CSS_SELECTOR, "#predictions ~ figure img[alt='predictions.png']")
    width, height = browser.execute_script("return [arguments[0].naturalWidth, arguments[0].naturalHeight]", panel)
    assert height > width  # six rows of image | ground truth | softmax | query
    header = browser.find_elements(By.CSS_SELECTOR, "#results th")[3]  # classifier column
    header.click()
    first = [r.find_elements(By.TAG_NAME, "td")[3].text for r in browser.find_elements(By.CSS_SELECTOR, "#results tbody tr")]
    header.click()
    second = [r.find_elements(By.TAG_NAME, "td")[3].text for r in browser.find_elements(By.CSS_SELECTOR, "#results tbody tr")]
    assert first == ["query", "softmax"] and second == ["softmax", "query"]  # ascending, then descending
