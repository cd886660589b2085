"""De-identification of DICOM datasets before anything leaves the reader.

Follows PS3.15 Annex E, Table E.1-1: the Basic Application Level Confidentiality Profile (113100)
with the Retain Longitudinal Temporal Information Modified Dates Option (113107) and the Retain
Patient Characteristics Option (113108, sex and age only). Every replacement is keyed by the
installation secret, so the same patient, UID or date maps to the same value across runs and
processes, and nobody without the secret can reverse or recompute it.

Choices the profile leaves open, made here:

* Mixed table actions collapse to what can never leak: X/Z, X/Z/D and Z/D empty the value, X/D
  removes it, D on a sequence empties the sequence, D on text writes ``ANONYMIZED``.
* Dates (DA, DT) are shifted by a per-patient offset of -3650..-1 whole days; times of day (TM and
  the time part of DT) are kept, because a whole-day shift already hides the real date and
  radiographs taken minutes apart stay ordered. Values that do not parse are emptied.
* PatientBirthDate is emptied (the profile's Z; the longitudinal option does not cover it).
* PatientSex and PatientAge are kept (option 113108); ages of 90 years or more become ``090Y``
  (HIPAA Safe Harbor aggregates ages over 89).
* PatientID and PatientName become the patient pseudonym; PatientID is always written, so every
  image carries the key that keeps one patient in one data split.
* All private elements, curves (50xx), overlays (60xx), group lengths, command elements and
  elements pydicom could not give a VR (UN) are removed.
* Pixel data is passed through untouched: text burned into the pixels is not detected.
"""

from __future__ import annotations

import copy
import datetime as dt
import hashlib
import hmac
import re

from pydicom.datadict import dictionary_VR, keyword_for_tag
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.multival import MultiValue
from pydicom.sequence import Sequence

# The list of attributes in Table E.1-1 comes from dicom-anonymizer, which regenerates it from
# each release of the standard; its anonymize_dataset() is not used because it draws random
# unkeyed UIDs, sets dates to 00010101, leaves listed attributes inside sequences alone and
# edits the dataset in place.
from dicomanonymizer.dicomfields_selector import dicom_anonymization_database_selector

_TABLE_RELEASE = "dicomfields_2026c"

DEIDENTIFICATION_METHOD = (  # LO is limited to 64 characters, so one value per component
    "samx basic profile (PS3.15 E.1-1)",
    "retain-longitudinal-with-modified-dates",
    "retain-patient-characteristics (sex, age)",
)
DEIDENTIFICATION_CODES = (
    ("113100", "Basic Application Confidentiality Profile"),
    ("113107", "Retain Longitudinal Temporal Information Modified Dates Option"),
    ("113108", "Retain Patient Characteristics Option"),
)
MAX_DATE_SHIFT_DAYS = 3650

# Table category -> samx action, in dicom-anonymizer's own precedence order (later wins).
# X remove, Z empty, D dummy value, U new UID, K keep (sequence items are cleaned).
_CATEGORY_ACTIONS = (
    ("D_TAGS", "D"),
    ("Z_TAGS", "Z"),
    ("X_TAGS", "X"),
    ("U_TAGS", "U"),
    ("Z_D_TAGS", "Z"),
    ("X_Z_TAGS", "Z"),
    ("X_D_TAGS", "X"),
    ("X_Z_D_TAGS", "Z"),
    ("X_Z_U_STAR_TAGS", "K"),  # referenced image sequences: keep, replace the UIDs inside
)

# samx's options and its own output attributes, which win over the table.
_OVERRIDES = {
    0x00100020: "PSEUDONYM",  # PatientID
    0x00100010: "PSEUDONYM",  # PatientName
    0x00100030: "Z",  # PatientBirthDate: not shifted, emptied
    0x00100032: "X",  # PatientBirthTime
    0x00100040: "K",  # PatientSex (113108)
    0x00101010: "AGE",  # PatientAge (113108)
    0x00120062: "X",  # PatientIdentityRemoved        } written afresh
    0x00120063: "X",  # DeidentificationMethod        } at the top level
    0x00120064: "X",  # DeidentificationMethodCodeSequence
    0x00280303: "X",  # LongitudinalTemporalInformationModified
}

# File meta elements that describe the encoding, not the patient or the sending site.
_META_KEPT = frozenset(
    {
        0x00020000,  # FileMetaInformationGroupLength (recomputed on write)
        0x00020001,  # FileMetaInformationVersion
        0x00020002,  # MediaStorageSOPClassUID
        0x00020003,  # MediaStorageSOPInstanceUID (replaced)
        0x00020010,  # TransferSyntaxUID
        0x00020012,  # ImplementationClassUID
        0x00020013,  # ImplementationVersionName
    }
)

# UIDs that name a class, encoding or vocabulary rather than an instance stay as they are.
_NON_INSTANCE_UID = re.compile(r".*(Class|TransferSyntax).*|CodingSchemeUID|ContextUID|MappingResourceUID")
_WELL_KNOWN_UID_ROOT = "1.2.840.10008."
_TEXT_VRS = frozenset({"AE", "CS", "LO", "LT", "PN", "SH", "ST", "UC", "UT"})
_DUMMY_TEXT = "ANONYMIZED"

_DA = re.compile(r"(\d{4})\.?(\d{2})\.?(\d{2})")  # also ACR-NEMA YYYY.MM.DD
_DT = re.compile(r"(\d{4}(?:\d{2}(?:\d{2})?)?)(\d{2}(?:\d{2}(?:\d{2}(?:\.\d{1,6})?)?)?)?([+-]\d{4})?")
_TM = re.compile(r"([01]\d|2[0-3])(:?[0-5]\d(:?([0-5]\d|60)(\.\d{1,6})?)?)?")  # also ACR-NEMA HH:MM:SS
_AS = re.compile(r"(\d{3})([DWMY])")


def _load_table() -> tuple[dict[int, str], list[tuple[int, int, int, int, str]]]:
    exact: dict[int, str] = {}
    masked: list[tuple[int, int, int, int, str]] = []
    table = dicom_anonymization_database_selector(_TABLE_RELEASE)
    for category, action in _CATEGORY_ACTIONS:
        for entry in table[category]:
            if len(entry) == 2:
                exact[(entry[0] << 16) | entry[1]] = action
            else:  # repeating groups: (group, element, group mask, element mask)
                masked.append((*entry, action))
    return exact, masked


_TABLE, _TABLE_MASKED = _load_table()


def _table_action(tag: int) -> str | None:
    action = _TABLE.get(tag)
    if action is None:
        group, element = tag >> 16, tag & 0xFFFF
        for g, e, gmask, emask, masked_action in _TABLE_MASKED:
            if group & gmask == g & gmask and element & emask == e & emask:
                return masked_action
    return action


def _dropped_by_tag(tag: int) -> bool:
    """Elements removed without reading their value (a malformed private value cannot stop us)."""
    group, element = tag >> 16, tag & 0xFFFF
    return (
        group % 2 == 1  # private, including private creators
        or element == 0  # group lengths go stale once anything changes
        or group in (0x0000, 0x0002)  # command elements; file meta is handled on its own
        or 0x5000 <= group <= 0x50FF  # curves
        or 0x6000 <= group <= 0x60FF  # overlays: bitmaps and labels can carry names
    )


def _strings(value) -> list[str]:
    if value is None:
        return []
    if isinstance(value, (MultiValue, list, tuple)):
        return [_one_string(v) for v in value]
    return [_one_string(value)]


def _one_string(value) -> str:
    if isinstance(value, bytes):
        return value.decode("latin-1")
    return "" if value is None else str(value)


def _text(ds: Dataset, keyword: str) -> str | None:
    try:
        value = ds.get(keyword)
    except Exception:  # an unreadable value identifies nobody
        return None
    joined = "\\".join(s.strip() for s in _strings(value)).strip("\\ ")
    return joined or None


def _values(parts: list[str]):
    """pydicom value for a list of strings: empty, single or multi-valued."""
    if not parts or parts == [""]:
        return None
    return parts[0] if len(parts) == 1 else parts


def _shift_yyyymmdd(date: dt.date, days: int, precision: int) -> str:
    try:
        return (date + dt.timedelta(days=days)).strftime("%Y%m%d")[:precision]
    except OverflowError:
        return ""


class Deidentifier:
    """Keyed, deterministic de-identification for one installation."""

    def __init__(self, secret: bytes):
        if not isinstance(secret, (bytes, bytearray)) or len(secret) < 16:
            raise ValueError("the de-identification secret must be at least 16 random bytes")
        self._secret = bytes(secret)

    def _digest(self, purpose: str, value: str) -> bytes:
        message = purpose.encode() + b"\0" + value.encode("utf-8", "surrogatepass")
        return hmac.new(self._secret, message, hashlib.sha256).digest()

    # ------------------------------------------------------------------ keyed replacements

    def uid(self, uid: str) -> str:
        """128 bits of the keyed hash under the UUID-derived root 2.25, at most 44 characters."""
        original = str(uid).strip(" \0")
        return "2.25." + str(int.from_bytes(self._digest("uid", original)[:16], "big"))

    def patient_pseudonym(self, patient_id: str | None, patient_name: str | None = None) -> str:
        """Keyed on the ID when there is one; the normalised name is only a fallback, and a
        patient with neither shares the pseudonym of all other unidentified images."""
        pid = (patient_id or "").strip()
        if pid:
            key = "id:" + pid
        else:
            components = [c.strip() for c in (patient_name or "").upper().split("^")]
            key = "name:" + "^".join(components).rstrip("^")
        return "P" + self._digest("patient", key).hex()[:16]

    def _offset_days(self, patient_key: str) -> int:
        n = int.from_bytes(self._digest("date-offset", patient_key)[:8], "big")
        return -(n % MAX_DATE_SHIFT_DAYS + 1)

    def shift_date(self, yyyymmdd: str, patient_key: str) -> str:
        """Shifted YYYYMMDD, or '' when the value is not a real date (the caller drops it)."""
        match = _DA.fullmatch(str(yyyymmdd).strip())
        if not match:
            return ""
        try:
            date = dt.date(*(int(g) for g in match.groups()))
        except ValueError:
            return ""
        return _shift_yyyymmdd(date, self._offset_days(patient_key), 8)

    def _shift_datetime(self, value: str, patient_key: str) -> str:
        """Shifts the date part of a DT at its own precision; time and UTC offset are kept."""
        match = _DT.fullmatch(value.strip())
        if not match:
            return ""
        date_part, time_part, zone = match.group(1), match.group(2) or "", match.group(3) or ""
        padded = date_part + "0101"[len(date_part) - 4 :]
        try:
            date = dt.date(int(padded[:4]), int(padded[4:6]), int(padded[6:8]))
        except ValueError:
            return ""
        shifted = _shift_yyyymmdd(date, self._offset_days(patient_key), len(date_part))
        return shifted + time_part + zone if shifted else ""

    # ------------------------------------------------------------------ datasets

    def dataset(self, ds: Dataset) -> Dataset:
        """Return a de-identified COPY (never modify the input; never touch the file on disk).

        The copy is built element by element rather than deep-copied and edited, so nothing of
        the original survives by accident; pixel data bytes are shared, never decoded."""
        pseudonym = self.patient_pseudonym(_text(ds, "PatientID"), _text(ds, "PatientName"))
        out = self._clean(ds, pseudonym)

        meta = getattr(ds, "file_meta", None)
        if meta is not None:
            out.file_meta = self._clean_meta(meta, pseudonym)
        if getattr(ds, "preamble", None):
            out.preamble = b"\0" * 128  # the original 128 bytes are application-defined
        implicit, little = ds.original_encoding
        out.set_original_encoding(implicit, little, ds.original_character_set)

        out.PatientID = pseudonym
        out.PatientIdentityRemoved = "YES"
        out.DeidentificationMethod = list(DEIDENTIFICATION_METHOD)
        out.DeidentificationMethodCodeSequence = Sequence(
            [_code(value, meaning) for value, meaning in DEIDENTIFICATION_CODES]
        )
        out.LongitudinalTemporalInformationModified = "MODIFIED"
        return out

    def _clean(self, src: Dataset, patient_key: str) -> Dataset:
        out = Dataset()
        identity = None
        if "PatientID" in src or "PatientName" in src:  # a record may name its own patient
            identity = self.patient_pseudonym(_text(src, "PatientID"), _text(src, "PatientName"))
        for raw in list(src.elements()):
            tag = int(raw.tag)
            if _dropped_by_tag(tag):
                continue
            try:
                elem = src[tag]
            except Exception:  # a value pydicom cannot parse cannot be vetted: drop it
                continue
            new = self._element(elem, patient_key, identity or patient_key)
            if new is not None:
                out.add(new)
        return out

    def _clean_meta(self, meta: Dataset, patient_key: str) -> FileMetaDataset:
        out = FileMetaDataset()
        for raw in list(meta.elements()):
            tag = int(raw.tag)
            if tag not in _META_KEPT:
                continue
            try:
                elem = meta[tag]
            except Exception:
                continue
            new = self._element(elem, patient_key, patient_key)
            if new is not None:
                out.add(new)
        return out

    def _element(self, elem: DataElement, patient_key: str, pseudonym: str) -> DataElement | None:
        tag, vr = int(elem.tag), elem.VR
        override = _OVERRIDES.get(tag)
        action = override or _table_action(tag)
        if vr in ("DA", "DT", "TM") and override is None:  # option 113107: C wins over X, Z and D
            shifted = [self._temporal(vr, v, patient_key) for v in _strings(elem.value)]
            return DataElement(tag, vr, _values(shifted))
        if action == "X":
            return None
        if vr == "SQ":
            if action in (None, "K", "U"):
                items = [self._clean(item, patient_key) for item in (elem.value or [])]
                return DataElement(tag, "SQ", Sequence(items))
            return DataElement(tag, "SQ", Sequence())
        if vr == "UN":
            return None  # pydicom could not give it a VR, so its content cannot be vetted
        if action == "PSEUDONYM":
            return DataElement(tag, vr, pseudonym)
        if action == "AGE":
            age = _capped_age(elem.value)
            return DataElement(tag, vr, age) if age else None
        if action == "Z":
            return DataElement(tag, vr, None)
        if vr == "UI":
            uids = [self._uid_value(tag, action, v) for v in _strings(elem.value)]
            return DataElement(tag, vr, _values(uids))
        if action == "U":
            return None  # a UID attribute not encoded as UI
        if action == "D":
            return DataElement(tag, vr, _DUMMY_TEXT if vr in _TEXT_VRS else None)
        if vr == "PN" or _dictionary_vr(tag) == "PN":
            return DataElement(tag, vr, None)
        return copy.deepcopy(elem)

    def _temporal(self, vr: str, value: str, patient_key: str) -> str:
        if not value.strip():
            return ""
        if vr == "DA":
            return self.shift_date(value, patient_key)
        if vr == "DT":
            return self._shift_datetime(value, patient_key)
        return value if _TM.fullmatch(value.strip()) else ""  # times of day are kept

    def _uid_value(self, tag: int, action: str | None, value: str) -> str:
        value = value.strip(" \0")
        if not value or value.startswith(_WELL_KNOWN_UID_ROOT):
            return value
        if action != "U" and _NON_INSTANCE_UID.fullmatch(keyword_for_tag(tag) or ""):
            return value
        return self.uid(value)


def _dictionary_vr(tag: int) -> str | None:
    try:
        return dictionary_VR(tag)
    except KeyError:
        return None


def _capped_age(value) -> str | None:
    match = _AS.fullmatch(_one_string(value).strip())
    if not match:
        return None
    if match.group(2) == "Y" and int(match.group(1)) >= 90:
        return "090Y"
    return match.group(0)


def _code(value: str, meaning: str) -> Dataset:
    item = Dataset()
    item.CodeValue = value
    item.CodingSchemeDesignator = "DCM"
    item.CodeMeaning = meaning
    return item
