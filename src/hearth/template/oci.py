"""Pulling OCI images into root filesystem directories, for templates built `from_image(...)`.

Hearth speaks no registry protocol itself: it drives the field's tools. `skopeo` resolves a
name to a manifest digest and copies the image (linux/amd64 out of a multi-arch index) into
a temporary OCI layout; `umoci raw unpack` flattens its layers into one directory, applying
whiteouts and keeping ownership, modes, xattrs and device nodes (which needs root). The
layout is deleted afterwards: only the root filesystem and the image's config are kept.

Docker Hub names ("ubuntu:22.04") are looked up at an optional registry mirror first (as
Docker's `registry-mirrors`), then at docker.io; names with a registry host go there only.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import ipaddress
import json
import os
import re
import shutil
import stat
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

DOCKER_HUB = "docker.io"
# Other spellings of Docker Hub that people paste from `docker pull` output and old docs.
DOCKER_HUB_ALIASES = frozenset({"docker.io", "index.docker.io", "registry-1.docker.io"})
PLATFORM_OS, PLATFORM_ARCH = "linux", "amd64"  # what Hearth's sandboxes run
MIRROR_VARIABLE = "HEARTH_REGISTRY_MIRROR"
# A registry that accepts the connection but never answers would hold a build forever; a
# manifest is a few KiB, so minutes is generous. Copies get no limit: images can be huge.
INSPECT_TIMEOUT = "3m"
# Copies retry transient network errors (containers/image never retries auth or 404s).
COPY_RETRIES = 3
LAYOUT_TAG = "image"

_PATH_COMPONENT = re.compile(r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*")
_TAG = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}")
_DIGEST = re.compile(r"[a-z0-9]+(?:[+._-][a-z0-9]+)*:[0-9a-fA-F]{32,}")
_COPYING_BLOB = re.compile(r"Copying (blob|config) (\S+)")


@dataclass(frozen=True)
class ImageConfig:
    """What a pulled image says about how to run it (its OCI image config)."""

    reference: str  # what was pulled, e.g. docker://127.0.0.1:5000/library/ubuntu:22.04
    digest: str  # the manifest digest the reference resolved to (an index's, if multi-arch)
    env: dict[str, str]
    workdir: str | None
    user: str | None
    entrypoint: list[str]
    cmd: list[str]


class RegistryError(RuntimeError):
    """The image could not be pulled; the message says what was tried and what to do."""


class UnsupportedRegistry(RegistryError):
    """The request's registry settings cannot be used (e.g. AWS/GCP credentials)."""


@dataclass(frozen=True)
class _Candidate:
    """One place an image may be: a registry location (HOST[:PORT][/PREFIX]) and a name."""

    location: str
    path: str  # repository path, e.g. library/ubuntu
    tag: str | None
    digest: str | None
    tls_off: bool

    @property
    def reference(self) -> str:
        if self.digest:  # containers/image refuses a tag and a digest together
            return f"docker://{self.location}/{self.path}@{self.digest}"
        return f"docker://{self.location}/{self.path}:{self.tag}"

    def at(self, digest: str) -> str:
        """The reference pinned to `digest`, so a tag moving mid-pull cannot mix images."""
        return f"docker://{self.location}/{self.path}@{digest}"

    @property
    def host(self) -> str:
        return self.location.split("/", 1)[0]


@dataclass(frozen=True)
class _Found:
    candidate: _Candidate
    digest: str
    manifest: dict[str, Any]  # the top-level manifest: an image manifest or an index


# --- names --------------------------------------------------------------------------------


def candidates(image: str, mirror: str | None) -> list[tuple[str, bool]]:
    """The references to try for `image`, in order, each with whether TLS verification is off.

    Docker Hub names are tried at `mirror` (HOST:PORT, optionally /PREFIX) first, then at
    docker.io; names with a registry host go there only. Only loopback registries are
    spoken to over plain HTTP or without verifying certificates.
    """
    return [(c.reference, c.tls_off) for c in _candidates(image, mirror)]


def _candidates(image: str, mirror: str | None) -> list[_Candidate]:
    host, path, tag, digest = _parse(image)
    if host != DOCKER_HUB:
        return [_Candidate(host, path, tag, digest, _is_loopback(host))]
    found = [_Candidate(DOCKER_HUB, path, tag, digest, tls_off=False)]
    location = _mirror_location(mirror)
    if location and location != DOCKER_HUB:
        found.insert(0, _Candidate(location, path, tag, digest, _is_loopback(location)))
    return found


def _parse(image: str) -> tuple[str, str, str | None, str | None]:
    """Split a Docker-style image name into (registry host, path, tag, digest), with
    Docker's defaults: docker.io, library/ for one-component Hub names, tag latest."""
    name = image.strip().removeprefix("docker://")
    if not name or any(ch.isspace() for ch in name):
        raise RegistryError(f"{image!r} is not an image name (like ubuntu:22.04)")
    name, _, digest = name.partition("@")
    if digest and not _DIGEST.fullmatch(digest):
        raise RegistryError(f"{image!r}: {digest!r} is not a digest (like sha256:...)")
    first, slash, rest = name.partition("/")
    # Docker's rule: the first component names a registry if it looks like a host.
    if slash and ("." in first or ":" in first or first == "localhost" or first[:1] == "["):
        host, name = first, rest
    else:
        host = DOCKER_HUB
    if host in DOCKER_HUB_ALIASES:
        host = DOCKER_HUB
    tag = None
    last = name.rsplit("/", 1)[-1]
    if ":" in last:
        name, tag = name.rsplit(":", 1)
        if not _TAG.fullmatch(tag):
            raise RegistryError(f"{image!r}: {tag!r} is not a valid tag")
    parts = name.split("/")
    if not all(_PATH_COMPONENT.fullmatch(part) for part in parts):
        raise RegistryError(
            f"{image!r} is not a valid image name (repository names are lowercase "
            "letters, digits and separators)"
        )
    if host == DOCKER_HUB and len(parts) == 1:
        name = f"library/{name}"
    if not tag and not digest:
        tag = "latest"
    return host, name, tag, digest or None


def _mirror_location(mirror: str | None) -> str | None:
    """HOST:PORT[/PREFIX] from the mirror setting, forgiving a URL's scheme and slashes."""
    if not mirror or not mirror.strip():
        return None
    location = re.sub(r"^[a-z]+://", "", mirror.strip()).strip("/")
    return location or None


def _is_loopback(location: str) -> bool:
    """Whether a registry location (HOST[:PORT][/PREFIX]) is on this machine's loopback."""
    host = location.split("/", 1)[0]
    if host.startswith("["):  # [::1]:5000
        host = host[1 : host.find("]")] if "]" in host else host[1:]
    elif host.count(":") == 1:
        host = host.split(":", 1)[0]
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


# --- credentials --------------------------------------------------------------------------


def credentials(registry: dict | None) -> tuple[str, str] | None:
    """(username, password) from E2B's `fromImageRegistry`, or UnsupportedRegistry."""
    if not registry:
        return None
    kind = registry.get("type")
    if kind == "aws":
        raise UnsupportedRegistry(
            "AWS ECR credentials are not supported by Hearth yet: push the image to a "
            f"registry with username/password auth, or configure {MIRROR_VARIABLE}"
        )
    if kind == "gcp":
        raise UnsupportedRegistry(
            "GCP Artifact Registry credentials are not supported by Hearth yet: push the image "
            f"to a registry with username/password auth, or configure {MIRROR_VARIABLE}"
        )
    if kind != "registry":
        raise UnsupportedRegistry(
            f"fromImageRegistry type {kind!r} is not supported: use type 'registry' with a "
            "username and password"
        )
    username, password = registry.get("username"), registry.get("password")
    if not isinstance(username, str) or not username or not isinstance(password, str):
        raise UnsupportedRegistry(
            "fromImageRegistry of type 'registry' needs a username and password"
        )
    return username, password


@contextlib.contextmanager
def _authfile(creds: tuple[str, str] | None, host: str, directory: Path) -> Iterator[Path | None]:
    """A containers-auth.json holding `creds` for `host` only, readable by root only.

    A file keeps the password out of argv (any user can read /proc/PID/cmdline). Keying it
    by the image's own registry means a mirror is asked anonymously: the user's Docker Hub
    password is not handed to whoever runs the mirror.
    """
    if creds is None:
        yield None
        return
    token = base64.b64encode(f"{creds[0]}:{creds[1]}".encode()).decode()
    path = directory / "auth.json"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "w") as out:
            json.dump({"auths": {host: {"auth": token}}}, out)
        yield path
    finally:
        path.unlink(missing_ok=True)


# --- resolving ----------------------------------------------------------------------------


def resolve(image: str, *, registry: dict | None, mirror: str | None) -> tuple[str, bool, str]:
    """(reference, tls_off, digest) of the first candidate that has `image`, fetching only
    its manifest, so a caller can key its cache by digest before pulling anything."""
    creds = credentials(registry)
    found_in = _candidates(image, mirror)
    # The last candidate is the image's own registry: the only one given the credentials.
    with (
        tempfile.TemporaryDirectory(prefix="hearth-oci-") as scratch,
        _authfile(creds, found_in[-1].host, Path(scratch)) as auth,
    ):
        found = _resolve(image, found_in, auth, creds)
    return found.candidate.reference, found.candidate.tls_off, found.digest


def _resolve(
    image: str, found_in: list[_Candidate], auth: Path | None, creds: tuple[str, str] | None
) -> _Found:
    failures: list[tuple[_Candidate, str, str]] = []  # (candidate, kind, detail)
    for candidate in found_in:
        done = _inspect(candidate.reference, candidate.tls_off, auth)
        if done.returncode != 0:
            detail = _skopeo_message(done.stderr.decode(errors="replace"))
            failures.append((candidate, _classify(detail), detail))
            continue
        try:
            manifest = json.loads(done.stdout)
        except ValueError:
            failures.append(
                (candidate, "failed", "the registry answered a manifest that is not JSON")
            )
            continue
        if "manifests" in manifest and _platform_entry(manifest) is None:
            have = ", ".join(sorted(_platforms(manifest))) or "none"
            failures.append(
                (candidate, "platform", f"no {PLATFORM_OS}/{PLATFORM_ARCH} image (has {have})")
            )
            continue
        # The digest of the exact bytes served is what the registry names them by.
        digest = "sha256:" + hashlib.sha256(done.stdout).hexdigest()
        return _Found(candidate, digest, manifest)
    raise RegistryError(_failure_message(image, failures, creds))


def _inspect(reference: str, tls_off: bool, auth: Path | None) -> subprocess.CompletedProcess:
    # Bytes, not text: the digest is the hash of the manifest exactly as served.
    command = ["skopeo", "--command-timeout", INSPECT_TIMEOUT, "inspect", "--raw"]
    command += _tls_flag("--tls-verify", tls_off) + _auth_flag("--authfile", auth)
    return _run([*command, reference], text=False)


def _platform_entry(index: dict[str, Any]) -> dict[str, Any] | None:
    """The index entry skopeo picks with --override-os/--override-arch, if there is one."""
    for entry in index.get("manifests") or []:
        platform = entry.get("platform") or {}
        if platform.get("os") == PLATFORM_OS and platform.get("architecture") == PLATFORM_ARCH:
            return entry
    return None


def _platforms(index: dict[str, Any]) -> set[str]:
    found = set()
    for entry in index.get("manifests") or []:
        platform = entry.get("platform") or {}
        if platform.get("os") not in (None, "unknown"):  # attestations say unknown/unknown
            found.add(f"{platform.get('os')}/{platform.get('architecture')}")
    return found


# --- errors -------------------------------------------------------------------------------


def _skopeo_message(stderr: str) -> str:
    """The error out of skopeo's logrus line, minus its misleading "Error parsing image
    name" prefix (skopeo 1.9 says that for every failure, even a refused connection)."""
    messages = re.findall(r'msg="((?:[^"\\]|\\.)*)"', stderr)
    if messages:
        try:
            text = json.loads(f'"{messages[-1]}"')
        except ValueError:
            text = messages[-1]
    else:
        text = stderr.strip().splitlines()[-1] if stderr.strip() else "no error output"
    return re.sub(r'^Error parsing image name "[^"]*": ', "", text)


def _classify(detail: str) -> str:
    text = detail.lower()
    if any(s in text for s in ("manifest unknown", "name unknown", "not found", "not known to")):
        return "missing"
    denied = ("unauthorized", "authentication required", "denied", "forbidden")
    if any(s in text for s in denied) or re.search(r"\b40[13]\b", text):
        return "denied"
    if "http response to https" in text:
        return "http"
    if any(s in text for s in ("x509", "certificate")):
        return "tls"
    network = (
        "connection refused", "no such host", "timeout", "unreachable", "dial tcp",
        "eof", "connection reset", "deadline exceeded", "tls",
    )  # fmt: skip
    if any(s in text for s in network):
        return "unreachable"
    return "failed"


def _failure_message(
    image: str, failures: list[tuple[_Candidate, str, str]], creds: tuple[str, str] | None
) -> str:
    tried = "; ".join(f"{c.location}/{c.path} ({detail})" for c, _, detail in failures)
    kinds = {kind for _, kind, _ in failures}
    hub = any(c.location == DOCKER_HUB for c, _, _ in failures)
    hints = []
    if "missing" in kinds:
        hints.append("check the image name and tag")
    if "denied" in kinds:
        hints.append(
            "the registry refused the credentials given (fromImageRegistry): check the "
            "username and password"
            if creds
            else "it may be private: pass the registry's username and password "
            "(from_image(image, username=..., password=...)), or check the name"
        )
    if "unreachable" in kinds:
        hints.append("check that the Hearth server (which does the pull) can reach the registry")
    for c, kind, _ in failures:
        if kind == "http":  # only loopback is spoken to in plain HTTP unasked
            hints.append(
                f"{c.host} speaks plain HTTP: allow it with [[registry]] location = "
                f'"{c.host}" insecure = true in /etc/containers/registries.conf.d/'
            )
        elif kind == "tls":
            hints.append(
                f"the certificate of {c.host} is not trusted on the Hearth server: put its CA in "
                f"/etc/containers/certs.d/{c.host}/ca.crt"
            )
    if "platform" in kinds:
        hints.append(f"Hearth runs {PLATFORM_OS}/{PLATFORM_ARCH} images: pick a tag that has one")
    if hub and kinds & {"missing", "denied", "unreachable", "failed"}:
        hints.append(f"set {MIRROR_VARIABLE}=HOST:PORT to a registry mirror that has it")
    message = f"could not pull {image!r}: tried {tried}"
    if hints:
        message += ". To fix: " + "; ".join(hints)
    if creds and creds[1]:  # belt and braces: skopeo does not echo passwords, keep it so
        message = message.replace(creds[1], "***")
    return message


# --- pulling ------------------------------------------------------------------------------


def pull(
    image: str,
    dest: Path,
    *,
    registry: dict | None = None,
    mirror: str | None = None,
    progress: Callable[[str], None] = lambda m: None,
    work_dir: Path | None = None,
) -> ImageConfig:
    """Unpack `image`'s root filesystem into the empty or missing directory `dest`.

    Keeps ownership, modes, xattrs where the filesystem allows and device nodes, and
    applies whiteouts (ownership needs root; without it the files end up the caller's).
    The temporary OCI layout goes in `work_dir` or beside `dest` and is always deleted;
    on failure `dest` is left as it was found.
    """
    creds = credentials(registry)  # before any work: an unsupported kind is the caller's
    found_in = _candidates(image, mirror)
    dest = Path(dest).absolute()
    _check_empty(dest)
    parent = Path(work_dir) if work_dir else dest.parent
    parent.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix=".hearth-oci-", dir=parent))
    try:
        with _authfile(creds, found_in[-1].host, scratch) as auth:
            found = _resolve(image, found_in, auth, creds)
            candidate = found.candidate
            progress(f"pulling {image} from {candidate.location}")
            sizes = _blob_sizes(found, auth)
            _copy(image, found, scratch, auth, sizes, progress)
        config = _image_config(scratch / "layout")
        started = time.monotonic()
        _unpack_into(scratch, dest)
        mib = _tree_size(dest) / 2**20
        progress(f"unpacked {mib:.1f} MiB in {time.monotonic() - started:.1f} s")
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    body = config.get("config") or {}
    return ImageConfig(
        reference=candidate.reference,
        digest=found.digest,
        env=_env(body.get("Env")),
        workdir=body.get("WorkingDir") or None,
        user=body.get("User") or None,
        entrypoint=list(body.get("Entrypoint") or []),
        cmd=list(body.get("Cmd") or []),
    )


def _check_empty(dest: Path) -> None:
    if dest.is_symlink() or (dest.exists() and not dest.is_dir()):
        raise ValueError(f"{dest} exists and is not a directory")
    if dest.is_dir() and any(dest.iterdir()):
        raise ValueError(f"{dest} is not empty: an image is unpacked into an empty directory")


def _blob_sizes(found: _Found, auth: Path | None) -> dict[str, int]:
    """Blob digest -> size for the image skopeo will copy, to report each blob's size.

    For an index this costs one more small manifest fetch; if it fails the pull goes on
    without sizes (the copy itself will say what is wrong).
    """
    manifest = found.manifest
    if "manifests" in manifest:
        entry = _platform_entry(manifest) or {}
        done = _inspect(found.candidate.at(entry.get("digest", "")), found.candidate.tls_off, auth)
        try:
            manifest = json.loads(done.stdout) if done.returncode == 0 else {}
        except ValueError:
            manifest = {}
    blobs = [manifest.get("config") or {}, *(manifest.get("layers") or [])]
    return {b["digest"]: int(b.get("size", 0)) for b in blobs if "digest" in b}


def _copy(
    image: str,
    found: _Found,
    scratch: Path,
    auth: Path | None,
    sizes: dict[str, int],
    progress: Callable[[str], None],
) -> None:
    """skopeo copy of the pinned digest into scratch/layout, reporting blobs as they go.

    Popen rather than run: a big image takes minutes and its blobs should show as they
    start, not all at the end. stderr goes to a file so a chatty one cannot block stdout.
    """
    candidate = found.candidate
    command = ["skopeo", "--insecure-policy", "--tmpdir", str(scratch)]
    # --insecure-policy: no trust policy to configure on the host (Debian's own default is
    # insecureAcceptAnything anyway); what a template runs is confined by the sandbox.
    command += ["--override-os", PLATFORM_OS, "--override-arch", PLATFORM_ARCH, "copy"]
    command += ["--retry-times", str(COPY_RETRIES)]
    command += _tls_flag("--src-tls-verify", candidate.tls_off)
    command += _auth_flag("--src-authfile", auth)
    # A relative layout path: the oci: transport splits its argument at the first colon.
    command += [candidate.at(found.digest), f"oci:layout:{LAYOUT_TAG}"]
    errors = scratch / "skopeo.err"
    with errors.open("w+") as err:
        process = subprocess.Popen(
            command, cwd=scratch, stdout=subprocess.PIPE, stderr=err, text=True
        )
        assert process.stdout is not None
        try:
            for line in process.stdout:
                match = _COPYING_BLOB.search(line)
                if match:
                    kind, digest = match.groups()
                    size = f" ({_human(sizes[digest])})" if digest in sizes else ""
                    progress(f"copying {kind} {digest[:19]}{size}")
            returncode = process.wait()
        except BaseException:  # a failing progress callback or an interrupt: no orphan copy
            process.kill()
            process.wait()
            raise
        err.seek(0)
        stderr = err.read()
    if returncode != 0:
        detail = _skopeo_message(stderr)
        raise RegistryError(
            f"could not pull {image!r} from {candidate.location}: {detail}. "
            + (
                "Check that the Hearth server can reach the registry and retry"
                if _classify(detail) in ("unreachable", "failed")
                else "Check the image name, tag and credentials"
            )
        )


def _unpack_into(scratch: Path, dest: Path) -> None:
    """umoci raw unpack of scratch/layout into dest; on any failure dest is as it was."""
    created = not dest.exists()
    dest.mkdir(mode=0o755, parents=True, exist_ok=True)
    command = ["umoci", "raw", "unpack"]
    if os.geteuid() != 0:
        # Without root, chown and mknod fail: rootless mode maps every file to the caller.
        command.append("--rootless")
    command += ["--image", f"layout:{LAYOUT_TAG}", str(dest)]
    try:
        done = _run(command, cwd=scratch)
        if done.returncode != 0:
            tail = "\n".join(done.stderr.strip().splitlines()[-10:])
            raise RegistryError(
                f"unpacking the image failed (umoci exited {done.returncode}):\n{tail}"
            )
    except BaseException:  # an interrupt too: a half-unpacked root must not look finished
        _empty(dest, remove=created)
        raise


def _empty(dest: Path, *, remove: bool) -> None:
    if remove:
        shutil.rmtree(dest, ignore_errors=True)
        return
    for child in dest.iterdir():  # rmtree never follows the image's symlinks
        if child.is_dir() and not child.is_symlink():
            shutil.rmtree(child, ignore_errors=True)
        else:
            child.unlink(missing_ok=True)


def _image_config(layout: Path) -> dict[str, Any]:
    """The OCI image config of the one image in `layout` (skopeo wrote just one)."""
    index = json.loads((layout / "index.json").read_text())
    manifest = _blob(layout, index["manifests"][0]["digest"])
    return _blob(layout, manifest["config"]["digest"])


def _blob(layout: Path, digest: str) -> dict[str, Any]:
    algorithm, _, hexdigest = digest.partition(":")
    return json.loads((layout / "blobs" / algorithm / hexdigest).read_bytes())


def _env(entries: list[str] | None) -> dict[str, str]:
    env = {}
    for entry in entries or []:
        key, _, value = entry.partition("=")
        if key:
            env[key] = value
    return env


def _tree_size(root: Path) -> int:
    """Bytes of regular files under root (hard links counted once)."""
    total, seen = 0, set()
    for directory, _, files in os.walk(root):
        for name in files:
            try:
                st = os.lstat(os.path.join(directory, name))
            except OSError:
                continue
            if stat.S_ISREG(st.st_mode) and (st.st_dev, st.st_ino) not in seen:
                seen.add((st.st_dev, st.st_ino))
                total += st.st_size
    return total


def _human(size: int) -> str:
    if size >= 2**20:
        return f"{size / 2**20:.1f} MiB"
    return f"{size / 2**10:.1f} KiB"


def _tls_flag(flag: str, tls_off: bool) -> list[str]:
    # Left unset otherwise, so an operator's registries.conf (`insecure = true` for an
    # internal HTTP registry) still applies.
    return [f"{flag}=false"] if tls_off else []


def _auth_flag(flag: str, auth: Path | None) -> list[str]:
    return [flag, str(auth)] if auth else []


def _run(command: list[str], *, text: bool = True, cwd: Path | None = None):
    try:
        return subprocess.run(command, capture_output=True, text=text, cwd=cwd)
    except FileNotFoundError as e:
        raise RegistryError(
            f"{command[0]} is not installed: Hearth pulls images with skopeo and umoci "
            "(apt-get install skopeo umoci, or run scripts/setup.sh)"
        ) from e
