"""kddet.warning_filters: the known-harmless third-party warnings are gone from every run that
imports kddet, and any other warning still shows."""

import subprocess
import sys

from conftest import REPO

THIRD_PARTY_CALLS = """
import torch
import fvcore.nn.focal_loss  # scripts a function on import, as detectron2's box_regression does
torch.meshgrid(torch.arange(2), torch.arange(3))  # what detectron2's anchor generator does
try:
    import pkg_resources  # what detectron2's model_zoo does
except ImportError:  # setuptools >= 81 has none (kddet.compat stands in for it), so nothing warns
    print("setuptools has no pkg_resources", file=__import__("sys").stderr)
torch.ByteStorage.from_buffer(b"x")  # what detectron2's all_gather and gather do
import socket, torch.distributed as dist
with socket.socket() as s:
    s.bind(("127.0.0.1", 0)); port = s.getsockname()[1]
dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=0, world_size=1)
torch.nn.parallel.DistributedDataParallel(torch.nn.Linear(2, 2), broadcast_buffers=False)  # DefaultTrainer's DDP
dist.destroy_process_group()
"""
OTHER_WARNINGS = """
import warnings
warnings.warn("a warning of kddet's own", UserWarning)
warnings.warn("another library's deprecation", FutureWarning)
"""


def stderr_of(script: str) -> str:
    """Each case in a fresh interpreter: torch warns about meshgrid once per process."""
    proc = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return proc.stderr


def test_the_filtered_warnings_print_without_kddet():
    stderr = stderr_of(THIRD_PARTY_CALLS)
    assert "`torch.jit.script` is deprecated" in stderr
    assert "torch.meshgrid: in an upcoming release" in stderr
    assert "pkg_resources is deprecated" in stderr or "setuptools has no pkg_resources" in stderr
    assert "TypedStorage is deprecated" in stderr and "`broadcast_buffers` is deprecated" in stderr


def test_importing_kddet_silences_them_and_only_them():
    stderr = stderr_of("import kddet\n" + THIRD_PARTY_CALLS + OTHER_WARNINGS)
    assert "torch.jit.script" not in stderr and "meshgrid" not in stderr and "pkg_resources" not in stderr
    assert "TypedStorage" not in stderr and "broadcast_buffers" not in stderr
    assert "UserWarning: a warning of kddet's own" in stderr
    assert "FutureWarning: another library's deprecation" in stderr
