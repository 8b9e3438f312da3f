"""envd's /init `caBundle`: the CA is added to the system bundle once, however often
/init repeats it, through a link as Debian's bundle may be, and nowhere without one."""

from __future__ import annotations

from pathlib import Path

from hearth.envd.trust import add_to_system_bundle

CA = "-----BEGIN CERTIFICATE-----\nMIIBlocal\n-----END CERTIFICATE-----"
THEIRS = "-----BEGIN CERTIFICATE-----\nMIIBtemplate\n-----END CERTIFICATE-----\n"


def test_the_ca_is_added_once(tmp_path: Path) -> None:
    bundle = tmp_path / "ca-certificates.crt"
    bundle.write_text(THEIRS)
    assert add_to_system_bundle(f"{CA}\n", (tmp_path / "absent.crt", bundle)) == bundle
    assert add_to_system_bundle(CA, (bundle,)) == bundle  # a restore's /init again
    assert bundle.read_text() == f"{THEIRS}{CA}\n"
    assert bundle.stat().st_mode & 0o777 == 0o644
    assert [p.name for p in tmp_path.iterdir()] == ["ca-certificates.crt"]  # no partial left


def test_a_linked_bundle_is_written_where_it_points(tmp_path: Path) -> None:
    target = tmp_path / "package" / "bundle.crt"
    target.parent.mkdir()
    target.write_text(THEIRS)
    link = tmp_path / "ca-certificates.crt"
    link.symlink_to(target)
    assert add_to_system_bundle(CA, (link,)) == link
    assert link.is_symlink()
    assert target.read_text() == f"{THEIRS}{CA}\n"


def test_nothing_is_made_without_a_bundle_or_a_ca(tmp_path: Path) -> None:
    assert add_to_system_bundle(CA, (tmp_path / "absent.crt",)) is None
    assert list(tmp_path.iterdir()) == []
    bundle = tmp_path / "ca-certificates.crt"
    bundle.write_text(THEIRS)
    assert add_to_system_bundle("  \n", (bundle,)) is None
    assert bundle.read_text() == THEIRS
