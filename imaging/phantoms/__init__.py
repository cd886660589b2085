"""Synthetic musculoskeletal radiographs ("phantoms") with exact ground truth.

Test data for clustering (region must be recognisable by shape only, never by size,
brightness or noise) and for lesion detection (exact boxes, benign vs malignant).
"""
from .anatomy import REGIONS
from .generate import generate_phantoms
from .render import Phantom, render_phantom

__all__ = ["REGIONS", "Phantom", "generate_phantoms", "render_phantom"]
