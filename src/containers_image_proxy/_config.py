"""How the proxy is configured, and the one place where that becomes a skopeo command line."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Optional, Sequence, Tuple, Union

from ._errors import ConfigurationError

PathLike = Union[str, "os.PathLike[str]"]

DEBUG_ENV = "CONTAINERS_IMAGE_PROXY_DEBUG"

#: The default bound on one metadata reply: containers/image's own cap on the manifests and
#: configs it takes from a registry (4 MiB).
DEFAULT_MAX_METADATA_SIZE = 4 * 1024 * 1024
#: Below this even the smallest replies (a layer list, an error report) would not fit.
_MIN_METADATA_SIZE = 4096


@dataclass(frozen=True)
class ProxyConfig:
    """Settings for one skopeo ``experimental-image-proxy`` process.

    Example::

        ProxyConfig(authfile="/run/user/1000/containers/auth.json", tls_verify=True)

    ``skopeo`` is an argv prefix, so ``("podman", "unshare", "skopeo")`` or a private build
    works. At most one of ``authfile``, ``auth_data`` and ``auth_anonymous`` may be set.
    ``auth_data`` (the contents of an auth.json) reaches skopeo through an anonymous file
    passed as an inherited descriptor: it never touches a named file, the command line, a
    log or a repr. ``policy`` or ``require_policy_enforcement`` makes the client refuse
    proxies older than protocol 0.2.6, which do not enforce signature policy at all.
    ``stall_timeout`` (seconds) tears the proxy down when a reply or a blob stream makes no
    progress for that long. ``retries`` is how many times a blob whose transfer failed with
    a retryable error is fetched again, while no byte has reached the caller.
    ``max_metadata_size`` bounds every metadata reply (manifest, config, layer list, a raw
    blob's error report, a JSON reply on the socket) in bytes, 4 MiB by default as in
    containers/image; a larger one raises :class:`MetadataTooLargeError` after reading no
    more than one byte past the limit. It is the client's own setting, not skopeo's.
    """

    skopeo: Sequence[str] = ("skopeo",)
    authfile: Optional[PathLike] = None
    auth_data: Optional[Union[bytes, str]] = field(default=None, repr=False)
    auth_anonymous: bool = False
    cert_dir: Optional[PathLike] = None
    tls_verify: Optional[bool] = None
    policy: Optional[PathLike] = None
    insecure_policy: bool = False
    registries_conf: Optional[PathLike] = None
    registries_d: Optional[PathLike] = None
    require_policy_enforcement: bool = False
    override_os: Optional[str] = None
    override_arch: Optional[str] = None
    override_variant: Optional[str] = None
    user_agent_prefix: Optional[str] = None
    debug: bool = False
    stall_timeout: Optional[float] = None
    retries: int = 0
    max_metadata_size: int = DEFAULT_MAX_METADATA_SIZE

    def __post_init__(self) -> None:
        if isinstance(self.skopeo, str):
            # a bare string would be split into characters by Sequence semantics
            object.__setattr__(self, "skopeo", (self.skopeo,))
        else:
            object.__setattr__(self, "skopeo", tuple(self.skopeo))
        if not self.skopeo or not all(isinstance(a, str) and a for a in self.skopeo):
            raise ConfigurationError("skopeo must be a non-empty sequence of non-empty strings")
        chosen = [
            name
            for name, on in (
                ("authfile", self.authfile is not None),
                ("auth_data", self.auth_data is not None),
                ("auth_anonymous", self.auth_anonymous),
            )
            if on
        ]
        if len(chosen) > 1:
            raise ConfigurationError(f"at most one of {', '.join(chosen)} may be set")
        if self.policy is not None and self.insecure_policy:
            raise ConfigurationError("policy and insecure_policy exclude each other")
        if self.stall_timeout is not None and not self.stall_timeout > 0:
            raise ConfigurationError("stall_timeout must be a positive number of seconds")
        if isinstance(self.retries, bool) or not isinstance(self.retries, int) or self.retries < 0:
            raise ConfigurationError("retries must be a non-negative integer")
        size = self.max_metadata_size
        if isinstance(size, bool) or not isinstance(size, int) or size < _MIN_METADATA_SIZE:
            raise ConfigurationError(
                f"max_metadata_size must be an integer of at least {_MIN_METADATA_SIZE} bytes"
            )
        for name in ("override_os", "override_arch", "override_variant", "user_agent_prefix"):
            value = getattr(self, name)
            if value is not None and (not value or "\0" in value):
                raise ConfigurationError(f"{name} must be a non-empty string")

    def __repr__(self) -> str:
        shown = []
        for name in self.__dataclass_fields__:
            value = getattr(self, name)
            default = self.__dataclass_fields__[name].default
            if name == "auth_data":
                if value is not None:
                    shown.append("auth_data=<redacted>")
                continue
            if value != default:
                shown.append(f"{name}={value!r}")
        return f"ProxyConfig({', '.join(shown)})"

    @property
    def debug_enabled(self) -> bool:
        """``debug``, or the environment variable CONTAINERS_IMAGE_PROXY_DEBUG set non-empty."""
        return self.debug or bool(os.environ.get(DEBUG_ENV))

    @property
    def wants_policy_enforcement(self) -> bool:
        """Whether this configuration relies on the proxy checking signature policy."""
        return self.policy is not None or self.require_policy_enforcement

    def auth_bytes(self) -> Optional[bytes]:
        """``auth_data`` as bytes (None when unset); never raises."""
        if self.auth_data is None:
            return None
        if isinstance(self.auth_data, str):
            return self.auth_data.encode()
        return bytes(self.auth_data)


def build_command(
    config: ProxyConfig,
    *,
    auth_fd: Optional[int] = None,
    supports_user_agent_prefix: bool = False,
) -> Tuple[str, ...]:
    """The argv that starts the proxy, serving on its standard input.

    ``auth_fd`` is the descriptor number under which the child inherits the anonymous
    auth.json; ``supports_user_agent_prefix`` says whether this skopeo knows the flag
    (releases before 1.21 exit on an unknown flag, so it is dropped rather than passed).
    """
    return build_skopeo_command(
        config,
        ("experimental-image-proxy",),
        auth_fd=auth_fd,
        supports_user_agent_prefix=supports_user_agent_prefix,
    )


def build_skopeo_command(
    config: ProxyConfig,
    command: Sequence[str],
    *,
    auth_fd: Optional[int] = None,
    supports_user_agent_prefix: bool = False,
) -> Tuple[str, ...]:
    """The argv of a skopeo ``command`` (``experimental-image-proxy``, ``list-tags``,
    ``inspect --raw``) with this configuration's global and image flags.

    Every command it serves takes the same image flags (credentials, certificates, TLS),
    so the proxy and the one-shot commands reach a registry the same way. Secrets never
    appear: ``auth_data`` is named by its inherited descriptor ``auth_fd``.
    """
    if config.auth_data is not None and auth_fd is None:
        raise ConfigurationError("auth_data needs an inherited descriptor")
    argv = list(config.skopeo)
    if config.debug_enabled:
        argv.append("--debug")
    if config.policy is not None:
        argv += ["--policy", os.fspath(config.policy)]
    if config.insecure_policy:
        argv.append("--insecure-policy")
    if config.registries_conf is not None:
        argv += ["--registries-conf", os.fspath(config.registries_conf)]
    if config.registries_d is not None:
        argv += ["--registries.d", os.fspath(config.registries_d)]
    if config.override_os is not None:
        argv += ["--override-os", config.override_os]
    if config.override_arch is not None:
        argv += ["--override-arch", config.override_arch]
    if config.override_variant is not None:
        argv += ["--override-variant", config.override_variant]
    if config.user_agent_prefix is not None and supports_user_agent_prefix:
        argv += ["--user-agent-prefix", config.user_agent_prefix]

    argv += command
    if config.authfile is not None:
        argv += ["--authfile", os.fspath(config.authfile)]
    elif auth_fd is not None:
        argv += ["--authfile", f"/proc/self/fd/{auth_fd}"]
    elif config.auth_anonymous:
        argv.append("--no-creds")
    if config.cert_dir is not None:
        argv += ["--cert-dir", os.fspath(config.cert_dir)]
    if config.tls_verify is not None:
        argv.append(f"--tls-verify={'true' if config.tls_verify else 'false'}")
    return tuple(argv)
