"""Radiographs from a PACS: pulled over DICOMweb (QIDO-RS, WADO-RS) or pushed to samx's DICOM
listener (C-STORE); both hand the bytes to the normal ingest and keep a ledger of what came."""
