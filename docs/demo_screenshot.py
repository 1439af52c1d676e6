"""Make docs/demo.png: `effdetseg demo` in headless chromium, segmenting one image.

    python docs/demo_screenshot.py experiments/camvid_lite0/best.pth docs/demo.png ../shared/data/camvid/val/0016E5_07959.jpg
    python docs/demo_screenshot.py experiments/NAME/best.pth docs/demo.png     # a synthetic scene

Needs Debian's chromium and chromium-driver, and selenium (the test extra).
"""
from __future__ import annotations

import re
import subprocess
import sys
import tempfile
from pathlib import Path

from PIL import Image
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

from effdetseg.data.synthetic import render_scene

SHAPES = ("circle", "square", "triangle", "ring", "cross")  # the synthetic preset's classes
FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync", "--window-size=1200,1000")


def main(checkpoint: str, output: str, image_path: str | None = None) -> None:
    if image_path is None:
        image, _ = render_scene(7, 0, 320, 448, SHAPES, objects_per_image=(3, 4), max_rotation=15)
        scene = Path(tempfile.mkdtemp()) / "synthetic_scene.png"
        Image.fromarray(image).save(scene)
    else:
        scene = Path(image_path).resolve()
    server = subprocess.Popen(
        [sys.executable, "-m", "effdetseg", "demo", "--checkpoint", checkpoint, "--port", "0", "--device", "cpu"],
        stdout=subprocess.PIPE, text=True,
    )
    options = webdriver.ChromeOptions()
    options.binary_location = "/usr/bin/chromium"
    for flag in (*FLAGS, f"--user-data-dir={tempfile.mkdtemp()}"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=options)
    try:
        url = re.search(r"serving (http://\S+)", server.stdout.readline()).group(1)
        driver.get(url)
        driver.find_element(By.ID, "file").send_keys(str(scene))
        WebDriverWait(driver, 600).until(lambda d: d.execute_script("return document.body.dataset.answers") == "1")
        print(driver.find_element(By.ID, "timing").text)
        driver.save_screenshot(output)
    finally:
        driver.quit()
        server.terminate()


if __name__ == "__main__":
    main(*sys.argv[1:4])
