"""kddet's data sets: the embedded shapes, and VOC-layout folders with images of any format."""
from .voc import load_voc_folder, register_voc_folder

__all__ = ["load_voc_folder", "register_voc_folder"]
