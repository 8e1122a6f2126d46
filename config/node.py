"""Configuration of the receiving node: AE titles, network, accepted objects, storage, completion, audit.

Every key is defined exactly once here, with its default and a description; ``config/example.yaml`` shows
the same keys annotated for IT. Validation messages are short reasons (``longer than 16 characters``); the
loader prefixes them with the file and the key path.
"""

from __future__ import annotations

import re
from enum import StrEnum
from pathlib import Path
from typing import Annotated

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, field_validator, model_validator
from pydicom._uid_dict import UID_dictionary
from pynetdicom import sop_class as _registers_newer_uids  # noqa: F401

#: A DICOM UI value: dot-separated digit components, at most 64 characters.
_UID_RE = re.compile(r"^[0-9]+(\.[0-9]+)*$")


def check_ae_title(value: str) -> str:
    """Validate an AE title (PS3.5 AE VR): 1-16 characters, no backslash, no control characters."""
    if not isinstance(value, str):
        raise ValueError("must be a text AE title")
    stripped = value.strip(" ")
    if not stripped:
        raise ValueError("must not be empty")
    if len(value) > 16:
        raise ValueError("longer than 16 characters")
    if "\\" in value:
        raise ValueError("must not contain a backslash")
    if any(ord(ch) < 0x20 or ord(ch) == 0x7F for ch in value):
        raise ValueError("must not contain control characters")
    if any(ord(ch) > 0x7E for ch in value):
        raise ValueError("must contain only ASCII characters")
    return stripped


AETitle = Annotated[str, AfterValidator(check_ae_title)]


def _resolve_uid(value: str, kind: str) -> str:
    """Accept a pydicom keyword (``MRImageStorage``) or a UID of the given ``kind`` and return the UID.

    pynetdicom adds UIDs newer than pydicom's dictionary (JPEG XL, ...) when imported; it is imported above
    so that the same file validates the same way whatever else the process imported first."""
    for uid, entry in UID_dictionary.items():
        if entry[4] == value and entry[1] == kind:
            return uid
    if _UID_RE.fullmatch(value) and len(value) <= 64:
        known = UID_dictionary.get(value)
        if known is not None and known[1] != kind:
            raise ValueError(f"{value} is a {known[1]}, not a {kind}")
        return value
    raise ValueError(
        f"unknown {kind} {value!r} (give a UID or a keyword such as "
        f"{'MRImageStorage' if kind == 'SOP Class' else 'ExplicitVRLittleEndian'})"
    )


def _sop_class(value: str) -> str:
    return _resolve_uid(value, "SOP Class")


def _transfer_syntax(value: str) -> str:
    return _resolve_uid(value, "Transfer Syntax")


SOPClass = Annotated[str, AfterValidator(_sop_class)]
TransferSyntax = Annotated[str, AfterValidator(_transfer_syntax)]

DEFAULT_SOP_CLASSES: tuple[str, ...] = (
    "MRImageStorage",
    "EnhancedMRImageStorage",
    "CTImageStorage",
    "EnhancedCTImageStorage",
)

DEFAULT_TRANSFER_SYNTAXES: tuple[str, ...] = (
    # in order of preference: where a presentation context offers several, the first listed here wins
    "ExplicitVRLittleEndian",
    "ImplicitVRLittleEndian",
    "DeflatedExplicitVRLittleEndian",
    "ExplicitVRBigEndian",
    "JPEGLSLossless",
    "JPEG2000Lossless",
    "JPEGLosslessSV1",
    "JPEGLossless",
    "RLELossless",
    "JPEGLSNearLossless",
    "JPEG2000",
    "JPEGExtended12Bit",
    "JPEGBaseline8Bit",
)


class CallingPeer(BaseModel):
    """A calling AE title allowed to send, optionally only from one IP address or host name."""

    model_config = ConfigDict(extra="forbid")

    ae_title: AETitle = Field(description="Calling AE title of the peer (the PACS, modality or router).")
    host: str | None = Field(
        default=None,
        description="IP address or host name the peer must connect from; unset: any address.",
    )

    @field_validator("host")
    @classmethod
    def _host(cls, value: str | None) -> str | None:
        if value is not None and (not value.strip() or any(c.isspace() for c in value.strip())):
            raise ValueError("must be an IP address or a host name without spaces")
        return value.strip() if value is not None else None


class CalledAE(BaseModel):
    """One AE title SegNode answers to, and who may call it."""

    model_config = ConfigDict(extra="forbid")

    ae_title: AETitle = Field(description="Called AE title that peers address SegNode by.")
    allowed_callers: list[CallingPeer] = Field(
        default_factory=list,
        description="Calling AE titles (optionally with host) allowed to open associations to this AE title.",
    )
    accept_any_caller: bool = Field(
        default=False,
        description="Accept any calling AE title (for test set-ups only; a clinical node lists its peers).",
    )


class NodeConfig(BaseModel):
    """The AE titles of the node and the peers allowed to call each of them."""

    model_config = ConfigDict(extra="forbid")

    ae_titles: list[CalledAE] = Field(
        default_factory=lambda: [CalledAE(ae_title="SEGNODE")],
        description="Called AE titles served on the one port; an association to any other is rejected.",
    )

    @field_validator("ae_titles")
    @classmethod
    def _unique(cls, value: list[CalledAE]) -> list[CalledAE]:
        if not value:
            raise ValueError("at least one AE title is required")
        seen: set[str] = set()
        for item in value:
            if item.ae_title in seen:
                raise ValueError(f"AE title {item.ae_title!r} is listed twice")
            seen.add(item.ae_title)
        return value


class TlsVersion(StrEnum):
    tls1_2 = "TLSv1.2"
    tls1_3 = "TLSv1.3"


class TlsConfig(BaseModel):
    """DICOM over TLS (PS3.15 Annex B, BCP 195): the SCP's certificate and optional client verification."""

    model_config = ConfigDict(extra="forbid")

    enabled: bool = Field(
        default=False, description="Accept only TLS connections on the port (plain TCP is then refused)."
    )
    certificate: Path | None = Field(
        default=None, description="PEM file with the node's certificate (and any intermediate certificates)."
    )
    private_key: Path | None = Field(
        default=None, description="PEM file with the private key of the certificate (unencrypted)."
    )
    ca_certificates: Path | None = Field(
        default=None, description="PEM file of the CA certificates that client certificates must chain to."
    )
    require_client_certificate: bool = Field(
        default=False,
        description="Refuse peers that do not present a certificate signed by one of ca_certificates.",
    )
    min_version: TlsVersion = Field(
        default=TlsVersion.tls1_2, description="Lowest TLS protocol version accepted (TLSv1.2 or TLSv1.3)."
    )

    @model_validator(mode="after")
    def _complete(self) -> TlsConfig:
        if self.enabled and (self.certificate is None or self.private_key is None):
            raise ValueError("TLS is enabled: certificate and private_key are required")
        if self.require_client_certificate and self.ca_certificates is None:
            raise ValueError("require_client_certificate needs ca_certificates to verify clients against")
        return self


class NetworkConfig(BaseModel):
    """Where and how the SCP listens."""

    model_config = ConfigDict(extra="forbid")

    bind_address: str = Field(default="0.0.0.0", description="Address the SCP listens on.")
    port: int = Field(
        default=11112, ge=0, le=65535, description="TCP port (0: an ephemeral port, for tests)."
    )
    max_associations: int = Field(
        default=10, ge=1, le=1000, description="Concurrent associations; more are rejected (local limit)."
    )
    acse_timeout_s: float = Field(default=30.0, gt=0, description="Seconds to wait for association messages.")
    dimse_timeout_s: float = Field(default=60.0, gt=0, description="Seconds to wait for DIMSE messages.")
    network_timeout_s: float = Field(default=60.0, gt=0, description="Seconds of silence before closing.")
    max_pdu_size: int = Field(
        default=262144,
        ge=0,
        description="Maximum PDU size received, in bytes (0: unlimited; otherwise at least 4096).",
    )
    tls: TlsConfig = Field(default_factory=TlsConfig, description="DICOM over TLS on the SCP's port.")

    @field_validator("max_pdu_size")
    @classmethod
    def _pdu(cls, value: int) -> int:
        if 0 < value < 4096:
            raise ValueError("must be 0 (unlimited) or at least 4096 bytes")
        return value


class AcceptConfig(BaseModel):
    """What SegNode accepts: storage SOP classes and transfer syntaxes (per presentation context)."""

    model_config = ConfigDict(extra="forbid")

    sop_classes: list[SOPClass] = Field(
        default_factory=lambda: [_sop_class(k) for k in DEFAULT_SOP_CLASSES],
        description="Storage SOP classes accepted (keyword or UID); other presentation contexts are refused.",
    )
    transfer_syntaxes: list[TransferSyntax] = Field(
        default_factory=lambda: [_transfer_syntax(k) for k in DEFAULT_TRANSFER_SYNTAXES],
        description="Transfer syntaxes accepted (keyword or UID), in order of preference; a context "
        "offering none of them is refused.",
    )

    @field_validator("sop_classes", "transfer_syntaxes")
    @classmethod
    def _non_empty(cls, value: list[str]) -> list[str]:
        if not value:
            raise ValueError("at least one entry is required")
        return list(dict.fromkeys(value))


class StorageConfig(BaseModel):
    """The spool where received instances are kept."""

    model_config = ConfigDict(extra="forbid")

    spool_dir: Path = Field(default=Path("spool"), description="Folder of received instances.")
    min_free_space_mb: int = Field(
        default=1024,
        ge=0,
        description="Free-space watermark of the spool's file system in MiB; below it instances get 0xA700.",
    )
    max_series_instances: int = Field(
        default=10000,
        ge=1,
        description="Most instances one series may hold in the spool; more new instances of it get 0xA700.",
    )


class CompletionConfig(BaseModel):
    """When a series counts as complete and becomes a job."""

    model_config = ConfigDict(extra="forbid")

    quiet_period_s: float | None = Field(
        default=10.0,
        ge=0,
        description="Seconds without a new instance after which a series is complete (null: not used).",
    )
    on_association_release: bool = Field(
        default=True,
        description="A series is complete when the association that delivered it is released.",
    )
    use_expected_count: bool = Field(
        default=True,
        description="Use a trustworthy instance count from the headers (Images in Acquisition): complete "
        "as soon as it is reached, and do not complete on release before it is reached.",
    )

    @model_validator(mode="after")
    def _can_fire(self) -> CompletionConfig:
        if self.quiet_period_s is None and not self.on_association_release:
            raise ValueError("no rule can complete a series: set quiet_period_s or on_association_release")
        return self


class RetentionConfig(BaseModel):
    """How long received instances and results stay on disk (``dicom_node/jobs/retention.py``)."""

    model_config = ConfigDict(extra="forbid")

    enabled: bool = Field(default=True, description="Delete spooled instances and results after the delays.")
    delivered_hours: float = Field(
        default=24.0,
        gt=0,
        description="Hours after a job ended done (results delivered) before its spooled instances, label "
        "maps and SEG objects are deleted.",
    )
    failed_days: float = Field(
        default=30.0,
        gt=0,
        description="Days after a job ended failed or cancelled before its files are deleted (kept longer "
        "so that it can be retried).",
    )
    sweep_interval_s: float = Field(
        default=600.0, gt=0, description="Seconds between two retention sweeps (and disk space checks)."
    )
    audit_days: int = Field(
        default=3650, ge=1, description="Days audit rows are kept (the retention sweep never deletes them)."
    )

    @model_validator(mode="after")
    def _failed_not_shorter(self) -> RetentionConfig:
        if self.failed_days * 24 < self.delivered_hours:
            raise ValueError("failed_days must not be shorter than delivered_hours")
        return self


class PatientIdMode(StrEnum):
    plain = "plain"
    hashed = "hashed"


class PrivacyConfig(BaseModel):
    """Which patient data the audit database keeps."""

    model_config = ConfigDict(extra="forbid")

    patient_id: PatientIdMode = Field(
        default=PatientIdMode.plain, description="plain: Patient ID as sent; hashed: HMAC-SHA256 of it."
    )
    patient_id_salt: str = Field(
        default="",
        description="Secret key of the patient ID hash (set it with SEGNODE__PRIVACY__PATIENT_ID_SALT).",
    )
    store_patient_name: bool = Field(default=False, description="Store the Patient's Name in the audit DB.")
    store_patient_birth_date: bool = Field(
        default=False, description="Store the Patient's Birth Date in the audit DB."
    )


class DatabaseConfig(BaseModel):
    """The audit database."""

    model_config = ConfigDict(extra="forbid")

    url: str = Field(
        default="sqlite:///segnode.db",
        description="SQLAlchemy URL of the audit database (SQLite file by default; PostgreSQL works too).",
    )

    @field_validator("url")
    @classmethod
    def _url(cls, value: str) -> str:
        from sqlalchemy.engine import make_url
        from sqlalchemy.exc import ArgumentError

        try:
            url = make_url(value)
        except ArgumentError as exc:
            raise ValueError(f"not a SQLAlchemy database URL: {value!r}") from exc
        if url.get_backend_name() not in {"sqlite", "postgresql"}:
            raise ValueError(f"unsupported database {url.get_backend_name()!r} (use sqlite or postgresql)")
        return value
