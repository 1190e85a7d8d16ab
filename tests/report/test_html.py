"""The HTML report page: self-contained (no network), and rendered by headless Chromium without console errors.

The browser test needs Debian's ``chromium`` on PATH (``.ci/run`` installs it in CI); it is skipped otherwise.
It loads a copy of the page with a small probe script appended that checks every image decoded, then reads the
DOM Chromium dumps and the console lines it logs to stderr.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

pytest.register_assert_rewrite("fixtures_e2e")

from fixtures_e2e import CliRun, copy_run, invoke, read_report  # noqa: E402

pytest_plugins = ["fixtures_e2e"]

PROBE = """<script>
window.addEventListener("load", () => {
  const bad = [...document.images].filter((im) => !(im.complete && im.naturalWidth > 0));
  document.body.setAttribute("data-probe", bad.length ? "broken-images:" + bad.length : "ok:" + document.images.length);
  if (bad.length) console.error("broken images: " + bad.length);
});
</script>"""


@pytest.fixture(scope="module")
def page(pruned_run: CliRun, tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("html") / "report.html"
    result = invoke("report", pruned_run.path, "--output", path, "--layers")
    assert result.exit_code == 0, result.output
    return path


def test_page_is_self_contained(page: Path) -> None:
    html = page.read_text(encoding="utf-8")
    assert not re.search(r"""(?:src|href)\s*=\s*["']?(?:https?:)?//""", html), "the page must not load anything"
    assert "@import" not in html and "url(" not in html
    assert "<script src" not in html


def test_page_inlines_the_figures_when_matplotlib_is_there(page: Path) -> None:
    pytest.importorskip("matplotlib")
    assert page.read_text(encoding="utf-8").count('<img src="data:image/png;base64,') == 6


def _chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        if path := shutil.which(name):
            return path
    pytest.skip("chromium is not on PATH (apt-get install chromium)")


def _render(html: Path, tmp_path: Path) -> tuple[str, list[str]]:
    """Chromium's DOM after the load event, and the console lines it logged."""
    probed = tmp_path / "probed.html"
    probed.write_text(html.read_text(encoding="utf-8").replace("</body>", PROBE + "\n</body>"), encoding="utf-8")
    cmd = [
        _chromium(),
        "--headless",
        "--no-sandbox",  # CI containers run as root
        "--disable-gpu",
        "--disable-dev-shm-usage",
        f"--user-data-dir={tmp_path / 'profile'}",
        "--host-resolver-rules=MAP * ~NOTFOUND",  # nothing may come from the network
        "--enable-logging=stderr",
        "--v=0",
        "--virtual-time-budget=5000",
        "--dump-dom",
        probed.as_uri(),
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    console = [line for line in proc.stderr.splitlines() if ":CONSOLE" in line]
    return proc.stdout, console


@pytest.mark.browser
@pytest.mark.parametrize("compare", [False, True], ids=["run", "compare"])
def test_chromium_renders_the_page_without_console_errors(
    page: Path, pruned_run: CliRun, tmp_path: Path, compare: bool
) -> None:
    if compare:
        other = copy_run(pruned_run.path, tmp_path / "b")
        target = tmp_path / "compare.html"
        assert invoke("report", pruned_run.path, other, "--compare", "-o", target).exit_code == 0
    else:
        target = page
    dom, console = _render(target, tmp_path)
    assert console == []
    probe = re.search(r'data-probe="([^"]*)"', dom)
    assert probe is not None, "the page never finished loading"
    assert probe.group(1).startswith("ok:"), probe.group(1)
    overall = f"{read_report(pruned_run.path).overall_sparsity:.2%}"
    if compare:
        assert overall in dom
    else:
        shown = re.search(r'id="overall-sparsity">([^<]*)<', dom)
        assert shown is not None and shown.group(1) == overall
