"""The real-browser test: notebook 02 in JupyterLab, driven by Chromium through Playwright.

It starts ``jupyter lab`` on 127.0.0.1 (a free port, a token, a temporary copy of
``notebooks/`` as its root), opens ``02_edaformer_isr.ipynb``, runs all cells, waits for
the kernel to go idle, moves an ISR ratio slider with the keyboard and checks that

* the GMACs read-out of the ISR explorer changes, and
* no cell shows an error (no error output, no traceback on stderr).

A screenshot goes to the test's ``tmp_path`` and to ``test-output/browser/`` at the repo
root (git-ignored). Chromium is Debian's (``make browser-deps`` installs it); Playwright's
own browser downloads do not work here. Where ``/usr/bin/chromium`` is missing the test is
skipped with a message that says so.
"""
from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
NOTEBOOK = "02_edaformer_isr.ipynb"
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
# CSS classes the ISR explorer puts on its widgets (segviz/viz/isr_explorer.py).
SLIDER = ".segviz-isr-slider"
GMACS = ".segviz-gmacs"
TOKEN = "segviz-browser-test"
# Running the notebook takes seconds once the trainer's cache holds its models; on a fresh
# machine it trains them first (about two minutes on two cores), hence the generous limit.
RUN_TIMEOUT_S = 420

# JupyterLab user settings for the test: every cell stays in the DOM (no windowing), and no
# news or update checks (there is no network).
LAB_SETTINGS = {
    "@jupyterlab/notebook-extension/tracker.jupyterlab-settings": '{"windowingMode": "none"}',
    "@jupyterlab/apputils-extension/notification.jupyterlab-settings":
        '{"fetchNews": "false", "checkForUpdates": false}',
}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def chromium() -> Path:
    if not CHROMIUM.exists():
        pytest.skip(
            "the real-browser test needs Debian's chromium at /usr/bin/chromium, which is missing; "
            "run `make browser-deps` as root (it apt-installs chromium and chromium-driver)"
        )
    return CHROMIUM


def start_lab(root_dir: Path, work: Path):
    """Start ``jupyter lab`` serving ``root_dir``; return (base url, process)."""
    settings = work / "lab-settings"
    for rel, text in LAB_SETTINGS.items():
        path = settings / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    env = dict(os.environ)
    env.pop("MPLBACKEND", None)  # let the kernel draw figures inline, as a reader's would
    env.update(
        JUPYTERLAB_SETTINGS_DIR=str(settings),
        JUPYTERLAB_WORKSPACES_DIR=str(work / "lab-workspaces"),
        JUPYTER_RUNTIME_DIR=str(work / "runtime"),
    )
    port = _free_port()
    log = open(work / "jupyter-lab.log", "w")
    proc = subprocess.Popen(
        [
            sys.executable, "-m", "jupyter", "lab", "--no-browser", "--ip=127.0.0.1", f"--port={port}",
            f"--ServerApp.root_dir={root_dir}", f"--IdentityProvider.token={TOKEN}",
            "--ServerApp.port_retries=0", "--LabApp.news_url=None",
            "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate",
            *(["--allow-root"] if hasattr(os, "geteuid") and os.geteuid() == 0 else []),
        ],
        cwd=root_dir, env=env, stdout=log, stderr=subprocess.STDOUT,
    )
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        try:
            with urllib.request.urlopen(f"{base}/api/status?token={TOKEN}", timeout=2) as r:
                if r.status == 200:
                    return base, proc
        except OSError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise RuntimeError(f"jupyter lab did not start; see {work / 'jupyter-lab.log'}:\n"
                               + (work / "jupyter-lab.log").read_text()[-3000:])
        time.sleep(0.5)


def stop_lab(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def _errors_on_page(page) -> list[str]:
    """Texts of error outputs, of stderr outputs that hold a traceback, and of widgets that failed to render."""
    found = page.locator('.jp-OutputArea-output[data-mime-type="application/vnd.jupyter.error"]').all_inner_texts()
    stderr = page.locator('.jp-RenderedText[data-mime-type="application/vnd.jupyter.stderr"]').all_inner_texts()
    widgets = page.get_by_text("Error displaying widget").all_inner_texts()
    return found + [t for t in stderr if "Traceback" in t or "Error" in t] + widgets


def run_all_and_move_slider(base: str, notebook: str, chromium_path: Path, shots: list[Path]) -> dict:
    """Open ``notebook``, run all cells, press ArrowRight on the first ISR slider.

    Returns the GMACs text before and after, the errors seen, and the seconds taken.
    """
    from playwright.sync_api import sync_playwright

    t0 = time.monotonic()
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(chromium_path), args=CHROMIUM_ARGS, headless=True)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.goto(f"{base}/lab/tree/{notebook}?token={TOKEN}&reset")
            page.locator(".jp-Notebook .jp-Cell").first.wait_for(timeout=60_000)
            # Wait for the kernel to be ready; a notebook without kernel metadata first asks
            # which kernel to start: take the default.
            idle = page.get_by_text("Python 3 (ipykernel) | Idle")
            choose = page.locator(".jp-Dialog .jp-Dialog-button.jp-mod-accept")
            deadline = time.monotonic() + 60
            while not idle.is_visible():
                if choose.is_visible():
                    choose.click()
                if time.monotonic() > deadline:
                    raise AssertionError("the kernel did not become idle within 60 s")
                page.wait_for_timeout(250)
            page.locator(".jp-Notebook").first.click()
            page.get_by_role("menuitem", name="Run", exact=True).click()
            page.get_by_role("menuitem", name="Run All Cells", exact=True).click()
            # Busy first (maybe only briefly), then idle with every code cell numbered.
            deadline = time.monotonic() + RUN_TIMEOUT_S
            while True:
                idle = page.locator('.jp-Notebook-ExecutionIndicator[data-status="idle"]').count() > 0
                prompts = page.locator(".jp-CodeCell .jp-InputArea-prompt").all_inner_texts()
                pending = [t for t in prompts if "[*]" in t or t.strip() in ("[ ]:", "")]
                if idle and prompts and (not pending or _errors_on_page(page)):
                    break  # done, or stopped at an error (reported below)
                if time.monotonic() > deadline:
                    page.screenshot(path=str(shots[0]), full_page=True)
                    raise AssertionError(f"the notebook did not finish within {RUN_TIMEOUT_S} s; prompts: {prompts}")
                page.wait_for_timeout(500)
            slider = page.locator(SLIDER).first
            slider.wait_for(timeout=30_000)
            gmacs = page.locator(GMACS).first
            before = gmacs.inner_text()
            slider.scroll_into_view_if_needed()
            handle = slider.locator(".noUi-handle").first
            handle.focus()
            page.keyboard.press("ArrowRight")
            try:
                page.wait_for_function(
                    "([sel, old]) => document.querySelector(sel).innerText !== old",
                    arg=[GMACS, before], timeout=30_000,
                )
            except Exception:  # noqa: BLE001 - the assertion below reports it
                pass
            after = gmacs.inner_text()
            gmacs.scroll_into_view_if_needed()
            page.wait_for_timeout(300)
            for shot in shots:
                page.screenshot(path=str(shot))
            return {"before": before, "after": after, "errors": _errors_on_page(page),
                    "seconds": time.monotonic() - t0}
        except Exception:
            page.screenshot(path=str(shots[0]))
            raise
        finally:
            browser.close()


def test_isr_slider_moves_gmacs_in_jupyterlab(chromium, tmp_path):
    root = tmp_path / "notebooks"
    shutil.copytree(REPO / "notebooks", root, ignore=shutil.ignore_patterns(".ipynb_checkpoints", "_build"))
    assert (root / NOTEBOOK).exists(), f"notebooks/{NOTEBOOK} is missing"
    stable = REPO / "test-output" / "browser"
    stable.mkdir(parents=True, exist_ok=True)
    shots = [tmp_path / "isr_slider.png", stable / "isr_slider.png"]
    base, proc = start_lab(root, tmp_path)
    try:
        result = run_all_and_move_slider(base, NOTEBOOK, chromium, shots)
    finally:
        stop_lab(proc)
    assert shots[0].stat().st_size > 0
    assert not result["errors"], "cells show errors:\n" + "\n---\n".join(result["errors"])
    assert "GMAC" in result["before"], f"no GMACs read-out found, got {result['before']!r}"
    assert result["after"] != result["before"], (
        f"moving the ISR slider with the keyboard did not change the GMACs read-out ({result['before']!r})"
    )
