"""Build a Python-only detectron2 wheel from the ``pb1-detectron2`` sdist on PyPI.

That sdist is detectron2 v0.6 without its C++/CUDA sources, so its own setup.py cannot
build. Faster R-CNN needs none of them (torchvision provides NMS and RoIAlign), so we
package the Python sources with a minimal setup script of our own, keeping the model-zoo
yaml files as package data. ``kddet.compat`` supplies what the missing extension and the
2021-era dependency pins would otherwise break.

Usage: python scripts/build_detectron2_wheel.py SDIST.tar.gz OUT_DIR
"""

import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

SETUP_PY = """
from setuptools import find_packages, setup

setup(
    name="detectron2",
    version="0.6+py",
    description="detectron2 v0.6, Python sources only (built by kddet from pb1-detectron2)",
    url="https://github.com/facebookresearch/detectron2",
    packages=find_packages(include=("detectron2", "detectron2.*")),
    package_data={"detectron2.model_zoo": ["configs/**/*.yaml", "configs/**/*.py"]},
    python_requires=">=3.8",
    install_requires=[
        "Pillow>=7.1", "matplotlib", "pycocotools>=2.0.2", "termcolor>=1.1", "yacs>=0.1.8",
        "tabulate", "cloudpickle", "tqdm>4.29.0", "tensorboard", "fvcore>=0.1.5,<0.1.6",
        "iopath>=0.1.7,<0.1.10", "omegaconf>=2.1", "hydra-core>=1.1",
    ],
)
"""


def main(sdist: str, out_dir: str) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        with tarfile.open(sdist) as tar:
            tar.extractall(tmp, filter="data")
        (src,) = [p for p in Path(tmp).iterdir() if p.is_dir()]
        (src / "setup.py").write_text(SETUP_PY)
        (src / "pyproject.toml").unlink(missing_ok=True)
        subprocess.run(
            [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", out_dir, str(src)],
            check=True,
        )


if __name__ == "__main__":
    main(*sys.argv[1:3])
