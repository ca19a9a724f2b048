"""The playground page of `prompttune serve`: served by the app itself, public files only, and in a real (headless)
browser it shows every task and gives the answers the JSON routes give."""

from __future__ import annotations

import os
import re
import shutil
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import pytest

from prompttune import PromptModel, load
from prompttune.backbone import Backbone
from prompttune.serve import ServeEngine

fastapi = pytest.importorskip("fastapi")
from fastapi.testclient import TestClient  # noqa: E402

from prompttune.serve.app import PLAYGROUND, create_app, playground_file  # noqa: E402
from test_serve_generation import GEN_SPECS, _write_generation_artifacts  # noqa: E402
from test_serve_speech import speech_artifacts  # noqa: E402,F401  (fixture)
from test_speech_family import audio_libraries, whisper  # noqa: E402,F401  (fixtures)

SCREENSHOT = Path(__file__).resolve().parent.parent / "test-artifacts" / "playground.png"
HOSTILE_LABEL = '<img src=x onerror="document.title=1">'


@pytest.fixture(scope="module")
def arts(saved_tiny, tmp_path_factory):
    """A one-field and a two-field classification task (the second with a label that is HTML), and a generation task."""
    out = tmp_path_factory.mktemp("playground-artifacts")
    model = saved_tiny("llama")
    PromptModel(Backbone.load(model), "{soft*2} Review: {text} Sentiment: {mask}", {"negative": "bad", "positive": "good"},
                "soft-prompt", seed=1).save(out / "sst")
    PromptModel(Backbone.load(model), "{premise} ? {mask} , {hypothesis}", {"no": "no", HOSTILE_LABEL: "yes"},
                "zero-shot").save(out / "nli")
    gen = _write_generation_artifacts(model, out, {"copy": GEN_SPECS["copy"]})
    return {"sst": out / "sst", "nli": out / "nli", **gen}


def _engine(model_dir, arts) -> ServeEngine:
    eng = ServeEngine(Backbone.load(model_dir), max_wait_ms=2)
    for name, d in arts.items():
        eng.add(d, name=name)
    return eng


# ---- the files, over HTTP ---------------------------------------------------------------------------------------
def test_the_page_its_script_and_style_are_served_with_their_types_and_a_strict_policy(saved_tiny, arts):
    eng = _engine(saved_tiny("llama"), arts)
    with TestClient(create_app(eng)) as c:
        page = c.get("/")
        assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
        assert '<script src="/playground/app.js">' in page.text and 'href="/playground/style.css"' in page.text
        assert "default-src 'self'" in page.headers["content-security-policy"] and page.headers["x-content-type-options"] == "nosniff"
        js, css = c.get("/playground/app.js"), c.get("/playground/style.css")
        assert js.status_code == css.status_code == 200
        assert js.headers["content-type"].startswith("text/javascript") and css.headers["content-type"].startswith("text/css")
        assert js.text == playground_file("app.js")
        for name in ("index.html", "..%2Fapp.py", "../app.py", "missing.js"):  # only the two named files, never a path
            r = c.get(f"/playground/{name}")
            assert r.status_code == 404 and "no route" in r.json()["detail"], name
        assert "/" not in c.get("/openapi.json").json()["paths"]  # the page is not part of the API
    eng.close()


def test_the_shipped_files_load_nothing_from_elsewhere_and_never_write_html():
    texts = {n: playground_file(n) for n in ("index.html", *PLAYGROUND)}
    for name, text in texts.items():
        assert not re.search(r"(https?:)?//[a-z0-9.-]+\.[a-z]{2,}", text, re.I), name  # no CDN, font or analytics
    js = texts["app.js"]
    assert not re.search(r"innerHTML|outerHTML|insertAdjacentHTML|document\.write|eval\(|new Function", js)
    assert "setAttribute(\"style\"" not in js and "style:" not in js  # style attributes would be blocked by the policy


def test_with_an_api_key_the_page_is_public_and_the_routes_it_calls_are_not(saved_tiny, arts):
    eng = _engine(saved_tiny("llama"), {"sst": arts["sst"]})
    with TestClient(create_app(eng, api_key="s3cret")) as c:
        assert c.get("/").status_code == 200 and c.get("/playground/app.js").status_code == 200
        assert c.get("/v1/tasks").status_code == 401 and c.get("/playground/missing.js").status_code == 401
        assert c.get("/v1/tasks", headers={"Authorization": "Bearer s3cret"}).status_code == 200
    eng.close()


# ---- in a browser --------------------------------------------------------------------------------------------------
def _chrome():
    """A headless Chromium driven by selenium, or a skip (a failure where PROMPTTUNE_REQUIRE_BROWSER=1, as in CI)."""
    required = os.environ.get("PROMPTTUNE_REQUIRE_BROWSER") == "1"
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        if required:
            raise
        pytest.skip("selenium is not installed (bash scripts/setup.sh --dev installs it)")
    driver_path = shutil.which("chromedriver")
    browser = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    if not (driver_path and browser):
        if required:
            pytest.fail("PROMPTTUNE_REQUIRE_BROWSER=1 but chromium / chromedriver are not installed (scripts/setup.sh --dev)")
        pytest.skip("no chromium + chromedriver (bash scripts/setup.sh --dev installs them)")
    opts = webdriver.ChromeOptions()
    opts.binary_location = browser
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu", "--window-size=1100,1500"):
        opts.add_argument(arg)
    return webdriver.Chrome(service=Service(driver_path), options=opts)


@pytest.fixture(scope="module")
def browser():
    driver = _chrome()
    driver.set_page_load_timeout(30)
    yield driver
    driver.quit()


@contextmanager
def _server(app):
    import uvicorn

    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="error"))
    th = threading.Thread(target=server.run, daemon=True)
    th.start()
    deadline = time.time() + 20
    while not server.started and time.time() < deadline:
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{server.servers[0].sockets[0].getsockname()[1]}"
    finally:
        server.should_exit = True
        th.join(10)


def _wait(driver, css: str, *, count: int = 1, timeout: float = 20):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, timeout).until(lambda d: (lambda found: found if len(found) >= count else False)(
        d.find_elements(By.CSS_SELECTOR, css)))


def _card(driver, name: str):
    from selenium.webdriver.common.by import By

    return driver.find_element(By.CSS_SELECTOR, f'section.task[data-task="{name}"]')


def _fill_and_run(card, values: dict, *, decoding: dict | None = None):
    from selenium.webdriver.common.by import By

    for field, text in values.items():
        box = card.find_element(By.CSS_SELECTOR, f'textarea[name="{field}"]')
        box.clear()
        box.send_keys(text)
    for name, value in (decoding or {}).items():
        box = card.find_element(By.CSS_SELECTOR, f'input[name="{name}"]')
        box.clear()
        box.send_keys(str(value))
    card.find_element(By.TAG_NAME, "button").click()


def test_the_page_shows_every_task_and_its_answers_are_the_routes_answers(saved_tiny, arts, browser):
    from selenium.webdriver.common.by import By

    eng = _engine(saved_tiny("llama"), arts)
    with _server(create_app(eng)) as url:
        browser.get(url + "/")
        _wait(browser, "section.task", count=3)
        assert browser.title == "prompttune playground"
        assert "3 task(s) on" in browser.find_element(By.ID, "backbone").text
        assert not browser.find_element(By.ID, "key-form").is_displayed() and not browser.find_element(By.ID, "error").is_displayed()
        sst = _card(browser, "sst")
        facts = [f.text for f in sst.find_elements(By.CSS_SELECTOR, ".fact")]
        assert "classification" in facts and "soft-prompt" in facts and "labels: negative, positive" in facts
        assert any(re.fullmatch(r"[\d,]+ trainable parameters", f) for f in facts), facts
        assert sst.find_element(By.CSS_SELECTOR, ".template").text == "{soft*2} Review: {text} Sentiment: {mask}"

        # classification: the label and one bar per label, as POST /v1/tasks/sst/predict answers
        _fill_and_run(sst, {"text": "the film was good"})
        label = _wait(sst, ".result .label")[0].text
        ref = load(arts["sst"]).predict([{"text": "the film was good"}])
        import httpx

        route = httpx.post(f"{url}/v1/tasks/sst/predict", json={"input": "the film was good"}).json()["predictions"][0]
        assert label == route["label"] == ref[0]["label"]
        bars = sst.find_elements(By.CSS_SELECTOR, ".result .bar")
        shown = {b.get_attribute("data-label"): float(b.get_attribute("data-p")) for b in bars}
        assert shown == pytest.approx(route["probabilities"], abs=1e-9) and sum(shown.values()) == pytest.approx(1.0, abs=1e-6)
        for b in bars:  # each bar's fill is its probability's share of the track
            fill, track = b.find_element(By.CSS_SELECTOR, ".fill"), b.find_element(By.CSS_SELECTOR, ".track")
            share = fill.size["width"] / track.size["width"]
            assert share == pytest.approx(float(b.get_attribute("data-p")), abs=0.02)
            assert b.find_element(By.CSS_SELECTOR, ".pct").text == f"{100 * float(b.get_attribute('data-p')):.1f}%"

        # two fields, and a label that is HTML: shown as text, never run
        nli = _card(browser, "nli")
        assert [t.get_attribute("name") for t in nli.find_elements(By.TAG_NAME, "textarea")] == ["premise", "hypothesis"]
        _fill_and_run(nli, {"premise": "a good film", "hypothesis": "it was bad"})
        _wait(nli, ".result .bar", count=2)
        route = httpx.post(f"{url}/v1/tasks/nli/predict", json={"input": {"premise": "a good film", "hypothesis": "it was bad"}}).json()
        assert nli.find_element(By.CSS_SELECTOR, ".result .label").text == route["predictions"][0]["label"]
        assert HOSTILE_LABEL in [b.get_attribute("data-label") for b in nli.find_elements(By.CSS_SELECTOR, ".bar")]
        assert not browser.find_elements(By.CSS_SELECTOR, "main img") and browser.title == "prompttune playground"

        # generation: the text POST /v1/tasks/copy/generate gives with the same decoding settings
        copy = _card(browser, "copy")
        assert "generates tgt" in copy.text
        _fill_and_run(copy, {"src": "good film"}, decoding={"max_new_tokens": 4, "num_beams": 2})
        out = _wait(copy, ".result .output")[0].text
        route = httpx.post(f"{url}/v1/tasks/copy/generate", json={"input": "good film", "max_new_tokens": 4, "num_beams": 2}).json()
        assert out == route["outputs"][0]["text"].strip() == load(arts["copy"]).generate(["good film"], max_new_tokens=4, num_beams=2)[0].strip()
        assert "max_new_tokens=4, num_beams=2" in copy.find_element(By.CSS_SELECTOR, ".result .muted").text

        # a request the server refuses: its error, with the fix, on the page; the page keeps working
        _fill_and_run(copy, {"src": "good film"}, decoding={"num_beams": 0})
        error = _wait(browser, "#error:not([hidden])")[0]
        assert "copy:" in error.text and "num_beams" in error.text
        assert not browser.find_elements(By.CSS_SELECTOR, "section.task[data-task='copy'] .result .output")

        _fill_and_run(sst, {"text": "bad plot"})
        from selenium.webdriver.support.ui import WebDriverWait

        WebDriverWait(browser, 20).until(lambda d: not d.find_element(By.ID, "error").is_displayed())
        _wait(sst, ".result .label")
        SCREENSHOT.parent.mkdir(exist_ok=True)
        browser.save_screenshot(str(SCREENSHOT))
    eng.close()


def test_a_server_with_an_api_key_asks_for_it_and_then_shows_the_tasks(saved_tiny, arts, browser):
    from selenium.webdriver.common.by import By

    eng = _engine(saved_tiny("llama"), {"sst": arts["sst"]})
    with _server(create_app(eng, api_key="s3cret")) as url:
        browser.get(url + "/")
        form = _wait(browser, "#key-form:not([hidden])")[0]
        assert form.is_displayed()
        assert "needs an API key" in browser.find_element(By.ID, "error").text and not browser.find_elements(By.CSS_SELECTOR, "section.task")
        box = form.find_element(By.ID, "api-key")
        box.send_keys("wrong")
        browser.find_element(By.ID, "api-key-save").click()
        _wait(browser, "#error:not([hidden])")
        from selenium.webdriver.support.ui import WebDriverWait

        WebDriverWait(browser, 20).until(lambda d: "refused" in d.find_element(By.ID, "error").text)
        box.clear()
        box.send_keys("s3cret")
        browser.find_element(By.ID, "api-key-save").click()
        _wait(browser, "section.task")
        assert not browser.find_element(By.ID, "key-form").is_displayed()
        _fill_and_run(_card(browser, "sst"), {"text": "a good film"})  # the key travels with predict too
        assert _wait(browser, "section.task .result .label")[0].text in ("negative", "positive")
        browser.execute_script("sessionStorage.clear()")
    eng.close()


def test_a_speech_task_takes_a_sound_file_and_answers_as_its_route_does(whisper, speech_artifacts, audio_libraries, browser, tmp_path):
    import base64

    import httpx
    import soundfile
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    from test_speech_family import CLIPS, SR

    clip = tmp_path / "clip.wav"
    soundfile.write(clip, CLIPS[1]["audio"], SR, subtype="FLOAT")
    eng = ServeEngine(Backbone.load(str(whisper)), max_wait_ms=2)
    eng.add(speech_artifacts["tone"], name="tone")
    with _server(create_app(eng)) as url:
        browser.get(url + "/")
        _wait(browser, "section.task")
        card = _card(browser, "tone")
        assert not card.find_elements(By.TAG_NAME, "textarea")
        box = card.find_element(By.CSS_SELECTOR, 'input[type="file"][name="audio"]')
        card.find_element(By.TAG_NAME, "button").click()  # no file chosen yet: said on the page, nothing sent
        WebDriverWait(browser, 20).until(lambda d: "choose a sound file" in d.find_element(By.ID, "error").text)
        box.send_keys(str(clip))
        card.find_element(By.TAG_NAME, "button").click()
        label = _wait(card, ".result .label")[0].text
        route = httpx.post(f"{url}/v1/tasks/tone/predict",
                           json={"input": base64.b64encode(clip.read_bytes()).decode()}).json()["predictions"][0]
        assert label == route["label"]
        shown = {b.get_attribute("data-label"): float(b.get_attribute("data-p")) for b in card.find_elements(By.CSS_SELECTOR, ".bar")}
        assert shown == pytest.approx(route["probabilities"], abs=1e-9)
        assert not browser.find_element(By.ID, "error").is_displayed()
    eng.close()
