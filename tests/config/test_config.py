"""The configuration: defaults, example.yaml, environment overrides, and precise messages for bad YAML."""

from __future__ import annotations

from pathlib import Path

import pytest

from config import ConfigError, SegNodeConfig, default_config, load_config
from config.node import AcceptConfig, CompletionConfig, NetworkConfig, PrivacyConfig, StorageConfig
from tests.support.cli import run_segnode
from tests.support.paths import ROOT

EXAMPLE = ROOT / "config" / "example.yaml"

BAD_YAML: list[tuple[str, str, str]] = [
    # (kind, YAML text, the exact message)
    (
        "YAML syntax",
        "network:\n  port: 104\n bind_address: x\n",
        "node.yaml: line 3, column 2: YAML syntax error: expected <block end>, "
        "but found '<block mapping start>'",
    ),
    ("root is not a mapping", "- a\n- b\n", "node.yaml: (root): must be a mapping of keys, not list"),
    (
        "duplicate key",
        "network:\n  port: 104\n  port: 105\n",
        "node.yaml: line 3, column 3: duplicate key 'port' (first at line 2)",
    ),
    (
        "unknown top-level key",
        "netwrok:\n  port: 1\n",
        "node.yaml: netwrok: unknown key (allowed: accept, cluster, completion, database,",
    ),
    (
        "unknown nested key",
        "network:\n  prot: 1\n",
        "node.yaml: network.prot: unknown key (allowed: acse_timeout_s, bind_address, dimse_timeout_s,",
    ),
    (
        "AE title too long",
        "node:\n  ae_titles:\n    - ae_title: SEGNODE\n    - ae_title: ABCDEFGHIJKLMNOPQ\n",
        "node.yaml: node.ae_titles[1].ae_title: longer than 16 characters",
    ),
    (
        "AE title with a backslash",
        "node:\n  ae_titles:\n    - ae_title: 'SEG\\NODE'\n",
        "node.yaml: node.ae_titles[0].ae_title: must not contain a backslash",
    ),
    (
        "AE title with a control character",
        'node:\n  ae_titles:\n    - ae_title: "SEG\\tNODE"\n',
        "node.yaml: node.ae_titles[0].ae_title: must not contain control characters",
    ),
    (
        "AE title listed twice",
        "node:\n  ae_titles:\n    - ae_title: A\n    - ae_title: A\n",
        "node.yaml: node.ae_titles: AE title 'A' is listed twice",
    ),
    (
        "calling AE title too long",
        "node:\n  ae_titles:\n    - ae_title: A\n      allowed_callers:\n"
        "        - ae_title: PACS_OF_THE_BIG_HOSPITAL\n",
        "node.yaml: node.ae_titles[0].allowed_callers[0].ae_title: longer than 16 characters",
    ),
    (
        "port out of range",
        "network:\n  port: 70000\n",
        "node.yaml: network.port: must be <= 65535, not 70000",
    ),
    (
        "port not a number",
        "network:\n  port: eleven\n",
        "node.yaml: network.port: must be an integer, not 'eleven'",
    ),
    (
        "unknown SOP class",
        "accept:\n  sop_classes: [MRImageStorag]\n",
        "node.yaml: accept.sop_classes[0]: unknown SOP Class 'MRImageStorag' "
        "(give a UID or a keyword such as MRImageStorage)",
    ),
    (
        "transfer syntax given as SOP class",
        "accept:\n  sop_classes: ['1.2.840.10008.1.2.1']\n",
        "node.yaml: accept.sop_classes[0]: 1.2.840.10008.1.2.1 is a Transfer Syntax, not a SOP Class",
    ),
    (
        "unknown transfer syntax",
        "accept:\n  transfer_syntaxes: [JPEG2001]\n",
        "node.yaml: accept.transfer_syntaxes[0]: unknown Transfer Syntax 'JPEG2001' "
        "(give a UID or a keyword such as ExplicitVRLittleEndian)",
    ),
    (
        "bad enum value",
        "privacy:\n  patient_id: encrypted\n",
        "node.yaml: privacy.patient_id: must be one of 'plain' or 'hashed', not 'encrypted'",
    ),
    (
        "negative quiet period",
        "completion:\n  quiet_period_s: -1\n",
        "node.yaml: completion.quiet_period_s: must be >= 0.0, not -1",
    ),
    (
        "completion policy that never fires",
        "completion:\n  quiet_period_s: null\n  on_association_release: false\n",
        "node.yaml: completion: no rule can complete a series: set quiet_period_s or on_association_release",
    ),
    (
        "PDU size too small",
        "network:\n  max_pdu_size: 100\n",
        "node.yaml: network.max_pdu_size: must be 0 (unlimited) or at least 4096 bytes",
    ),
    (
        "unsupported database",
        "database:\n  url: 'mysql://x/y'\n",
        "node.yaml: database.url: unsupported database 'mysql' (use sqlite or postgresql)",
    ),
    (
        "not a boolean",
        "privacy:\n  store_patient_name: maybe\n",
        "node.yaml: privacy.store_patient_name: must be true or false, not 'maybe'",
    ),
    (
        "section is not a mapping",
        "storage: /var/spool\n",
        "node.yaml: storage: must be a mapping of keys, not str",
    ),
]


@pytest.mark.parametrize(("kind", "text", "message"), BAD_YAML, ids=[k for k, _t, _m in BAD_YAML])
def test_bad_yaml_gives_a_precise_message(tmp_path: Path, kind: str, text: str, message: str) -> None:
    path = tmp_path / "node.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as caught:
        load_config(path, environ={})
    assert len(caught.value.problems) == 1, caught.value.problems
    assert caught.value.problems[0].startswith(message), (kind, caught.value.problems)


def test_every_problem_is_reported_at_once(tmp_path: Path) -> None:
    path = tmp_path / "node.yaml"
    path.write_text("network:\n  port: -1\n  max_associations: 0\nstorage:\n  min_free_space_mb: -5\n")
    with pytest.raises(ConfigError) as caught:
        load_config(path, environ={})
    assert caught.value.problems == [
        "node.yaml: network.port: must be >= 0, not -1",
        "node.yaml: network.max_associations: must be >= 1, not 0",
        "node.yaml: storage.min_free_space_mb: must be >= 0, not -5",
    ]


def test_unreadable_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"missing\.yaml: cannot read: No such file or directory"):
        load_config(tmp_path / "missing.yaml", environ={})


def test_environment_overrides_paths_and_secrets(tmp_path: Path) -> None:
    path = tmp_path / "node.yaml"
    path.write_text("database:\n  url: sqlite:///from-file.db\nnetwork:\n  port: 104\n")
    config = load_config(
        path,
        environ={
            "SEGNODE__DATABASE__URL": "postgresql://segnode@db/segnode",
            "SEGNODE__STORAGE__SPOOL_DIR": "/srv/segnode/spool",
            "SEGNODE__PRIVACY__PATIENT_ID_SALT": "pepper",
            "segnode__network__port": "2104",
            "UNRELATED": "1",
        },
    )
    assert config.database.url == "postgresql://segnode@db/segnode"
    assert config.storage.spool_dir == Path("/srv/segnode/spool")
    assert config.privacy.patient_id_salt == "pepper"
    assert config.network.port == 2104


def test_bad_environment_override_names_the_variable(tmp_path: Path) -> None:
    path = tmp_path / "node.yaml"
    path.write_text("network:\n  port: 104\n")
    with pytest.raises(ConfigError) as caught:
        load_config(path, environ={"SEGNODE__NETWORK__PORT": "x", "SEGNODE__NETWORK__PROT": "1"})
    assert sorted(caught.value.problems) == [
        "$SEGNODE__NETWORK__PORT: network.port: must be an integer, not 'x'",
        "$SEGNODE__NETWORK__PROT: network.prot: unknown key (allowed: acse_timeout_s, bind_address, "
        "dimse_timeout_s, max_associations, max_pdu_size, network_timeout_s, port, tls)",
    ]


def test_defaults_are_those_of_the_example_file() -> None:
    """example.yaml documents the defaults: every section equals the model's default except the listed
    calling AE title (the model's default node accepts no caller) and the HTTP service, which the example
    turns on with its users (the model's default runs none: a test node opens no HTTP port)."""
    example = load_config(EXAMPLE, environ={})
    defaults = SegNodeConfig()
    assert example.model_dump(exclude={"node", "http"}) == defaults.model_dump(exclude={"node", "http"})
    http = example.http.model_copy(update={"enabled": False, "users": [], "tokens": []})
    assert http == defaults.http
    assert [a.ae_title for a in example.node.ae_titles] == [a.ae_title for a in defaults.node.ae_titles]
    assert [c.ae_title for c in example.node.ae_titles[0].allowed_callers] == ["PACS"]
    assert default_config(environ={}) == example


def test_defaults_cover_the_receiving_node() -> None:
    accept = AcceptConfig()
    assert accept.sop_classes == [
        "1.2.840.10008.5.1.4.1.1.4",
        "1.2.840.10008.5.1.4.1.1.4.1",
        "1.2.840.10008.5.1.4.1.1.2",
        "1.2.840.10008.5.1.4.1.1.2.1",
    ]
    assert len(accept.transfer_syntaxes) == 13 and accept.transfer_syntaxes[0] == "1.2.840.10008.1.2.1"
    assert NetworkConfig().max_associations == 10
    assert StorageConfig().min_free_space_mb == 1024
    assert CompletionConfig().on_association_release is True
    privacy = PrivacyConfig()
    assert (privacy.store_patient_name, privacy.store_patient_birth_date) == (False, False)


def test_config_hash_changes_with_the_configuration() -> None:
    a, b = SegNodeConfig(), SegNodeConfig(network=NetworkConfig(port=104))
    assert a.config_hash() == SegNodeConfig().config_hash() != b.config_hash()


def test_cli_validate_prints_every_problem_and_exits_non_zero(tmp_path: Path) -> None:
    path = tmp_path / "node.yaml"
    path.write_text(
        "network:\n  port: 70000\n  prot: 1\nnode:\n  ae_titles:\n    - ae_title: ABCDEFGHIJKLMNOPQ\n"
    )
    result = run_segnode("config", "validate", str(path))
    assert result.returncode == 2
    lines = result.stderr.splitlines()
    assert "error: node.yaml: node.ae_titles[0].ae_title: longer than 16 characters" in lines
    assert "error: node.yaml: network.port: must be <= 65535, not 70000" in lines
    assert any(line.startswith("error: node.yaml: network.prot: unknown key") for line in lines)
    assert lines[-1] == f"{path}: 3 problem(s)"


def test_cli_validate_accepts_the_example_file() -> None:
    result = run_segnode("config", "validate", str(EXAMPLE))
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"{EXAMPLE}: valid (configuration hash ")


@pytest.mark.parametrize("command", [["serve"], ["config", "validate"], ["audit"]])
def test_cli_help_for_each_subcommand(command: list[str]) -> None:
    result = run_segnode(*command, "--help")
    assert result.returncode == 0 and "usage: segnode" in result.stdout
