"""The web page in a real browser: headless Chromium uploads a demo ECG record, asks, and reads the answer, which
equals predict.py's; the page loads nothing from outside the server; no upload is left on disk.

Runs where Debian's ``chromium`` and ``chromium-driver`` are installed (.ci/run installs them), else skips saying so.
``MMMED_SERVE_CKPT`` and ``MMMED_SERVE_RECORD`` point it at another model and record (the README's screenshot is
the ECG demo's run: docs/serve.md), ``MMMED_SERVE_SCREENSHOT`` says where to save the page's screenshot.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

import predict as predict_script
from mmmed.infer.inference import load
from tests.conftest import compose_app
from tests.live_server import live_server

CHROMIUM, CHROMEDRIVER = shutil.which("chromium"), shutil.which("chromedriver")
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not (CHROMIUM and CHROMEDRIVER),
                       reason="Debian's chromium and chromium-driver are not installed "
                              "(apt-get install -y chromium chromium-driver; .ci/run installs them)"),
]
QUESTION = "What rhythm does this ECG show?"
WAIT_S = 300  # the page's answer on a loaded 2-core machine: far above the seconds it takes


def chromium(tmp_path: Path):
    """Headless Debian Chromium under Selenium, with the flags that keep it off the (closed) network."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--disable-dev-shm-usage", "--window-size=1400,1000", f"--user-data-dir={tmp_path / 'profile'}"):
        options.add_argument(flag)
    return webdriver.Chrome(options=options, service=Service(executable_path=CHROMEDRIVER))


@pytest.fixture
def model_and_record(tiny_ecg_run) -> tuple[Path, Path]:
    if os.environ.get("MMMED_SERVE_CKPT"):
        return Path(os.environ["MMMED_SERVE_CKPT"]), Path(os.environ["MMMED_SERVE_RECORD"])
    run, root = tiny_ecg_run
    return run, sorted(p.with_suffix("") for p in (root / "records100").rglob("*_lr.hea"))[0]


def test_the_page_answers_an_uploaded_ecg_as_predict_py_does(model_and_record, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ready
    from selenium.webdriver.support.ui import WebDriverWait

    ckpt, record = model_and_record
    predict_cfg = compose_app("predict", [f"ckpt={ckpt}", f"input={record}", f"question={QUESTION}", "pictures=false"],
                              tmp_path / "predict", resolve=True)
    [expected] = predict_script.predict(predict_cfg)
    cfg = compose_app("serve", [f"ckpt={ckpt}", f"private_dir={tmp_path}"], tmp_path / "hydra", resolve=True)
    with live_server(cfg, load(ckpt)) as (url, server):
        browser = chromium(tmp_path)
        try:
            wait = WebDriverWait(browser, WAIT_S)
            browser.get(url)
            upload = wait.until(ready.presence_of_element_located((By.CSS_SELECTOR, "#files input[type=file]")))
            upload.send_keys("\n".join(str(record.with_suffix(s)) for s in (".hea", ".dat")))
            wait.until(lambda b: len(b.find_elements(By.CSS_SELECTOR, "#files .file-name, #files tr.file")) >= 2)
            question = browser.find_element(By.CSS_SELECTOR, "#question textarea")
            question.clear()
            question.send_keys(QUESTION)
            browser.find_element(By.CSS_SELECTOR, "#ask").click()
            answer = browser.find_element(By.CSS_SELECTOR, "#answer textarea")
            wait.until(lambda b: answer.get_attribute("value"))
            shown = answer.get_attribute("value")
            wait.until(lambda b: b.find_elements(By.CSS_SELECTOR, "#picture img"))
            resources = browser.execute_script(
                "return performance.getEntriesByType('resource').map(e => e.name)"
                ".concat([location.href])")
            browser.save_screenshot(os.environ.get("MMMED_SERVE_SCREENSHOT") or str(tmp_path / "serve.png"))
        finally:
            browser.quit()
        # Gradio's multipart parser leaves an empty placeholder file per upload (its data went to the copy the page
        # deleted); delete_cache removes those. No file with content, and none named after an upload, may stay.
        left = [(p.name, p.stat().st_size) for p in server.private_dir.rglob("*") if p.is_file()]
    assert shown == (expected["answer"] or "(no answer found)")
    outside = [r for r in resources if not r.startswith((url, "data:", "blob:"))]
    assert outside == []  # no CDN, no analytics, no fonts from elsewhere
    assert [(name, size) for name, size in left if size or name.startswith(record.name)] == []
