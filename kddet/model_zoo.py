"""Teachers from detectron2's model zoo: config names and ``detectron2://`` / URL weights.

A config may name a teacher the way detectron2's model zoo does: ``KD.TEACHER.CONFIG_FILE``
``COCO-Detection/faster_rcnn_R_101_FPN_3x.yaml`` (a config detectron2 ships in its package) and
``KD.TEACHER.WEIGHTS`` ``detectron2://COCO-Detection/.../model_final_f6e8b1.pkl`` (fetched once
into iopath's download cache, as detectron2 fetches it). A local file of the same name wins.
"""

import os
from typing import Optional
from urllib.parse import urlparse

from iopath.common.file_io import get_cache_dir

from detectron2 import model_zoo
from detectron2.utils.file_io import Detectron2Handler, PathManager

__all__ = ["cached_file", "config_file", "download", "is_url", "not_downloaded", "weights_available"]


def config_file(path: str) -> Optional[str]:
    """``path`` if it is a file, else the model-zoo config of that name; None if neither."""
    if os.path.isfile(path):
        return path
    if os.path.isabs(path) or ".." in path.split("/"):  # not a name inside the zoo's configs/
        return None
    try:
        zoo_file = model_zoo.get_config_file(path)
    except RuntimeError:  # "not available in Model Zoo"
        return None
    return zoo_file if os.path.isfile(zoo_file) else None  # not one of its folders


def is_url(path: str) -> bool:
    return "://" in path


def cached_file(url: str) -> str:
    """Where detectron2's PathManager keeps ``url`` once downloaded: ``$FVCORE_CACHE`` (default
    ``~/.torch/iopath_cache``), then the URL's path (``detectron2://X`` is detectron2's S3 URL)."""
    if url.startswith(Detectron2Handler.PREFIX):
        url = Detectron2Handler.S3_DETECTRON2_PREFIX + url[len(Detectron2Handler.PREFIX) :]
    return os.path.join(get_cache_dir(), urlparse(url).path.lstrip("/"))


def weights_available(path: str) -> bool:
    """Whether ``path`` is a file, or a URL already in the download cache."""
    return os.path.isfile(cached_file(path) if is_url(path) else path)


def not_downloaded(url: str, key: str) -> str:
    """What to do about the checkpoint ``url`` of ``key`` before training if it is not cached."""
    return (
        f"{key} {url} is not downloaded yet: training downloads it to {cached_file(url)}. Offline, put the file "
        f"there, or set {key} to a local path."
    )


def download(url: str, key: str) -> str:
    """The local file of the checkpoint at ``url`` (config key ``key``): its cached download,
    downloading it first if needed; FileNotFoundError saying where to put it offline."""
    try:
        return PathManager.get_local_path(url)
    except Exception as error:  # iopath raises what urllib raises (URLError, HTTPError, OSError)
        raise FileNotFoundError(
            f"{key} {url} is not in the download cache and could not be downloaded ({type(error).__name__}: "
            f"{error}). Offline, download it elsewhere and put it at {cached_file(url)} (detectron2's cache: "
            f"$FVCORE_CACHE, by default ~/.torch/iopath_cache), or set {key} to a local path."
        ) from error
