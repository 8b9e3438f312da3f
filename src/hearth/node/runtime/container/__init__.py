"""node/runtime/container: sandboxes as OCI containers (crun or runc), one network slot each."""

from hearth.node.runtime.container.oci import OciRuntime, OciRuntimeError, detect
from hearth.node.runtime.container.sandbox import (
    ContainerError,
    ContainerRuntime,
    ContainerSandbox,
    PausedContainer,
    SandboxRecord,
)

__all__ = [
    "ContainerError",
    "ContainerRuntime",
    "ContainerSandbox",
    "OciRuntime",
    "OciRuntimeError",
    "PausedContainer",
    "SandboxRecord",
    "detect",
]
