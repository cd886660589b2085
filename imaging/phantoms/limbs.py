"""Paired-limb regions (hand, wrist, knee, foot), drawn as a RIGHT limb in PA/AP view.

Display convention: the patient faces the viewer, so on a right limb the lateral side
(thumb, fibula) is on the image left; the caller mirrors for a left limb.
"""
from __future__ import annotations

import numpy as np

from .shapes import (
    Anatomy, Jitter, P, Shape, bone, capsule, direction, ellipse, long_bone, metal, smooth, soft, zoom,
)

SOFT = 0.32  # envelope density; kept similar across regions so soft tissue is not a region cue


def _ray(j: Jitter, base, angle, lengths, widths, gap, finger_angle) -> tuple[list[Shape], np.ndarray]:
    """One metacarpal/metatarsal plus its phalanges, joint gaps included.

    ``lengths``: (metacarpal, proximal, [middle], distal); ``widths``: matching
    (base, shaft, head) half widths. Returns the bones and the fingertip.
    """
    shapes = []
    p = np.asarray(base, float)
    for i, (length, (hb, hm, hh)) in enumerate(zip(lengths, widths)):
        ang = angle if i == 0 else finger_angle
        q = p + direction(ang) * j(length)
        h1 = hh * 1.1 if i == len(lengths) - 1 else hh  # distal tuft
        shapes.append(bone(long_bone(p, q, j(hb, 0.08), j(hm, 0.08), j(h1, 0.08)), 1.0, 0.45, 0.016))
        p = q + direction(ang) * j(gap, 0.3)
    return shapes, p


def hand(rng: np.random.Generator) -> Anatomy:
    j = Jitter(rng)
    shapes: list[Shape] = []
    spread = j.add(0, 4)
    # base x, base y, ray angle, lengths (MC, PP, [MP], DP), width scale
    rays = [
        (-0.21, 0.51, -38, (0.30, 0.23, 0.17), 1.12),
        (-0.12, 0.41, -8, (0.50, 0.31, 0.19, 0.14), 1.0),
        (-0.02, 0.39, -1, (0.48, 0.34, 0.22, 0.15), 1.0),
        (0.08, 0.41, 6, (0.44, 0.31, 0.20, 0.14), 0.95),
        (0.17, 0.45, 13, (0.40, 0.25, 0.15, 0.13), 0.86),
    ]
    base_w = [(0.046, 0.027, 0.047), (0.042, 0.026, 0.035), (0.034, 0.021, 0.028), (0.026, 0.014, 0.02)]
    tips, heads = [], []
    for k, (bx, by, ang, lens, ws) in enumerate(rays):
        ang = j.add(ang, 3)
        fang = ang * (1.3 if k else 1.1) + (spread * (k - 2) / 2 if k else j.add(0, 6))
        widths = [tuple(w * ws for w in base_w[0])]
        widths += [tuple(w * ws for w in base_w[i]) for i in ((1, 3) if k == 0 else (1, 2, 3))]
        bones, tip = _ray(j, (bx, by), ang, lens, widths, 0.024, fang)
        shapes += bones
        heads.append(np.asarray((bx, by)) + direction(ang) * lens[0])
        tips.append(tip)
        # finger soft tissue follows the phalanges
        shapes.append(soft(capsule(heads[-1], tip + direction(fang) * 0.02, 0.062 * ws), SOFT, 1))
        if k == 0 and j.chance(0.7):  # thumb sesamoid
            shapes.append(bone(ellipse(heads[-1] + P(0.03, 0.02), 0.018, 0.015), 0.9, 0.5, 0.01, False))
    palm = smooth([(-0.27, 0.68), (-0.32, 0.47), heads[0], heads[1] + P(-0.03, -0.02), heads[2] + P(0, -0.03),
                   heads[3] + P(0.01, -0.02), heads[4] + P(0.05, -0.01), (0.27, 0.38), (0.23, 0.68)], 2)
    shapes.append(soft(palm, SOFT, 1))
    shapes += _carpals(j)
    shapes += _forearm(j, 1.7)
    shapes.append(soft(smooth([(-0.25, 0.62), (0.21, 0.62), (0.29, 1.0), (0.28, 1.8), (-0.35, 1.8), (-0.34, 1.0)],
                              1), SOFT, 1))  # forearm
    sites = [(P(-0.08, 1.05), P(-0.08, 1.5), 0.08), (P(-0.12, 0.38), P(-0.2, -0.05), 0.03)]
    return Anatomy(shapes, sites, None, "PA", True)


def _carpals(j: Jitter) -> list[Shape]:
    """Two rows of small overlapping bones: the cluster that makes a wrist a wrist."""
    spec = [  # centre, half axes, angle
        ((-0.19, 0.575), (0.062, 0.052), 20),  # trapezium
        ((-0.105, 0.52), (0.043, 0.045), 0),  # trapezoid
        ((-0.01, 0.56), (0.052, 0.085), 0),  # capitate
        ((0.10, 0.54), (0.055, 0.075), -15),  # hamate
        ((-0.15, 0.675), (0.095, 0.048), 50),  # scaphoid
        ((-0.03, 0.70), (0.06, 0.055), 0),  # lunate
        ((0.085, 0.67), (0.05, 0.045), 0),  # triquetrum
    ]
    out = []
    for (cx, cy), (ax, ay), ang in spec:
        out.append(bone(ellipse((j.add(cx, 0.01), j.add(cy, 0.01)), j(ax), j(ay), j.add(ang, 8), 24),
                        0.95, 0.5, 0.012))
    if j.chance(0.85):  # pisiform, superimposed on triquetrum
        out.append(bone(ellipse((0.12, 0.645), j(0.035), j(0.032), 0, 18), 0.8, 0.45, 0.01))
    return out


def _forearm(j: Jitter, bottom: float) -> list[Shape]:
    radius = smooth([(-0.255, 0.72), (-0.18, 0.755), (-0.06, 0.77), (0.03, 0.765), (0.045, 0.83), (0.0, 0.97),
                     (-0.01, bottom), (-0.16, bottom), (-0.17, 0.97), (-0.235, 0.84)], 2)
    ulna_drop = j.add(0.0, 0.02)
    ulna = smooth([(0.07, 0.78 + ulna_drop), (0.13, 0.765 + ulna_drop), (0.185, 0.74 + ulna_drop),
                   (0.19, 0.80 + ulna_drop), (0.16, 0.9), (0.14, bottom), (0.07, bottom), (0.06, 0.9)], 2)
    w = j(1.0, 0.06)
    return [bone(radius * np.array([w, 1.0]), 1.0, 0.45, 0.02), bone(ulna * np.array([w, 1.0]), 1.0, 0.45, 0.02)]


def wrist(rng: np.random.Generator) -> Anatomy:
    """The hand geometry zoomed ~2x on the carpus: carpal cluster, distal radius/ulna and
    metacarpal bases fill the field, the fingers fall outside it."""
    a = hand(rng)
    a.plate_sites = a.plate_sites[:1]  # the radius; the metacarpal site leaves the field
    return zoom(a, 2.1, centre=(-0.03, 0.66))


def knee(rng: np.random.Generator) -> Anatomy:
    j = Jitter(rng)
    w = j(1.0, 0.08)
    sx = np.array([w, 1.0])
    femur = smooth([(-0.2, -1.6), (-0.21, -0.6), (-0.3, -0.36), (-0.42, -0.17), (-0.45, -0.02), (-0.40, 0.06),
                    (-0.26, 0.085), (-0.13, 0.05), (-0.07, -0.04), (0.06, -0.04), (0.12, 0.05), (0.27, 0.095),
                    (0.42, 0.06), (0.47, -0.05), (0.44, -0.2), (0.3, -0.38), (0.21, -0.6), (0.2, -1.6)], 2)
    gap = j(0.035, 0.3)
    tibia = smooth([(-0.43, 0.14), (-0.3, 0.115), (-0.1, 0.125), (-0.05, 0.06), (-0.01, 0.115), (0.03, 0.055),
                    (0.09, 0.125), (0.3, 0.115), (0.45, 0.14), (0.44, 0.24), (0.3, 0.38), (0.19, 0.6),
                    (0.17, 1.6), (-0.17, 1.6), (-0.2, 0.6), (-0.3, 0.38), (-0.42, 0.26)], 2) + P(0, gap - 0.035)
    shapes = [
        soft(smooth([(-0.68, -1.6), (-0.7, -0.3), (-0.66, 0.3), (-0.56, 1.6), (0.56, 1.6), (0.66, 0.3),
                     (0.7, -0.3), (0.68, -1.6)], 1) * sx, SOFT, 1),
        bone(femur * sx, 1.0, 0.42, 0.024),
        bone(tibia * sx, 1.0, 0.42, 0.024),
        bone(ellipse((-0.43 * w, j(0.33)), j(0.075), j(0.07), 0, 24), 0.95, 0.45, 0.016),  # fibular head
        bone(long_bone(P(-0.44 * w, 0.35), P(-0.47 * w, 1.6), 0.055, 0.04, 0.05), 1.0, 0.45, 0.016),
        # patella is superimposed on the femur in AP: faint, oval
        bone(ellipse((j.add(0.0, 0.03), j.add(-0.12, 0.04)), j(0.16), j(0.2), 0, 30), 0.45, 0.3, 0.02),
    ]
    if j.chance(0.3):  # fabella
        shapes.append(bone(ellipse((-0.3 * w, -0.12), 0.03, 0.035, 0, 16), 0.8, 0.5, 0.01, False))
    sites = [(P(0.0, -0.6), P(0.0, -1.4), 0.2 * w), (P(0.0, 0.6), P(0.0, 1.4), 0.18 * w)]
    return Anatomy(shapes, sites, _knee_prosthesis(w), "AP", True)


def _knee_prosthesis(w: float):
    def build(rng: np.random.Generator) -> list[Shape]:
        fem = smooth([(-0.42, -0.25), (-0.44, 0.0), (-0.38, 0.07), (-0.1, 0.06), (0.1, 0.06), (0.4, 0.08),
                      (0.46, 0.0), (0.44, -0.25)], 2, closed=False) * np.array([w, 1.0])
        tray = np.array([(-0.42, 0.13), (0.44, 0.13), (0.44, 0.17), (-0.42, 0.17)]) * np.array([w, 1.0])
        stem = np.array([(-0.05, 0.17), (0.05, 0.17), (0.035, 0.55), (-0.035, 0.55)])
        return [metal(fem, 5.0, width=0.05, closed=False), metal(tray, 5.0), metal(stem, 5.0)]

    return build


def foot(rng: np.random.Generator) -> Anatomy:
    j = Jitter(rng)
    shapes: list[Shape] = []
    # hallux on the image left for a right foot seen dorsoplantar, toes up
    rays = [
        (-0.18, 0.06, -4, (0.42, 0.17, 0.12), 1.45),
        (-0.075, 0.0, 0, (0.52, 0.11, 0.05, 0.05), 0.95),
        (0.025, 0.04, 4, (0.48, 0.10, 0.048, 0.048), 0.9),
        (0.115, 0.09, 8, (0.45, 0.095, 0.045, 0.045), 0.88),
        (0.2, 0.15, 13, (0.40, 0.09, 0.04, 0.045), 0.9),
    ]
    mt_w = (0.042, 0.024, 0.042)
    toe_w = [(0.036, 0.027, 0.032), (0.03, 0.026, 0.028), (0.029, 0.022, 0.026)]
    heads = []
    for k, (bx, by, ang, lens, ws) in enumerate(rays):
        ang = j.add(ang, 3)
        phalanges = (0, 2) if k == 0 else (0, 1, 2)  # the hallux has no middle phalanx
        widths = [tuple(v * ws for v in mt_w)] + [tuple(v * ws for v in toe_w[i]) for i in phalanges]
        bones, tip = _ray(j, (bx, by), ang, lens, widths, 0.016, ang * 1.2 + j.add(0, 3))
        shapes += bones
        head = np.asarray((bx, by)) + direction(ang) * lens[0]
        heads.append(head)
        shapes.append(soft(capsule(head, tip + direction(ang) * 0.03, 0.055 * ws ** 0.5), SOFT, 1))
    for dx in (-0.035, 0.03):  # hallux sesamoids under the first metatarsal head
        shapes.append(bone(ellipse(heads[0] + P(dx, 0.05), 0.022, 0.03, 0, 16), 0.9, 0.5, 0.01, False))
    shapes.append(bone(ellipse((0.26, 0.2), 0.045, 0.035, 30, 18), 0.9, 0.45, 0.012))  # 5th MT tuberosity
    tarsals = [
        ((-0.18, 0.17), (0.068, 0.085), 0),  # medial cuneiform
        ((-0.075, 0.115), (0.048, 0.058), 0),  # intermediate cuneiform
        ((0.03, 0.15), (0.052, 0.065), 0),  # lateral cuneiform
        ((0.17, 0.28), (0.095, 0.105), -15),  # cuboid
        ((-0.1, 0.29), (0.145, 0.07), -10),  # navicular
        ((-0.05, 0.47), (0.17, 0.15), 0),  # talus head/neck
        ((0.06, 0.68), (0.18, 0.26), -8),  # calcaneus
    ]
    for (cx, cy), (ax, ay), ang in tarsals:
        shapes.append(bone(ellipse((j.add(cx, 0.01), j.add(cy, 0.01)), j(ax), j(ay), j.add(ang, 6), 28),
                           0.95, 0.45, 0.014))
    outline = smooth([(-0.32, -0.35), (-0.3, 0.2), (-0.22, 0.6), (-0.1, 0.92), (0.1, 0.95), (0.24, 0.7),
                      (0.33, 0.2), (0.33, -0.05), heads[4] + P(0.05, 0), heads[2] + P(0, -0.05),
                      heads[0] + P(-0.02, -0.05)], 2)
    shapes.insert(0, soft(outline, SOFT, 1))
    sites = [(heads[0] + P(0.0, 0.05), P(-0.18, 0.05), 0.05)]
    return Anatomy(shapes, sites, None, "AP", True)
