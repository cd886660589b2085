"""Fake patient/study identities: PHI that is unmistakably fake and easy to grep for.

Every string carries the patient's code (and the study number where study-level), so
a de-identification test can search for each value and know whose it is.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

import numpy as np

ALPHABET = "ABCDEFGHJKLMNPQRSTUVWXYZ23456789"
SYLLABLES = ("ka", "zu", "rem", "vo", "lin", "tar", "qui", "sel", "mo", "dra", "fen", "xi", "bor", "nu", "pel", "gax")
PRIVATE_GROUP = 0x0011
PRIVATE_CREATOR = "SAMX PHANTOM"


def _code(rng: np.random.Generator, index: int) -> str:
    """4 random characters + the patient index in base 32: unique within one generation run."""
    head = "".join(ALPHABET[i] for i in rng.integers(0, 32, 4))
    tail = ""
    index += 32
    while index:
        index, r = divmod(index, 32)
        tail = ALPHABET[r] + tail
    return head + tail


def uid(*parts) -> str:
    """Deterministic UUID-derived UID (2.25.<128-bit int>), unique per ``parts``."""
    digest = hashlib.sha256("/".join(["samx-phantoms", *map(str, parts)]).encode()).digest()
    return f"2.25.{int.from_bytes(digest[:16], 'big')}"


def _name(rng: np.random.Generator) -> str:
    return "".join(SYLLABLES[i] for i in rng.integers(0, len(SYLLABLES), int(rng.integers(2, 4)))).capitalize()


def _date(rng: np.random.Generator, y0: int, y1: int) -> tuple[int, int, int]:
    return int(rng.integers(y0, y1)), int(rng.integers(1, 13)), int(rng.integers(1, 29))


def _time(rng: np.random.Generator) -> str:
    return f"{int(rng.integers(7, 20)):02d}{int(rng.integers(0, 60)):02d}{int(rng.integers(0, 60)):02d}." \
           f"{int(rng.integers(0, 10**6)):06d}"


@dataclass
class Identity:
    """DICOM keyword -> value for every identifying tag, plus the private PHI string and UIDs."""

    tags: dict[str, str]
    private: str
    patient_id: str
    study_uid: str
    series_uid: str
    sop_uid: str
    phi: list[str] = field(default_factory=list)


def make_identity(root: int, patient: int, study: int, image: int) -> Identity:
    """Deterministic in (root, patient, study, image); patient- and study-level values
    are shared by every image of that patient / study."""
    prng = np.random.default_rng([root, 1, patient])
    srng = np.random.default_rng([root, 2, patient, study])
    irng = np.random.default_rng([root, 3, image])
    code = _code(prng, patient)
    fam, given = _name(prng), _name(prng)
    by, bm, bd = _date(prng, 1930, 2010)
    sex = "MF"[int(prng.integers(2))]
    address = f"PHI {int(prng.integers(1, 999))} {fam} Street, Phitown {code}"
    sy, sm, sd = _date(srng, max(by + 1, 1995), 2025)
    age = max(0, sy - by - ((sm, sd) < (bm, bd)))
    study_date = f"{sy:04d}{sm:02d}{sd:02d}"
    study_time = _time(srng)
    tags = {
        "PatientName": f"PHI{fam}^{given}^{code}",
        "PatientID": f"PHIID-{code}",
        "OtherPatientIDs": f"PHIOTHER-{code}",
        "PatientBirthDate": f"{by:04d}{bm:02d}{bd:02d}",
        "PatientSex": sex,
        "PatientAge": f"{age:03d}Y",
        "PatientAddress": address,
        "InstitutionName": f"PHI Institution {code}",
        "InstitutionAddress": f"PHI {int(srng.integers(1, 99))} Hospital Road, Phiville {code}",
        "ReferringPhysicianName": f"PHIREF{_name(srng)}^{_name(srng)}^{code}{study}",
        "PerformingPhysicianName": f"PHIPERF{_name(srng)}^{_name(srng)}^{code}{study}",
        "OperatorsName": f"PHIOP{_name(srng)}^{_name(srng)}^{code}{study}",
        "AccessionNumber": f"PHIACC{code}{study}",
        "StudyID": f"PHIS{code}{study}"[:16],
        "StudyDate": study_date,
        "SeriesDate": study_date,
        "AcquisitionDate": study_date,
        "ContentDate": study_date,
        "StudyTime": study_time,
        "SeriesTime": study_time,
        "AcquisitionTime": _time(irng),
        "ContentTime": _time(irng),
        "StationName": f"PHISTN{code}"[:16],
        "DeviceSerialNumber": f"PHISN-{code}-{study}",
        "StudyDescription": f"PHI study {code}-{study}",
        "SeriesDescription": f"PHI series {code}-{study}",
        "ImageComments": f"PHI comment: {fam} {given} {code} image {image}",
    }
    private = f"PHI-PRIVATE {code}-{study}-{image}"
    # single-letter sex is not greppable; every other value is listed
    phi = list(dict.fromkeys(v for k, v in tags.items() if k != "PatientSex")) + [private]
    return Identity(tags, private, tags["PatientID"], uid(root, patient, study, "study"),
                    uid(root, patient, study, "series"), uid(root, patient, study, image, "sop"), phi)
