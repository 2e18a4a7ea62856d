"""Signature policy (policy.json) through the proxy, with real signatures.

GPG "simple signing" keys are made with gpg in a temporary GNUPGHOME, sigstore keys with
``skopeo generate-sigstore-key`` (1.18+); images are pushed signed, unsigned, and signed
with a key the policy does not trust, into the plain registry. The policy rejects by
default and names a requirement per repository; signatures live in a file lookaside
declared in a ``registries.d``.

From protocol 0.2.6 (skopeo 1.13) OpenImage enforces the policy. Older proxies do not
check it at all, so the client must refuse to start them when a policy is asked for.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import secrets
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import pytest

from conftest import make_config
from containers_image_proxy import (
    AsyncImageProxy,
    ImageProxy,
    ProxyConfig,
    ProxyTooOldError,
    RequestError,
)
from testbed._run import run
from testbed.images import Layouts
from testbed.registry import Registry
from testbed.releases import SkopeoRelease, all_releases

pytestmark = pytest.mark.integration

NEEDS_ENFORCEMENT = "needs protocol 0.2.6 (skopeo 1.13+)"
SIGNER = "signer@example.invalid"
STRANGER = "stranger@example.invalid"


@dataclass(frozen=True)
class PolicyBed:
    """Signed and unsigned images in a registry, and the files that describe trust."""

    registry: Registry
    policy: Path
    registries_d: Path
    digest: str
    # Whether the sigstore-signed images exist (a skopeo 1.18+ was there to sign them).
    sigstore: bool

    def ref(self, repo: str, tag: str = "1") -> str:
        return self.registry.ref(f"policy/{repo}:{tag}")

    def config(self, release: SkopeoRelease, **fields: Any) -> ProxyConfig:
        return make_config(
            release,
            policy=self.policy,
            registries_d=self.registries_d,
            tls_verify=False,
            **fields,
        )


def newest_sigstore_signer() -> Optional[SkopeoRelease]:
    """The newest runnable skopeo that can make sigstore keys and signatures (1.18+).

    Chosen among all releases, not only the selected ones: signing is set-up, not the
    behaviour under test.
    """
    capable = [r for r in all_releases() if r.version >= (1, 18)]
    return capable[-1] if capable else None


def make_gpg_key(home: Path, uid: str, export_to: Path) -> None:
    env = {"GNUPGHOME": str(home)}
    run(
        ["gpg", "--batch", "--passphrase", "", "--quick-gen-key", uid, "rsa2048", "sign", "never"],
        env=env,
    )
    run(["gpg", "--batch", "--output", str(export_to), "--export", uid], env=env)


@pytest.fixture(scope="module")
def policy_bed(
    tmp_path_factory: pytest.TempPathFactory, layouts: Layouts, registry_plain: Registry
) -> Iterator[PolicyBed]:
    tmp = tmp_path_factory.mktemp("policy")
    home = tmp / "gnupg"
    home.mkdir(mode=0o700)
    gpg_env = {"GNUPGHOME": str(home)}
    try:
        make_gpg_key(home, f"Signer <{SIGNER}>", tmp / "signer.gpg")
        # A second key in the same keyring signs nothing; the policy that names it sees a
        # valid signature by an untrusted key.
        make_gpg_key(home, f"Stranger <{STRANGER}>", tmp / "stranger.gpg")

        registry = registry_plain
        host = registry.host
        lookaside = tmp / "lookaside"
        registries_d = tmp / "registries.d"
        registries_d.mkdir()
        signer = newest_sigstore_signer()
        sigstore_repos = ["cosign", "cosign-wrongkey"] if signer else []
        attachments = "".join(
            f"  {host}/policy/{repo}:\n    use-sigstore-attachments: true\n"
            for repo in sigstore_repos
        )
        (registries_d / "default.yaml").write_text(
            f"default-docker:\n  lookaside: file://{lookaside}\n"
            f"  lookaside-staging: file://{lookaside}\n"
            + (f"docker:\n{attachments}" if attachments else "")
        )
        d_args = ["--registries.d", str(registries_d)]

        src = layouts.ref("small")
        digest = registry.push(
            src, "policy/signed:1", sign_by=SIGNER, global_args=d_args, env=gpg_env
        )
        registry.push(src, "policy/wrongkey:1", sign_by=SIGNER, global_args=d_args, env=gpg_env)
        registry.push(src, "policy/unsigned:1", global_args=d_args)
        registry.push(src, "policy/unlisted:1", global_args=d_args)

        gpg_rule = {"type": "signedBy", "keyType": "GPGKeys", "keyPath": str(tmp / "signer.gpg")}
        docker: dict[str, Any] = {
            f"{host}/policy/signed": [gpg_rule],
            f"{host}/policy/unsigned": [gpg_rule],
            f"{host}/policy/wrongkey": [{**gpg_rule, "keyPath": str(tmp / "stranger.gpg")}],
        }
        if signer is not None:
            passphrase = tmp / "passphrase"
            passphrase.write_text(secrets.token_hex(16))
            for name in ("cosign", "stranger"):
                run(
                    [
                        *signer.argv, "generate-sigstore-key",
                        "--output-prefix", str(tmp / name), "--passphrase-file", str(passphrase),
                    ]
                )  # fmt: skip
            sign = [
                "--sign-by-sigstore-private-key", str(tmp / "cosign.private"),
                "--sign-passphrase-file", str(passphrase),
            ]  # fmt: skip
            for repo in sigstore_repos:
                registry.push(
                    src, f"policy/{repo}:1", skopeo_argv=signer.argv, global_args=d_args,
                    extra_args=sign,
                )  # fmt: skip
            sigstore_rule = {
                "type": "sigstoreSigned",
                "keyPath": str(tmp / "cosign.pub"),
                "signedIdentity": {"type": "matchRepository"},
            }
            docker[f"{host}/policy/cosign"] = [sigstore_rule]
            docker[f"{host}/policy/cosign-wrongkey"] = [
                {**sigstore_rule, "keyPath": str(tmp / "stranger.pub")}
            ]
        policy = tmp / "policy.json"
        policy.write_text(
            json.dumps(
                {
                    "default": [{"type": "reject"}],
                    "transports": {
                        "docker": docker,
                        "oci": {"": [{"type": "insecureAcceptAnything"}]},
                    },
                },
                indent=2,
            )
        )
        yield PolicyBed(registry, policy, registries_d, digest, sigstore=signer is not None)
    finally:
        # gpg and gpgme start a gpg-agent that would outlive the tests.
        with contextlib.suppress(Exception):
            run(["gpgconf", "--kill", "all"], env=gpg_env, check=False)


# --- Enforcement (0.2.6+) ------------------------------------------------------------------

# repository -> the text of the refusal, or None when the image must open.
CASES: dict[str, Optional[str]] = {
    "signed": None,
    "unsigned": "A signature was required, but no signature exists",
    "wrongkey": "Invalid GPG signature",
    "unlisted": "is rejected by policy",
    "cosign": None,
    "cosign-wrongkey": "cryptographic signature verification failed",
}


@pytest.mark.parametrize("repo", list(CASES))
def test_policy_is_enforced(
    no_leaks: None, skopeo_release: SkopeoRelease, policy_bed: PolicyBed, repo: str
) -> None:
    if not skopeo_release.has_protocol("0.2.6"):
        pytest.skip(NEEDS_ENFORCEMENT)
    if repo.startswith("cosign") and not policy_bed.sigstore:
        pytest.skip("needs a skopeo 1.18+ to make sigstore signatures")
    refusal = CASES[repo]
    with ImageProxy(policy_bed.config(skopeo_release)) as proxy:
        if refusal is None:
            with proxy.open_image(policy_bed.ref(repo)) as img:
                assert proxy.fetch_manifest(img)[0] == policy_bed.digest
            return
        with pytest.raises(RequestError) as caught:
            proxy.open_image(policy_bed.ref(repo))
        assert caught.value.method == "OpenImage"
        assert refusal in caught.value.message, caught.value.message
        # A refused image is not a missing one: open_image_optional raises too.
        with pytest.raises(RequestError) as again:
            proxy.open_image_optional(policy_bed.ref(repo))
        assert refusal in again.value.message
        # The proxy stays usable, and what the policy allows still opens.
        with proxy.open_image(policy_bed.ref("signed")) as img:
            assert proxy.fetch_manifest(img)[0] == policy_bed.digest


def test_policy_allows_what_it_lists(
    no_leaks: None, skopeo_release: SkopeoRelease, policy_bed: PolicyBed, layouts: Layouts
) -> None:
    if not skopeo_release.has_protocol("0.2.6"):
        pytest.skip(NEEDS_ENFORCEMENT)
    config = policy_bed.config(skopeo_release, require_policy_enforcement=True)
    with ImageProxy(config) as proxy:
        # oci: accepts anything under this policy.
        with proxy.open_image(layouts.ref("small")) as img:
            assert proxy.fetch_manifest(img)[0] == layouts.small.manifest_digest
        # Missing is still missing, not refused.
        assert proxy.open_image_optional(policy_bed.ref("signed", "no-such-tag")) is None
        with proxy.open_image(policy_bed.ref("signed")) as img:
            for layer in layouts.small.layers:
                with proxy.get_blob(img, layer.digest, layer.size) as blob:
                    assert blob.read() == layer.blob


# --- Failing closed (before 0.2.6) ---------------------------------------------------------


def test_old_proxy_refused_when_policy_matters(
    no_leaks: None, skopeo_release: SkopeoRelease, policy_bed: PolicyBed
) -> None:
    configs = [
        policy_bed.config(skopeo_release),
        make_config(skopeo_release, require_policy_enforcement=True),
    ]
    if skopeo_release.has_protocol("0.2.6"):
        for config in configs:
            with ImageProxy(config) as proxy:
                assert proxy.protocol_version == skopeo_release.protocol
        return
    for config in configs:
        with pytest.raises(ProxyTooOldError) as caught:
            ImageProxy(config)
        err = caught.value
        assert (err.found, err.required, err.release) == (skopeo_release.protocol, "0.2.6", "1.13")
        assert "1.13" in str(err)

        async def start(config: ProxyConfig = config) -> None:
            async with AsyncImageProxy(config):
                pass

        with pytest.raises(ProxyTooOldError):
            asyncio.run(start())


def test_policy_smuggled_past_the_client(
    no_leaks: None, skopeo_release: SkopeoRelease, policy_bed: PolicyBed
) -> None:
    """Why failing closed matters: a --policy that reaches an old skopeo is ignored.

    The flag travels in the skopeo argv prefix, which the client does not inspect.
    """
    config = ProxyConfig(
        skopeo=(*skopeo_release.argv, "--policy", str(policy_bed.policy)),
        registries_d=policy_bed.registries_d,
        tls_verify=False,
    )
    with ImageProxy(config) as proxy:
        if skopeo_release.has_protocol("0.2.6"):
            with pytest.raises(RequestError, match="no signature exists"):
                proxy.open_image(policy_bed.ref("unsigned"))
        else:
            # 1.9.3 opens what its own policy rejects.
            with proxy.open_image(policy_bed.ref("unsigned")) as img:
                assert proxy.fetch_manifest(img)[0] == policy_bed.digest


def test_signatures_are_where_the_policy_looks(policy_bed: PolicyBed) -> None:
    # The set-up itself: a GPG signature for each GPG-signed repository and none for the
    # unsigned one, so the refusals above are about trust, not about a missing file.
    lookaside = Path(
        (policy_bed.registries_d / "default.yaml").read_text().split("file://")[1].split()[0]
    )
    sig = policy_bed.digest.replace(":", "=")
    # The lookaside is keyed by repository path (without the host) and manifest digest.
    for repo, signed in (("signed", True), ("wrongkey", True), ("unsigned", False)):
        path = lookaside / f"policy/{repo}@{sig}" / "signature-1"
        assert path.is_file() is signed, repo
    assert os.path.getsize(lookaside / f"policy/signed@{sig}" / "signature-1") > 0
