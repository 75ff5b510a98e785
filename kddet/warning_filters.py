"""Silence the third-party warnings every run prints and no user can act on.

Each filter matches one known message from a library kddet depends on, so that the lines that
matter stay readable; any other warning (kddet's own included) is shown as Python shows it.
Importing this module applies them; ``import kddet`` does, before detectron2's modeling code.
"""

import warnings

__all__ = ["filter_known_warnings"]

KNOWN_HARMLESS = [
    # fvcore (sigmoid_focal_loss_jit) and detectron2 (Box2BoxTransform) script a function and a
    # class when imported. torch still scripts them; the warning is about a future torch.
    (FutureWarning, r"`torch\.jit\.script` is deprecated"),
    # detectron2's anchor generator calls torch.meshgrid without `indexing`; it means "ij", which
    # is torch's default, so the anchors are what detectron2 intends.
    (UserWarning, r"torch\.meshgrid: in an upcoming release, it will be required to pass the indexing argument"),
    # detectron2's model_zoo imports pkg_resources for resource_filename alone; once setuptools
    # drops it, kddet.compat stands in for that one function.
    (UserWarning, r"pkg_resources is deprecated as an API"),
    # In several processes: detectron2's all_gather and gather pickle through torch.ByteStorage,
    # which torch still supports; and its DefaultTrainer asks DDP for broadcast_buffers=False,
    # which torch still honours (its replacement, forward_sync_buffers, would also sync at start).
    (UserWarning, r"TypedStorage is deprecated"),
    (FutureWarning, r"`broadcast_buffers` is deprecated"),
]


def filter_known_warnings() -> None:
    """Ignore the warnings in ``KNOWN_HARMLESS``, and only those."""
    for category, message in KNOWN_HARMLESS:
        warnings.filterwarnings("ignore", message=message, category=category)


filter_known_warnings()
