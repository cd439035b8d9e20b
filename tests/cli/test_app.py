"""``pvt app``: the page's answers (bad uploads refused with a message, the server keeps answering), finding the
demo's run, the one-line message without the extra, and a real browser (headless Chromium) that uploads an image
and reads the same top-5 as ``pvt predict --json``."""

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import pytest
from PIL import Image

import pvt
from pvt.api import load_predictor
from pvt.cli import main
from pvt.cli.app import answer, find_demo_checkpoint

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMIUM_FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync"]


@pytest.fixture(scope="module")
def model(tmp_path_factory, make_stripes, trained_checkpoint):
    root = tmp_path_factory.mktemp("app")
    data = make_stripes(root / "data", n_train=2, n_val=2)
    return data, trained_checkpoint(root / "run" / "best.safetensors", data)


def _bad_images(root: Path) -> dict[str, Path]:
    """A text file named .png, a decompression bomb, a 2,000,000x1 image."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "text.png").write_text("not an image at all\n")
    Image.new("1", (20000, 20000)).save(root / "bomb.png")  # 400 M pixels: above PIL's bomb limit, ~60 KB
    Image.new("L", (2_000_000, 1)).save(root / "wide.png")
    return {name: root / f"{name}.png" for name in ("text", "bomb", "wide")}


def test_answer_refuses_bad_uploads_and_keeps_answering(model, tmp_path):
    data, ckpt = model
    predictor = load_predictor(ckpt, device="cpu")
    expected = {"text": "cannot be read", "bomb": "cannot be read", "wide": "more elongated than 100:1"}
    for name, path in _bad_images(tmp_path / "bad").items():
        status, shown = answer([predictor], str(path), out_dir=tmp_path)
        assert status.startswith("**Refused:** ") and expected[name] in status, (name, status)
        assert "\n" not in status and "Traceback" not in status
        assert shown == [{"top": None, "picture": None, "attention": None, "info": ""}]
    good = data / "val" / "vertical" / "0.png"
    status, shown = answer([predictor, predictor], str(good), query=(0.5, 0.5), out_dir=tmp_path)
    assert status == "`0.png`"
    top = pvt.predict(ckpt, good, device="cpu")[0]["top"]
    assert shown[0]["top"] == {t["class"]: t["prob"] for t in top} == shown[1]["top"]
    assert shown[0]["picture"].size == (320, 320 + 3 * 16 + 6)  # the image with its 3 bars, already 320 wide
    assert shown[0]["attention"].size == (3 * (200 + 4), 2 * (200 + 16))  # 6 tiles
    assert re.search(r"prediction \*\*[\d.]+ ms\*\*", shown[0]["info"]) and "float32 (default) on cpu" in shown[0]["info"]


def test_find_demo_checkpoint(tmp_path):
    with pytest.raises(ValueError, match=r"run `pvt demo` first"):
        find_demo_checkpoint(tmp_path)
    for name, age in (("old", 100), ("new", 10)):
        (tmp_path / name).mkdir()
        f = tmp_path / name / "best.safetensors"
        f.write_bytes(b"x")
        os.utime(f, (time.time() - age, time.time() - age))
    (tmp_path / "other").mkdir()  # no checkpoint inside: not a run
    assert find_demo_checkpoint(tmp_path) == tmp_path / "new"


def test_missing_extra_is_one_line(model, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "gradio", None)  # import gradio -> ImportError
    assert main(["app", str(model[1])]) == 2
    err = capsys.readouterr().err
    assert err == "pvt app: error: the web page needs the app extra: pip install 'pyramid-vision-transformer[app]' " \
                  "(Gradio)\n"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _top5(text: str) -> list[tuple[str, int]]:
    """gr.Label's text: 'top-5', the top class, then 'class' and 'NN%' lines."""
    lines = [t.strip() for t in text.splitlines() if t.strip()]
    pairs = [(lines[i - 1], int(lines[i][:-1])) for i in range(1, len(lines)) if re.fullmatch(r"\d+%", lines[i])]
    return pairs


def test_browser_upload_shows_predict_top5(model, tmp_path, capsys):
    """Start `pvt app` on a free port, upload images in headless Chromium, read the page."""
    if CHROMIUM is None:
        pytest.skip("no chromium on PATH (apt-get install chromium): browser test skipped")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.skip("the playwright package is not installed (pip install playwright): browser test skipped")
    pytest.importorskip("gradio", reason="the app extra (gradio) is not installed: browser test skipped")
    data, ckpt = model
    image = data / "val" / "diagonal" / "1.png"
    assert main(["predict", "--checkpoint", str(ckpt), str(image), "--json"]) == 0
    expected = [(t["class"], round(100 * t["prob"])) for t in json.loads(capsys.readouterr().out)[0]["top"]]

    port = _free_port()
    env = {**os.environ, "PYTHONPATH": str(Path(pvt.__file__).parents[1]), "GRADIO_ANALYTICS_ENABLED": "False"}
    server = subprocess.Popen([sys.executable, "-m", "pvt", "app", str(ckpt), "--port", str(port), "--device", "cpu"],
                              env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=tmp_path)
    url = f"http://127.0.0.1:{port}/"
    try:
        deadline = time.time() + 240
        while True:
            try:
                with urllib.request.urlopen(url, timeout=5) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            assert server.poll() is None, server.stdout.read()
            assert time.time() < deadline, "pvt app did not answer within 240 s"
            time.sleep(1)
        bad = _bad_images(tmp_path / "bad")
        with sync_playwright() as p:
            browser = p.chromium.launch_persistent_context(
                tempfile.mkdtemp(dir=tmp_path), executable_path=CHROMIUM, headless=True, args=CHROMIUM_FLAGS,
                viewport={"width": 1280, "height": 1000})
            try:
                page = browser.new_page()
                page.goto(url)
                upload = "#upload input[type=file]"
                page.wait_for_selector(upload, state="attached", timeout=60000)
                page.set_input_files(upload, str(bad["text"]))
                page.wait_for_function("document.querySelector('#status').innerText.includes('Refused')",
                                       timeout=60000)
                assert "cannot be read" in page.inner_text("#status")
                page.click("#upload button[aria-label=Clear]")
                page.wait_for_selector(upload, state="attached", timeout=60000)
                page.set_input_files(upload, str(image))  # the page still serves
                page.wait_for_selector("#top5-0 .output-class", timeout=60000)
                page.wait_for_function("document.querySelector('#info-0').innerText.includes('precision path')",
                                       timeout=60000)
                shown = _top5(page.inner_text("#top5-0"))
                assert [c for c, _ in shown] == [c for c, _ in expected]
                assert all(abs(a - b) <= 1 for (_, a), (_, b) in zip(shown, expected)), (shown, expected)
                assert "float32 (default) on cpu" in page.inner_text("#info-0")
                page.wait_for_selector("#attention-0 img", timeout=60000)
                shot = tmp_path / "page.png"
                page.screenshot(path=str(shot), full_page=True)
                assert Image.open(shot).size[0] == 1280
            finally:
                browser.close()
    finally:
        server.terminate()
        server.wait(timeout=30)


@pytest.mark.parametrize("task", ["detection", "segmentation"])
def test_answer_for_dense_checkpoints(task, tmp_path):
    """A detector / Semantic FPN checkpoint (untrained, written as pvt train writes one) answers on the page:
    its drawing, its attention maps (of the PVT backbone), no top-5."""
    from pvt.tasks import create_task, resolve_config
    from pvt.weights.checkpoint import save_model

    cfg = resolve_config(task=task, model="pvt_v2_b0", img_size=64, data_dir=str(tmp_path / "cache"), workers=0,
                         task_options={"num_train": 2, "num_val": 2, "shapes_size": 64})
    t = create_task(cfg)
    t.build_datasets()
    path = save_model(t.build_model().eval(), tmp_path / "run" / "best.safetensors", variant=cfg.model,
                      extra=dict(t.checkpoint_extra(), train_config=cfg.to_dict(), epoch=1))
    predictor = load_predictor(path, device="cpu")
    examples = predictor.example_images(2)
    assert len(examples) == 2 and all(Path(e).is_file() for e in examples)
    assert "annotations" not in examples[0]  # images, not label maps
    status, shown = answer([predictor], examples[0], out_dir=tmp_path, score_thresh=0.0)
    assert status == f"`{Path(examples[0]).name}`", status
    s = shown[0]
    drawn = tmp_path / "0" / Path(examples[0]).with_suffix("").name
    assert s["top"] is None and Path(f"{drawn}_pred.png").is_file()
    assert s["picture"].size == tuple(6 * v for v in Image.open(examples[0]).size)  # 64 px shapes, enlarged x6
    assert s["attention"].size[0] > 0
    assert ("detections" if task == "detection" else "pixels: ") in s["info"]
