"""A real Orthanc (Debian's ``orthanc`` + ``orthanc-dicomweb``) for the PACS tests and
``bench/pacs.py``: its own config, ports and storage in a scratch folder, basic auth on, the
DICOMweb plugin loaded, and samx's listener as a DICOM modality it can push to.

Plain Python (no pytest): the bench imports it too (``sys.path`` holds the repository root).
"""
from __future__ import annotations

import json
import shutil
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

import requests

ORTHANC_BIN = "/usr/sbin/Orthanc"
DICOMWEB_PLUGIN = "/usr/share/orthanc/plugins/libOrthancDicomWeb.so"
USER, PASSWORD = "samx", "orthanc-test-password"
AET = "ORTHANC"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def orthanc_missing() -> str | None:
    """Why Orthanc cannot run here (``make orthanc`` installs it), or None."""
    if shutil.which(ORTHANC_BIN) is None:
        return f"{ORTHANC_BIN} is not installed (`make orthanc` installs Debian's orthanc)"
    if not Path(DICOMWEB_PLUGIN).exists():
        return f"{DICOMWEB_PLUGIN} is missing (`make orthanc` installs Debian's orthanc-dicomweb)"
    return None


@dataclass
class Orthanc:
    """One Orthanc process; ``modalities`` maps a name to (AE title, port) on 127.0.0.1."""

    root: Path
    modalities: dict[str, tuple[str, int]] = field(default_factory=dict)
    http_port: int = field(default_factory=free_port)
    dicom_port: int = field(default_factory=free_port)
    process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def dicomweb_url(self) -> str:
        """What ``samx ingest`` takes: the dicomweb:// form of the plugin's root."""
        return f"dicomweb://127.0.0.1:{self.http_port}/dicom-web"

    @property
    def auth(self) -> tuple[str, str]:
        return USER, PASSWORD

    def start(self, timeout: float = 60) -> Orthanc:
        self.root.mkdir(parents=True, exist_ok=True)
        config = {
            "Name": "samx-test",
            "StorageDirectory": str(self.root / "storage"),
            "IndexDirectory": str(self.root / "index"),
            "StorageCompression": False,
            "HttpPort": self.http_port,
            "DicomPort": self.dicom_port,
            "DicomAet": AET,
            "RemoteAccessAllowed": True,
            "AuthenticationEnabled": True,
            "RegisteredUsers": {USER: PASSWORD},
            "Plugins": [DICOMWEB_PLUGIN],
            "DicomWeb": {"Enable": True, "Root": "/dicom-web/"},
            "DicomModalities": {name: [aet, "127.0.0.1", port] for name, (aet, port) in self.modalities.items()},
            "SaveJobs": False,
            "HttpTimeout": 30,
        }
        path = self.root / "orthanc.json"
        path.write_text(json.dumps(config, indent=1))
        log = (self.root / "orthanc.log").open("wb")
        self.process = subprocess.Popen([ORTHANC_BIN, str(path)], stdout=log, stderr=subprocess.STDOUT,
                                        cwd=self.root, start_new_session=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"Orthanc exited with {self.process.returncode}: "
                                   f"{(self.root / 'orthanc.log').read_text()[-2000:]}")
            try:
                if requests.get(f"{self.url}/system", auth=self.auth, timeout=2).ok:
                    return self
            except requests.ConnectionError:
                pass
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"Orthanc did not answer on {self.url} within {timeout:.0f} s")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None

    def __enter__(self) -> Orthanc:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # ------------------------------------------------------------------ REST

    def upload(self, data: bytes) -> str:
        """POST /instances: Orthanc's id of the stored instance."""
        r = requests.post(f"{self.url}/instances", data=data, auth=self.auth, timeout=60,
                          headers={"Content-Type": "application/dicom"})
        r.raise_for_status()
        return r.json()["ID"]

    def instances(self) -> list[str]:
        r = requests.get(f"{self.url}/instances", auth=self.auth, timeout=30)
        r.raise_for_status()
        return r.json()

    def store_to(self, modality: str, instance_ids: list[str]) -> dict:
        """C-STORE the instances to a configured modality (synchronously)."""
        r = requests.post(f"{self.url}/modalities/{modality}/store", auth=self.auth, timeout=120,
                          json={"Resources": instance_ids, "Synchronous": True})
        r.raise_for_status()
        return r.json()

    def clear(self) -> None:
        """Delete every stored instance (tests share one server)."""
        for pid in requests.get(f"{self.url}/patients", auth=self.auth, timeout=30).json():
            requests.delete(f"{self.url}/patients/{pid}", auth=self.auth, timeout=30).raise_for_status()
