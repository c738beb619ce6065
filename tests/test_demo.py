"""demo.py: the page's functions on a barely trained run (the plumbing, not the quality), its one-line errors, then
the page itself in a headless Chromium driven by selenium (Debian's chromium and chromedriver: nothing is downloaded):
it loads, draws a typed caption, answers a question about a toy scene, and imagines a W/A/S/D walk.

    python tests/test_demo.py OUT_DIR assets/demo.png     # the README's screenshot, through the same browser steps
"""
import base64
import io
import os
import shutil
import socket
import sys
import time
from types import SimpleNamespace

import numpy as np
import pytest
import torch

if __name__ == "__main__":   # run as a script (the screenshot): the repository's root on the path, as conftest.py does
    sys.path[:0] = [os.path.dirname(os.path.dirname(os.path.abspath(__file__)))]
import demo  # noqa: E402
import plan  # noqa: E402
import train  # noqa: E402
from data import parse_actions  # noqa: E402

CAPTION = "a big red circle at the top left"


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """One step of training on every task the page shows, navigation included, so one run serves all four tabs. Its
    flow head is then drawn at random: still near its zero start, it would draw the same picture for any caption."""
    d = tmp_path_factory.mktemp("run")
    train.main(["--n_layer=1", "--d_model=32", "--n_head=2", "--n_kv_head=1", "--seq_len=128", "--batch_size=2",
                "--image_size=16", "--patch_size=8", "--max_shapes=1", "--video_frames=2", "--eval_samples=1",
                "--eval_iters=1", "--sample_steps=1", "--max_iters=1", "--eval_interval=1", "--device=cpu",
                "--mixture={'text': 0.2, 'caption_to_image': 0.2, 'image_to_caption': 0.2, 'video': 0.2, "
                "'navigation': 0.2}", f"--out_dir={d}"])
    ckpt = torch.load(d / "ckpt.pt", weights_only=False)
    head = ckpt["model"]["flow_head.weight"]
    ckpt["model"]["flow_head.weight"] = 0.1 * torch.randn(head.shape, generator=torch.Generator().manual_seed(0))
    torch.save(ckpt, d / "ckpt.pt")
    return str(d)


@pytest.fixture(scope="module")
def runs(run):
    return demo.load(SimpleNamespace(out_dir=run, nav_out_dir=run, device="cpu"))


def test_each_tab_returns_pictures_and_text(runs):
    main, nav = runs
    size = 16 * demo.SCALE                                # 16 px pictures, enlarged for the page
    a = demo.caption_to_image(main, CAPTION, seed=1, steps=3)
    assert a.shape == (size, size, 3) and a.dtype == np.uint8 and a.std() > 0
    assert (demo.caption_to_image(main, CAPTION, seed=1, steps=3) == a).all()   # a seed gives its picture again
    for other in (dict(seed=2), dict(caption="a small blue square at the center"), dict(steps=4), dict(guidance=1.0)):
        assert (demo.caption_to_image(main, **{"caption": CAPTION, "seed": 1, "steps": 3, **other}) != a).any()
    picture, caption = demo.toy_scene(main, seed=3)
    assert picture.shape == (size, size, 3) and caption.startswith("a ")
    for question in ("", "how many shapes are there?"):
        text = demo.image_to_text(main, picture, question)
        assert isinstance(text, str) and text
    odd = np.full((40, 30, 4), 200, np.uint8)            # an upload: RGBA, not square, not 16 px
    assert demo.image_to_text(main, odd, "what color is the circle?")
    frames = demo.video(main, seed=0, context_frames=1, new_frames=2, steps=2)
    assert frames.shape == (2 * 18 * demo.SCALE // 2, 3 * 18 * demo.SCALE // 2, 3)   # 2 rows of 3 framed frames
    true_video, continued = np.split(frames, 2)          # the same first (context) frame, then different ones
    w = 18 * demo.SCALE // 2
    assert (true_video[:, :w] == continued[:, :w]).all() and (true_video[:, w:] != continued[:, w:]).any()
    walk, read = demo.navigate(nav, "w w a", steps=1)
    assert walk.shape == (2 * 18 * demo.SCALE // 2, 7 * 18 * demo.SCALE // 2, 3)    # 4 context + 3 imagined
    assert read == "dx=+0.50 dy=+0.00 dyaw=+0.00 | dx=+0.50 dy=+0.00 dyaw=+0.00 | dx=+0.20 dy=+0.00 dyaw=+0.50"
    # top: the context, then the model's frames; bottom: the same context, then the simulator's frames
    ep = plan.episode(0, demo.ROLLOUT_HORIZON, 16, nav.cfg.nav_view)
    truth = plan.true_frames(ep["maze"], ep["start"], np.array(parse_actions("w w a")), 16, nav.cfg.nav_view)
    top, bottom = np.split(walk, 2)
    w = 18 * demo.SCALE // 2
    assert (bottom == demo.sheet([np.concatenate([ep["context"], truth])])).all()
    assert (top[:, :4 * w] == bottom[:, :4 * w]).all() and (top[:, 4 * w:] != bottom[:, 4 * w:]).any()
    assert demo.navigate(nav, "")[0].shape[1] == 4 * w   # no actions yet: the context alone


def test_clear_errors(run, runs, tmp_path, monkeypatch):
    main, nav = runs
    for call, message in ((lambda: demo.navigate(nav, "w x"), "actions: cannot read action 'w x'"),
                          (lambda: demo.navigate(nav, "w " * 17), "17 actions: at most 16"),
                          (lambda: demo.navigate(nav, "w", episode_index=-1), "episode -1: held-out episodes are "
                                                                              "numbered from 0"),
                          (lambda: demo.image_to_text(main, None), "no picture"),
                          (lambda: demo.caption_to_image(main, "a red circle " * 80), "needs .* positions but the "
                                                                                     "model was trained on 128"),
                          (lambda: demo.video(main, new_frames=0), "new_frames must be >= 1")):
        with pytest.raises(ValueError, match=message) as e:
            call()
        assert "\n" not in str(e.value)
    # a missing navigation run: its tab says why, the others work
    main, nav = demo.load(SimpleNamespace(out_dir=run, nav_out_dir=str(tmp_path / "nothing"), device="cpu"))
    with pytest.raises(ValueError, match=r"No model for --nav_out_dir=.*nothing: no checkpoint at .*nothing"):
        demo.navigate(nav, "w")
    assert demo.caption_to_image(main, CAPTION, steps=1).shape[-1] == 3
    with pytest.raises(SystemExit, match="No model for --out_dir=.*; No model for --nav_out_dir="):
        demo.load(SimpleNamespace(out_dir=str(tmp_path / "a"), nav_out_dir=str(tmp_path / "b"), device="cpu"))
    monkeypatch.setitem(sys.modules, "gradio", None)     # as if not installed: import gradio raises ImportError
    with pytest.raises(SystemExit, match=r"demo.py needs gradio, an optional dependency: pip install gradio$"):
        demo.main([f"--out_dir={run}"])


# ----------------------------------------------------------------------------------------------------------------
# The page in a real browser.

def chromium():
    """A headless Chromium under selenium, from the system's chromium and chromedriver (.ci/run installs Debian's);
    skipped without them, except in CI, where this test must run."""
    pytest.importorskip("gradio")
    pytest.importorskip("selenium")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    binary = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    driver = shutil.which("chromedriver")
    if not (binary and driver):
        why = "no chromium and chromedriver on PATH (apt-get install chromium chromium-driver)"
        pytest.fail(why) if os.environ.get("CI") else pytest.skip(why)
    options = webdriver.ChromeOptions()
    options.binary_location = binary
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1000,900"):
        options.add_argument(arg)   # no sandbox: CI runs as root, where Chromium's sandbox refuses to start
    return webdriver.Chrome(options=options, service=Service(driver))


def start_page(out_dir, nav_out_dir):
    """demo.py's page on 127.0.0.1 at a free port, its server in a thread: (ui, url)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    c = demo.configure(demo.settings(vars(demo)), [f"--out_dir={out_dir}", f"--nav_out_dir={nav_out_dir}",
                                                   f"--port={port}", "--device=cpu"])
    return demo.serve(c, block=False)


def shown(browser, css):
    """The element once the page shows it (a tab's content is in the page before it is shown)."""
    from selenium.webdriver.common.by import By
    return wait(browser, lambda: next((e for e in browser.find_elements(By.CSS_SELECTOR, css) if e.is_displayed()),
                                      None))


def wait(browser, what, timeout=60):
    """What the function returns once it is an array or truthy (it is retried; the page works in the background)."""
    from selenium.webdriver.support.ui import WebDriverWait
    found = []
    WebDriverWait(browser, timeout, poll_frequency=0.2).until(
        lambda b: (v := what()) is not None and (isinstance(v, np.ndarray) or bool(v)) and not found.append(v))
    return found[-1]


def shown_picture(browser, elem_id):
    """The pixels of the picture the page shows in #elem_id, as the browser decoded them: drawn onto a canvas and
    read back as PNG (lossless, as the page sends it); None while there is none."""
    url = browser.execute_script(
        "const img = document.querySelector(arguments[0]);"
        "if (!img || !img.complete || !img.naturalWidth) return null;"
        "const c = document.createElement('canvas'); c.width = img.naturalWidth; c.height = img.naturalHeight;"
        "c.getContext('2d').drawImage(img, 0, 0); return c.toDataURL('image/png');", f"#{elem_id} img")
    from PIL import Image
    return None if url is None else np.asarray(Image.open(io.BytesIO(base64.b64decode(url.split(",")[1]))).convert(
        "RGB"))


def draw_in_page(browser, url, caption):
    """Open the page, type the caption, press Draw: the pixels the page then shows."""
    from selenium.webdriver.common.by import By
    browser.get(url)
    box = shown(browser, "#caption textarea")
    box.clear()
    box.send_keys(caption)
    shown(browser, "#draw").click()
    return wait(browser, lambda: shown_picture(browser, "drawn"))


@pytest.mark.slow
def test_the_page_in_a_browser(run, runs):
    from selenium.webdriver.common.by import By
    browser = chromium()
    ui, url = start_page(run, run)
    try:
        t0 = time.time()
        pixels = draw_in_page(browser, url, "a small blue square at the center")
        assert browser.title == demo.TITLE
        tabs = [b.text for b in browser.find_elements(By.XPATH, "//button[@role='tab']")]
        assert tabs == ["Caption → image", "Image → text", "Video", "Navigation (W/A/S/D)"]
        # the page shows exactly what the tab's function draws for that caption and its default seed and steps
        expected = demo.caption_to_image(runs[0], "a small blue square at the center")
        assert pixels.shape == expected.shape and (pixels == expected).all() and pixels.std() > 0

        browser.find_element(By.XPATH, "//button[@role='tab'][contains(., 'Image')]").click()
        question = shown(browser, "#question textarea")
        question.clear()
        question.send_keys("how many shapes are there?")
        shown(browser, "#ask").click()
        answer = wait(browser, lambda: browser.find_element(By.CSS_SELECTOR, "#answer textarea").get_property(
            "value"))
        # the question was asked about the toy scene the page showed (seed 0), after its round trip through it; a
        # barely trained model's words hold any bytes, and a textarea's value writes each line break as \n
        expected = demo.image_to_text(runs[0], demo.toy_scene(runs[0])[0], "how many shapes are there?")
        assert answer == expected.replace("\r\n", "\n").replace("\r", "\n")

        browser.find_element(By.XPATH, "//button[@role='tab'][contains(., 'Navigation')]").click()
        for typed in ("w", "w w"):
            shown(browser, "#key_w").click()
            wait(browser, lambda: browser.find_element(By.CSS_SELECTOR, "#actions textarea").get_property("value")
                 == typed)
        w = 18 * demo.SCALE // 2   # a framed frame's width: two key presses, then 4 context + 2 imagined frames
        walk = wait(browser, lambda: (p := shown_picture(browser, "rollout")) is not None and p.shape[1] == 6 * w
                    and p)
        assert (walk == demo.navigate(runs[1], "w w")[0]).all()
        print(f"browser steps: {time.time() - t0:.1f} s")
    finally:
        browser.quit()
        ui.close()


def screenshot(out_dir, path, nav_out_dir=None):
    """The README's picture: the caption tab after drawing, through the test's browser steps."""
    browser = chromium()
    ui, url = start_page(out_dir, nav_out_dir or out_dir)
    try:
        browser.set_window_size(900, 860)
        draw_in_page(browser, url, CAPTION)
        time.sleep(1)   # the picture's fade-in
        browser.save_screenshot(path)
    finally:
        browser.quit()
        ui.close()


if __name__ == "__main__":
    screenshot(*sys.argv[1:])
    print(f"wrote {sys.argv[2]}")
