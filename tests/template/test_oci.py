"""hearth.template.oci: naming rules (pure), and resolve/pull against a real local registry."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from hearth.template import oci
from hearth.template.oci import RegistryError, UnsupportedRegistry
from template.conftest import (
    BUSYBOX_CMD,
    BUSYBOX_ENV,
    BUSYBOX_USER,
    BUSYBOX_WORKDIR,
    ROOT_ONLY,
    USERS,
    Pushed,
    built_root,
)
from template.registry import Registry, push_directory, push_multiarch, push_with_whiteout

DIGEST = "sha256:" + "ab" * 32


# --- candidates: pure ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("image", "expected"),
    [
        ("ubuntu:22.04", "docker://docker.io/library/ubuntu:22.04"),
        ("ubuntu", "docker://docker.io/library/ubuntu:latest"),
        ("e2bdev/base", "docker://docker.io/e2bdev/base:latest"),
        ("docker.io/ubuntu:22.04", "docker://docker.io/library/ubuntu:22.04"),
        ("index.docker.io/library/ubuntu", "docker://docker.io/library/ubuntu:latest"),
        (f"ubuntu@{DIGEST}", f"docker://docker.io/library/ubuntu@{DIGEST}"),
        # containers/image refuses a tag and a digest together: the digest is what counts.
        (f"ubuntu:22.04@{DIGEST}", f"docker://docker.io/library/ubuntu@{DIGEST}"),
        ("a/b/c:v1.2-x_y", "docker://docker.io/a/b/c:v1.2-x_y"),
    ],
)
def test_docker_hub_names(image: str, expected: str) -> None:
    assert oci.candidates(image, None) == [(expected, False)]


def test_docker_hub_names_try_the_mirror_first() -> None:
    assert oci.candidates("ubuntu:22.04", "127.0.0.1:5000") == [
        ("docker://127.0.0.1:5000/library/ubuntu:22.04", True),
        ("docker://docker.io/library/ubuntu:22.04", False),
    ]
    assert oci.candidates("e2bdev/base", "mirror.example.com:5000") == [
        ("docker://mirror.example.com:5000/e2bdev/base:latest", False),
        ("docker://docker.io/e2bdev/base:latest", False),
    ]
    # A URL-ish setting and a path prefix (a Harbor proxy project) are understood.
    assert oci.candidates("ubuntu", "http://localhost:5000/hub/")[0] == (
        "docker://localhost:5000/hub/library/ubuntu:latest",
        True,
    )
    assert oci.candidates("ubuntu", "") == oci.candidates("ubuntu", None)


@pytest.mark.parametrize(
    ("image", "expected"),
    [
        ("ghcr.io/x/y:1", ("docker://ghcr.io/x/y:1", False)),
        ("127.0.0.1:5000/x", ("docker://127.0.0.1:5000/x:latest", True)),
        ("127.8.9.10:5000/x", ("docker://127.8.9.10:5000/x:latest", True)),
        ("localhost:5000/x", ("docker://localhost:5000/x:latest", True)),
        ("localhost/x:2", ("docker://localhost/x:2", True)),
        ("[::1]:5000/x", ("docker://[::1]:5000/x:latest", True)),
        ("10.0.0.5:5000/x", ("docker://10.0.0.5:5000/x:latest", False)),
        ("registry.local/team/app", ("docker://registry.local/team/app:latest", False)),
        (f"ghcr.io/x/y@{DIGEST}", (f"docker://ghcr.io/x/y@{DIGEST}", False)),
    ],
)
def test_names_with_a_registry_go_there_only(image: str, expected: tuple[str, bool]) -> None:
    assert oci.candidates(image, "127.0.0.1:5000") == [expected]


@pytest.mark.parametrize("image", ["", "  ", "Ubuntu", "ubuntu:bad tag", "a b", "x@sha256:zz"])
def test_bad_names(image: str) -> None:
    with pytest.raises(RegistryError):
        oci.candidates(image, None)


@pytest.mark.parametrize(
    ("registry", "words"),
    [
        ({"type": "aws", "awsAccessKeyId": "k", "awsSecretAccessKey": "s"}, "AWS ECR"),
        ({"type": "gcp", "serviceAccountJson": "{}"}, "GCP"),
        ({"type": "azure"}, "not supported"),
        ({"type": "registry", "username": "u"}, "username and password"),
    ],
)
def test_unsupported_registries(registry: dict, words: str) -> None:
    # Raised before any registry is contacted (docker.io is unreachable from tests).
    for call in (
        lambda: oci.resolve("ubuntu", registry=registry, mirror=None),
        lambda: oci.pull("ubuntu", Path("/nonexistent/dest"), registry=registry),
    ):
        with pytest.raises(UnsupportedRegistry, match=words) as caught:
            call()
        assert "s3cret" not in str(caught.value)
    if registry["type"] == "aws":
        assert "HEARTH_REGISTRY_MIRROR" in str(caught.value)


@pytest.mark.parametrize(
    ("detail", "kind"),
    [  # what skopeo 1.9 says, minus its "Error parsing image name" prefix
        ("reading manifest 1 in 127.0.0.1:5000/x: manifest unknown: manifest unknown", "missing"),
        ("reading manifest 1 in 127.0.0.1:5000/x: unauthorized: authentication required", "denied"),
        ("requested access to the resource is denied", "denied"),
        (
            'pinging container registry 127.0.0.1:5: Get "http://127.0.0.1:5/v2/": '
            "dial tcp 127.0.0.1:5: connect: connection refused",
            "unreachable",
        ),
        (
            'pinging container registry registry-1.docker.io: Get "https://registry-1.docker.io'
            '/v2/": dial tcp: lookup registry-1.docker.io on 10.0.0.1:53: no such host',
            "unreachable",
        ),
        (
            'pinging container registry 10.1.2.3:5000: Get "https://10.1.2.3:5000/v2/": '
            "http: server gave HTTP response to HTTPS client",
            "http",
        ),
        ("x509: certificate signed by unknown authority", "tls"),
        ("something else entirely", "failed"),
    ],
)
def test_skopeo_errors_are_classified(detail: str, kind: str) -> None:
    assert oci._classify(detail) == kind


def test_plain_http_registry_says_how_to_allow_it() -> None:
    candidate = oci._candidates("10.1.2.3:5000/x:1", None)[0]
    message = oci._failure_message(
        "10.1.2.3:5000/x:1", [(candidate, "http", "server gave HTTP response")], None
    )
    assert "10.1.2.3:5000/x" in message
    assert 'location = "10.1.2.3:5000" insecure = true' in message


# --- against the registry -----------------------------------------------------------------


def _files(root: Path) -> dict[str, tuple]:
    """path -> (type and mode, uid, gid, size or link target or device) for a whole tree."""
    found = {}
    for directory, dirs, files in os.walk(root):
        for name in dirs + files:
            path = Path(directory, name)
            st = path.lstat()
            if stat.S_ISLNK(st.st_mode):
                what: object = os.readlink(path)
            elif stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode):
                what = st.st_rdev
            elif stat.S_ISREG(st.st_mode):
                what = st.st_size
            else:
                what = None
            found[str(path.relative_to(root))] = (st.st_mode, st.st_uid, st.st_gid, what)
    return found


class TestPull:
    pytestmark = ROOT_ONLY

    def test_resolve_finds_the_pushed_digest(self, busybox_image: Pushed) -> None:
        reference, tls_off, digest = oci.resolve(
            busybox_image.reference, registry=None, mirror=None
        )
        assert reference == f"docker://{busybox_image.reference}"
        assert tls_off is True  # loopback: plain HTTP
        assert digest == busybox_image.digest
        # A digest reference resolves to itself.
        repository = busybox_image.reference.rsplit(":", 1)[0]
        pinned = oci.resolve(f"{repository}@{digest}", registry=None, mirror=None)
        assert pinned == (f"docker://{repository}@{digest}", True, digest)

    def test_pull_keeps_owners_modes_and_config(
        self, busybox_image: Pushed, busybox_root: Path, tmp_path: Path
    ) -> None:
        lines: list[str] = []
        dest = tmp_path / "rootfs"
        config = oci.pull(busybox_image.reference, dest, progress=lines.append)
        assert _files(dest) == _files(busybox_root)
        home = (dest / "home" / "user").stat()
        assert (home.st_uid, home.st_gid) == (1000, 1000)
        assert (dest / "home" / "user" / ".profile").stat().st_uid == 1000
        assert stat.S_IMODE((dest / "tmp").stat().st_mode) == 0o1777
        assert stat.S_IMODE((dest / "root").stat().st_mode) == 0o700
        assert os.readlink(dest / "bin" / "ls") == "/bin/busybox"

        assert config.reference == f"docker://{busybox_image.reference}"
        assert config.digest == busybox_image.digest
        assert config.env == BUSYBOX_ENV
        assert config.workdir == BUSYBOX_WORKDIR
        assert config.user == BUSYBOX_USER
        assert config.cmd == BUSYBOX_CMD
        assert config.entrypoint == []

        host = busybox_image.reference.split("/")[0]
        assert lines[0] == f"pulling {busybox_image.reference} from {host}"
        assert any(line.startswith("copying blob sha256:") and "MiB" in line for line in lines)
        assert lines[-1].startswith("unpacked ") and " MiB in " in lines[-1]
        # The temporary layout is gone: only the root is left beside it.
        assert sorted(p.name for p in tmp_path.iterdir()) == ["rootfs"]

    def test_pull_into_an_existing_empty_directory_and_work_dir(
        self, busybox_image: Pushed, tmp_path: Path
    ) -> None:
        dest, work = tmp_path / "rootfs", tmp_path / "work"
        dest.mkdir()
        oci.pull(busybox_image.reference, dest, work_dir=work)
        assert (dest / "bin" / "busybox").is_file()
        assert list(work.iterdir()) == []
        with pytest.raises(ValueError, match="not empty"):
            oci.pull(busybox_image.reference, dest)

    def test_mirror_holds_docker_hub_names(self, registry: Registry, busybox_image: Pushed) -> None:
        # busybox-hearth:1 is a Docker Hub name: library/busybox-hearth:1 at the mirror.
        reference, tls_off, digest = oci.resolve(
            "busybox-hearth:1", registry=None, mirror=registry.host
        )
        assert reference == f"docker://{registry.host}/library/busybox-hearth:1"
        assert (tls_off, digest) == (True, busybox_image.digest)

    def test_pull_through_the_mirror(
        self, registry: Registry, busybox_image: Pushed, tmp_path: Path
    ) -> None:
        lines: list[str] = []
        config = oci.pull(
            "busybox-hearth:1", tmp_path / "r", mirror=registry.host, progress=lines.append
        )
        assert config.digest == busybox_image.digest
        assert (tmp_path / "r" / "bin" / "busybox").is_file()
        assert lines[0] == f"pulling busybox-hearth:1 from {registry.host}"

    def test_whiteouts_across_layers(
        self, registry: Registry, busybox_root: Path, tmp_path: Path
    ) -> None:
        extra = tmp_path / "extra"
        (extra / "etc").mkdir(parents=True)
        (extra / "etc" / "added").write_text("new\n")
        (extra / "dev").mkdir()
        os.mknod(extra / "dev" / "null", 0o666 | stat.S_IFCHR, os.makedev(1, 3))
        reference = registry.reference("test/whiteout:1")
        push_with_whiteout(
            busybox_root, reference, add=extra, delete=["/etc/group", "/usr", "/etc/added"]
        )
        dest = tmp_path / "rootfs"
        oci.pull(reference, dest)
        assert not (dest / "etc" / "group").exists()  # a file of the first layer
        assert not (dest / "usr").exists()  # a whole directory of it
        assert not (dest / "etc" / "added").exists()  # a file of the second layer
        assert (dest / "etc" / "passwd").is_file()
        null = (dest / "dev" / "null").lstat()
        assert stat.S_ISCHR(null.st_mode) and null.st_rdev == os.makedev(1, 3)
        assert not any(name.startswith(".wh.") for _, _, f in os.walk(dest) for name in f)

    def test_xattrs_survive(self, registry: Registry, tmp_path: Path) -> None:
        tree = tmp_path / "tree"
        tree.mkdir()
        (tree / "f").write_text("x")
        os.setxattr(tree / "f", "user.hearth", b"kept")
        reference = registry.reference("test/xattr:1")
        push_directory(tree, reference)
        oci.pull(reference, tmp_path / "out")
        assert os.getxattr(tmp_path / "out" / "f", "user.hearth") == b"kept"

    def test_multiarch_index_picks_amd64(self, registry: Registry, tmp_path: Path) -> None:
        roots = {}
        for arch in ("arm64", "amd64", "s390x"):
            roots[arch] = tmp_path / arch
            roots[arch].mkdir()
            (roots[arch] / "ARCH").write_text(arch)
        reference = registry.reference("test/multi:1")
        digest = push_multiarch(roots, reference)
        config = oci.pull(reference, tmp_path / "out")
        assert (tmp_path / "out" / "ARCH").read_text() == "amd64"
        assert config.digest == digest  # the index's: what the tag names

        only_arm = registry.reference("test/arm-only:1")
        push_multiarch({"arm64": roots["arm64"]}, only_arm)
        with pytest.raises(RegistryError, match="no linux/amd64 image \\(has linux/arm64\\)"):
            oci.resolve(only_arm, registry=None, mirror=None)

    def test_missing_tag_and_image(
        self, registry: Registry, busybox_image: Pushed, tmp_path: Path
    ) -> None:
        for name in ("library/busybox-hearth:no-such-tag", "library/no-such-image:1"):
            image = registry.reference(name)
            with pytest.raises(RegistryError) as caught:
                oci.pull(image, tmp_path / "out")
            message = str(caught.value)
            assert image in message and "manifest unknown" in message
            assert "check the image name and tag" in message
            assert not (tmp_path / "out").exists()
        assert list(tmp_path.iterdir()) == []  # no layout left behind

    def test_missing_docker_hub_name_at_the_mirror_mentions_it(self, registry: Registry) -> None:
        # Only the mirror is asked here (no internet): docker.io is unreachable, so the
        # message must name both places and say how to point Hearth at a mirror.
        with pytest.raises(RegistryError) as caught:
            oci.resolve("no-such-image-hearth:1", registry=None, mirror=registry.host)
        message = str(caught.value)
        assert f"{registry.host}/library/no-such-image-hearth" in message
        assert "docker.io/library/no-such-image-hearth" in message
        assert "HEARTH_REGISTRY_MIRROR=HOST:PORT" in message

    def test_unreachable_registry(self, tmp_path: Path) -> None:
        stopped = Registry().start()
        host = stopped.host
        stopped.stop()
        with pytest.raises(RegistryError) as caught:
            oci.pull(f"{host}/x/y:1", tmp_path / "out")
        message = str(caught.value)
        assert f"{host}/x/y" in message and "connection refused" in message
        assert "can reach the registry" in message
        assert "Error parsing image name" not in message  # skopeo's misleading prefix

    def test_credentials(self, auth_registry: Registry, busybox_root: Path, tmp_path: Path) -> None:
        reference = auth_registry.reference("private/busybox:1")
        digest = push_directory(busybox_root, reference, creds=auth_registry.creds)
        (user, password) = next(iter(USERS.items()))
        good = {"type": "registry", "username": user, "password": password}
        lines: list[str] = []
        config = oci.pull(reference, tmp_path / "ok", registry=good, progress=lines.append)
        assert config.digest == digest
        assert (tmp_path / "ok" / "bin" / "busybox").is_file()
        assert not any(password in line for line in lines)
        assert [p.name for p in tmp_path.iterdir()] == ["ok"]  # the auth file is gone too

        with pytest.raises(RegistryError) as caught:
            oci.resolve(reference, registry=None, mirror=None)
        assert "authentication required" in str(caught.value)
        assert "username and password" in str(caught.value)

        bad = {"type": "registry", "username": user, "password": "wrong-" + password}
        with pytest.raises(RegistryError) as caught:
            oci.pull(reference, tmp_path / "bad", registry=bad)
        message = str(caught.value)
        assert reference in message and "refused the credentials" in message
        assert "wrong-" not in message and password not in message
        assert not (tmp_path / "bad").exists()

    def test_debian_root_round_trips(self, registry: Registry, tmp_path: Path) -> None:
        # A real distribution: setuid binaries, hard links, many owners and symlinks.
        root = built_root("debian")
        reference = registry.reference("test/debian:bookworm")
        push_directory(root, reference, env={"LANG": "C.UTF-8"})
        dest = tmp_path / "rootfs"
        config = oci.pull(reference, dest)
        assert _files(dest) == _files(root)
        sudo = (dest / "usr" / "bin" / "sudo").stat()
        assert sudo.st_mode & stat.S_ISUID and sudo.st_uid == 0
        assert config.env == {"LANG": "C.UTF-8"}
