"""Axial-skeleton regions (pelvis, chest, spine, skull), frontal views.

Symmetric structures are drawn for the patient's right half (image left) and mirrored;
each half is jittered separately so the two sides are never identical.
"""
from __future__ import annotations

import numpy as np

from .shapes import (
    Anatomy, Jitter, P, Shape, arc, bezier, bone, bone_stroke, capsule, ellipse, hole, metal,
    mirror_x, rounded_rect, smooth, soft, zoom,
)

SOFT = 0.32


def _vertebra(j: Jitter, y: float, hw: float, hh: float, tp: float, dens: float = 1.0) -> list[Shape]:
    """Frontal vertebra: body, ring-like pedicles, midline spinous process, transverse processes."""
    hw, hh = j(hw, 0.06), j(hh, 0.06)
    out = [bone(rounded_rect((0, y), hw, hh, 0.3 * hh), dens, 0.5 * dens, 0.022)]
    for s in (-1, 1):
        out.append(bone(ellipse((s * 0.62 * hw, y - 0.3 * hh), 0.2 * hw, 0.45 * hh, 0, 20), dens * 1.1, 0.25 * dens,
                        0.02, False))
        out.append(bone(capsule(P(s * 0.8 * hw, y - 0.15 * hh), P(s * j(tp), y - 0.25 * hh + j.add(0, 0.03)),
                                0.22 * hh), 0.7 * dens, 0.4 * dens, 0.012))
    out.append(bone(ellipse((j.add(0, 0.01), y + 0.45 * hh), 0.12 * hw, 0.5 * hh, 0, 20), 0.7 * dens, 0.4 * dens, 0.015,
                    False))
    return out


def spine(rng: np.random.Generator) -> Anatomy:
    """Lumbar spine AP: five stacked vertebrae with disc spaces, T12 ribs, sacrum, gas."""
    j = Jitter(rng)
    shapes: list[Shape] = [soft([(-1.5, -1.6), (1.5, -1.6), (1.5, 1.6), (-1.5, 1.6)], SOFT * 1.4, 1)]
    for s in (-1, 1):  # psoas margins
        shapes.append(soft(np.array([(0.12, -0.9), (0.28, -0.9), (0.62, 1.2), (0.3, 1.2)]) * [s, 1], 0.06, None))
    for _ in range(rng.integers(2, 6)):  # bowel gas
        c = P(rng.uniform(-0.9, 0.9), rng.uniform(-0.9, 0.9))
        shapes.append(soft(ellipse(c, j(0.12, 0.5), j(0.08, 0.5), rng.uniform(0, 180), 20), -0.15, None))
    step = j(0.37, 0.05)
    y0 = j.add(-0.75, 0.05)
    ys = [y0 + k * step for k in range(-1, 5)]
    for k, y in enumerate(ys):
        hw = 0.21 + 0.012 * k
        tp = 0.38 + (0.07 if k == 3 else 0.0) if k else 0.28
        shapes += _vertebra(j, y, hw, 0.135, tp)
    t12 = ys[0]
    for s in (-1, 1):  # twelfth ribs
        shapes.append(bone_stroke(bezier(P(s * 0.2, t12), P(s * 0.45, t12 + 0.05), P(s * 0.62, t12 + 0.3)), 0.045,
                                  0.9, 0.45))
    top = ys[-1] + step * 0.55
    sacrum = smooth([(-0.34, top), (0.34, top), (0.22, top + 0.5), (0.05, top + 0.9), (-0.05, top + 0.9),
                     (-0.22, top + 0.5)], 1)
    shapes.append(bone(sacrum, 0.9, 0.45, 0.02))
    for s in (-1, 1):
        shapes.append(bone(smooth([(s * 0.36, top - 0.05), (s * 0.95, top - 0.25), (s * 1.3, top + 0.1),
                                   (s * 0.95, top + 0.9), (s * 0.38, top + 0.7)], 2), 0.9, 0.4, 0.03))
    sites = [(P(0.13, ys[1]), P(0.13, ys[4]), 0.05)]
    return Anatomy(shapes, sites, None, "AP", False)


def pelvis(rng: np.random.Generator) -> Anatomy:
    j = Jitter(rng)
    shapes: list[Shape] = [soft(smooth([(-1.3, -1.0), (1.3, -1.0), (1.35, 0.4), (1.2, 1.6), (-1.2, 1.6),
                                        (-1.35, 0.4)], 1), SOFT * 1.3, 1)]
    half: list[Shape] = []
    ilium = smooth([(-0.21, -0.5), (-0.3, -0.68), (-0.55, -0.77), (-0.8, -0.71), (-0.95, -0.5), (-0.9, -0.36),
                    (-0.8, -0.2), (-0.73, 0.0), (-0.7, 0.14), (-0.6, 0.1), (-0.45, 0.12), (-0.36, 0.26),
                    (-0.24, 0.22), (-0.22, 0.0), (-0.2, -0.18)], 2)
    half.append(bone(ilium, 0.9, 0.22, 0.03))
    half.append(bone_stroke(bezier(P(-0.2, -0.2), P(-0.4, 0.15), P(-0.06, 0.37)), 0.03, 0.8, 0.8, 0.0))  # brim
    half.append(bone_stroke(arc((-0.52, 0.2), 0.165, 0.165, 190, 340, 14), 0.035, 0.9, 0.9, 0.0))  # acetabular roof
    half.append(bone_stroke(ellipse((-0.23, 0.5), 0.175, 0.135, 12, 36), 0.055, 1.0, 0.45, 0.012, True))  # rami
    half.append(bone(ellipse((-0.36, 0.64), 0.1, 0.07, 25, 20), 0.9, 0.45, 0.02))  # ischial tuberosity
    femur = smooth([(-0.6, 0.12), (-0.72, 0.22), (-0.8, 0.19), (-0.9, 0.3), (-0.88, 0.48), (-0.82, 0.7),
                    (-0.8, 1.6), (-0.58, 1.6), (-0.58, 0.7), (-0.6, 0.62), (-0.55, 0.54), (-0.6, 0.46),
                    (-0.52, 0.33), (-0.46, 0.27)], 2)
    half.append(bone(femur, 1.0, 0.42, 0.028))
    half.append(bone(ellipse((-0.52, 0.2), 0.14, 0.14, 0, 36), 1.0, 0.5, 0.018))  # femoral head
    k_left, k_right = (np.array([j(1.0, 0.04), j(1.0, 0.04)]) for _ in range(2))
    left = [s.transformed(lambda c: c * k_left) for s in half]
    right = mirror_x([s.transformed(lambda c: c * k_right) for s in half])
    shapes += left + right
    sac_w = j(1.0, 0.08)
    sacrum = smooth([(-0.2, -0.55), (0.2, -0.55), (0.17, -0.15), (0.06, 0.18), (-0.06, 0.18), (-0.17, -0.15)], 1)
    shapes.append(bone(sacrum * [sac_w, 1], 0.9, 0.4, 0.02))
    for k in range(4):  # sacral foramina
        for s in (-1, 1):
            shapes.append(hole(ellipse((s * 0.08 * sac_w, -0.38 + 0.12 * k), 0.025, 0.02, 0, 12), -0.25))
    shapes += _vertebra(j, -0.72, 0.25, 0.13, 0.4)
    if j.chance(0.7):
        shapes += _vertebra(j, -1.1, 0.24, 0.13, 0.42)
    sites = [(P(-0.71, 0.75), P(-0.69, 1.5), 0.11), (P(0.71, 0.75), P(0.69, 1.5), 0.11)]
    return zoom(Anatomy(shapes, sites, _hip_prosthesis, "AP", False), 0.82)


def _hip_prosthesis(rng: np.random.Generator) -> list[Shape]:
    s = 1.0 if rng.random() < 0.5 else -1.0
    sx = np.array([s, 1.0])
    cup = arc((-0.52, 0.2), 0.17, 0.17, 180, 360, 20) * sx
    stem = smooth([(-0.58, 0.24), (-0.74, 0.36), (-0.74, 0.55), (-0.7, 1.2), (-0.67, 1.2), (-0.63, 0.55),
                   (-0.55, 0.3)], 1) * sx
    return [metal(cup, 5.0, width=0.045, closed=False), metal(ellipse((-0.52 * s, 0.2), 0.12, 0.12, 0, 28), 5.0),
            metal(stem, 5.0)]


def chest(rng: np.random.Generator) -> Anatomy:
    """PA chest: dark lungs, heart to the patient's left (image right), ribs, clavicles."""
    j = Jitter(rng)
    shapes: list[Shape] = [soft(smooth([(-1.0, -1.2), (-0.95, -0.8), (-0.9, 0.2), (-0.95, 1.2), (0.95, 1.2),
                                        (0.9, 0.2), (0.95, -0.8), (1.0, -1.2)], 1), SOFT * 1.9, 1)]
    dia_r, dia_l = j.add(0.48, 0.06), j.add(0.55, 0.06)
    lung_r = smooth([(-0.3, -0.88), (-0.12, -0.7), (-0.1, 0.1), (-0.14, dia_r - 0.05), (-0.45, dia_r - 0.12),
                     (-0.8, dia_r + 0.07), (-0.83, 0.0), (-0.7, -0.62)], 2)
    lung_l = smooth([(0.3, -0.88), (0.12, -0.7), (0.13, -0.15), (0.35, 0.2), (0.42, dia_l - 0.05),
                     (0.8, dia_l + 0.07), (0.83, 0.0), (0.7, -0.62)], 2)
    shapes.append(soft(lung_r * [j(1.0, 0.06), 1], -0.42, 2))
    shapes.append(soft(lung_l * [j(1.0, 0.06), 1], -0.42, 2))
    heart = ellipse((j.add(0.14, 0.04), j.add(0.28, 0.04)), j(0.34), j(0.24), j.add(-15, 8), 36)
    shapes.append(soft(heart, 0.18, 3))
    shapes.append(soft(ellipse((-0.1, -0.45), 0.06, 0.06, 0, 16), -0.2, None))  # trachea
    for y in np.arange(-1.0, 0.7, 0.125):  # thoracic spine shadow behind the mediastinum
        shapes.append(bone(rounded_rect((0, y), 0.1, 0.045, 0.015), 0.35, 0.22, 0.01, False))
    n_ribs = int(rng.integers(9, 12))
    pitch = j(0.135, 0.06)
    for s in (-1, 1):
        sx = np.array([s, 1.0])
        for k in range(n_ribs):
            y = -0.8 + k * pitch
            reach = 0.62 + 0.18 * min(k, 4) / 4
            post = bezier(P(0.06, y), P(reach * 0.7, y - 0.12), P(reach, y + 0.12 + 0.02 * k), 16)
            shapes.append(bone_stroke(post * sx, 0.04, 0.75, 0.35, 0.011))
            if k < n_ribs - 3:
                ant = bezier(P(reach, y + 0.12 + 0.02 * k), P(reach * 0.7, y + 0.3), P(0.22, y + 0.42), 14)
                shapes.append(bone_stroke(ant * sx, 0.035, 0.45, 0.25, 0.01, lesionable=False))
        clav = bezier(P(0.07, -0.74), P(0.35, -0.74 + j.add(0, 0.04)), P(0.68, -0.88), 16)
        shapes.append(bone_stroke(clav * sx, 0.05, 1.0, 0.5, 0.014))
        if j.chance(0.5):  # humeral head at the corner of the field
            shapes.append(bone(ellipse(P(0.98 * s, -0.78), 0.13, 0.14, 0, 28), 1.0, 0.5, 0.02))
        shapes.append(bone_stroke(smooth([(0.62, -0.86), (0.8, -0.7), (0.86, -0.3)], 1, False) * sx, 0.05, 0.5,
                                  0.3))  # scapular border
    sites = [(P(-0.12, -0.78), P(-0.55, -0.82), 0.025)]
    return Anatomy(shapes, sites, None, "PA", False)


def skull(rng: np.random.Generator) -> Anatomy:
    """PA skull: oval calvarium with two tables, orbits, petrous ridges, sinuses, mandible, teeth."""
    j = Jitter(rng)
    ax, ay = j(0.7, 0.06), j(0.82, 0.06)
    cy = -0.15
    shapes: list[Shape] = [
        soft(ellipse((0, cy), ax + 0.07, ay + 0.07, 0, 48), SOFT, 1),
        soft(smooth([(-0.55, 0.2), (-0.5, 0.85), (0.0, 1.05), (0.5, 0.85), (0.55, 0.2)], 2), SOFT, 1),
        soft([(-0.35, 0.8), (0.35, 0.8), (0.4, 1.8), (-0.4, 1.8)], SOFT, 1),
        bone_stroke(ellipse((0, cy), ax, ay, 0, 64), j(0.075), 1.0, 0.45, 0.02, True),
        bone(ellipse((0, 0.28), 0.42, 0.3, 0, 40), 0.3, 0.3, 0.0, False),  # facial bone mass
    ]
    for s in (-1, 1):
        sx = np.array([s, 1.0])
        shapes.append(bone_stroke(rounded_rect((0.24 * s, 0.04), j(0.14), j(0.12), 0.06), 0.035, 0.9, 0.9,
                                  0.0, True, False))  # orbit rim
        shapes.append(bone_stroke(np.array([(0.5, 0.2), (0.3, 0.14), (0.13, 0.17)]) * sx, 0.06, 0.9, 0.9, 0.0))
        shapes.append(hole(ellipse((0.2 * s, 0.33), j(0.1), j(0.11), 0, 24), -0.22))  # maxillary sinus
        shapes.append(bone(ellipse((0.6 * s, 0.3), 0.06, 0.08, 0, 16), 0.6, 0.4, 0.01))  # mastoid
    shapes.append(hole(smooth([(-0.06, 0.18), (0.06, 0.18), (0.1, 0.44), (-0.1, 0.44)], 2), -0.15))  # nasal cavity
    shapes.append(bone_stroke(np.array([(0.0, 0.18), (0.0, 0.45)]), 0.02, 0.6, 0.6, 0.0, lesionable=False))
    frontal = [ellipse((dx, -0.16), 0.06, 0.05, 0, 16) for dx in (-0.05, 0.05)]
    if j.chance(0.8):
        shapes += [hole(f, -0.3) for f in frontal]
    if j.chance(0.9):  # mandible may be cropped or absent from the field
        mand = np.array([(-0.5, 0.16), (-0.49, 0.56), (-0.3, 0.76), (0.0, 0.84), (0.3, 0.76), (0.49, 0.56),
                         (0.5, 0.16)])
        shapes.append(bone_stroke(smooth(mand, 2, False), j(0.08), 1.0, 0.45, 0.016))
    for arch_y, ry in ((0.52, 0.18), (0.6, 0.2)):
        n = int(rng.integers(10, 15))
        for t in np.linspace(-0.85, 0.85, n):
            c = P(0.28 * np.sin(t), arch_y + ry * (1 - np.cos(t)) * 0.4)
            shapes.append(bone(rounded_rect(c, 0.018, 0.04, 0.01), 1.2, 1.0, 0.0, False))
    sites = [(P(-0.3, -0.85), P(-0.55, -0.6), 0.04)]
    return Anatomy(shapes, sites, None, "PA", False)
