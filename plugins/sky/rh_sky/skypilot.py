"""SkyPilot's SDK, imported on first use, and its errors turned into ones that say what to do.

Everything this plugin asks of SkyPilot goes through the object :func:`load_skypilot` returns:
the ``sky`` module itself, or a stand-in with the same names (``RH_SKY_SDK``, for tests). The SDK
of SkyPilot 0.14 answers every call with a request id; :func:`result` waits for it.
"""

from __future__ import annotations

import importlib
import os
import re
from typing import TYPE_CHECKING, Any

from rh_core.errors import ProvisionError, RhError

from rh_sky.spec import SkySpecError

if TYPE_CHECKING:
    from types import ModuleType

#: ``module:attribute`` of a stand-in for the ``sky`` module, called with no arguments (tests).
SDK_VARIABLE = "RH_SKY_SDK"
INSTALL_HINT = "pip install rh-sky (it depends on skypilot), or pip install 'skypilot>=0.14,<0.15'"

_ANSI_CODES = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


class SkyError(ProvisionError):
    """SkyPilot refused or failed; the message carries SkyPilot's reason and what to do."""


class SkyNotInstalledError(SkyError, ImportError):
    """SkyPilot is not installed in this Python."""


class SkyCredentialsError(SkyError, PermissionError):
    """SkyPilot has no usable credentials for the cloud asked for."""


class SkyLaunchError(SkyError):
    """A launch or restart failed (quota, capacity, preemption, setup); the cluster is not up."""


def load_skypilot() -> ModuleType:
    """The SDK: the ``sky`` module (imported here, it takes seconds), or the stand-in ``RH_SKY_SDK`` names."""
    target = os.environ.get(SDK_VARIABLE)
    if target:
        module_name, _, attribute = target.partition(":")
        try:
            return getattr(importlib.import_module(module_name), attribute)()
        except (ImportError, AttributeError) as exc:
            raise SkyError(f"{SDK_VARIABLE}={target!r} does not name an importable module:attribute ({exc})") from exc
    try:
        import sky
        import sky.skylet.constants  # noqa: F401  (where SkyPilot's runtime lives on the nodes)
    except ImportError as exc:
        raise SkyNotInstalledError(f"on-demand clusters need SkyPilot, which is not installed ({exc}); {INSTALL_HINT}") from exc
    return sky


def result(sky: Any, request_id: Any, *, show_progress: bool = False) -> Any:
    """Wait for a request and return its result; with ``show_progress`` SkyPilot's log of it
    (provisioning steps and their progress) streams to this terminal while it runs."""
    return sky.stream_and_get(request_id) if show_progress else sky.get(request_id)


def reason(exc: BaseException) -> str:
    """SkyPilot's message without its terminal colours."""
    text = _ANSI_CODES.sub("", str(exc)).strip()
    return text or type(exc).__name__


def explain(exc: BaseException, sky: Any, *, cluster_name: str, doing: str, cloud: str | None = None,
            after: str = "") -> RhError:
    """The error to raise for ``exc``, which SkyPilot raised while ``doing`` (``"launching"``, ...)
    cluster ``cluster_name``: SkyPilot's reason and what to do about it, then ``after``."""
    kind, message = _explanation(exc, sky, cluster_name, doing, cloud)
    return kind(f"{message}{after}")


def _explanation(exc: BaseException, sky: Any, name: str, doing: str, cloud: str | None) -> tuple[type[RhError], str]:
    errors = sky.exceptions
    why = reason(exc)
    named = cloud or "any cloud"
    check = f"sky check {cloud}" if cloud else "sky check"
    if isinstance(exc, (errors.NoCloudAccessError, errors.CloudUserIdentityError, errors.InvalidCloudCredentials,
                        errors.ClusterOwnerIdentityMismatchError)) or "sky check" in why:
        return SkyCredentialsError, (
            f"SkyPilot has no usable credentials for {named} while {doing} cluster {name!r}: {why}. "
            f"Run `{check}` and follow what it prints to set up {named}, then try again."
        )
    if isinstance(exc, errors.ResourcesUnavailableError):
        return SkyLaunchError, (
            f"SkyPilot could not get the machines of cluster {name!r}: {why}. Try another region or zone "
            "(region=, zone=), on-demand machines instead of spot (use_spot=False), another instance_type, "
            f"or ask {cloud or 'the cloud'} for more quota."
        )
    if isinstance(exc, errors.ApiServerConnectionError):
        return SkyError, (
            f"could not reach the SkyPilot API server while {doing} cluster {name!r}: {why}. "
            "Start a local one with `sky api start`, or check the endpoint with `sky api info`."
        )
    if isinstance(exc, errors.ClusterDoesNotExist):
        return SkyError, f"SkyPilot has no cluster {name!r} ({why}); `rh sky status` lists the ones it has."
    if isinstance(exc, (ValueError, errors.InvalidCloudConfigs)):
        return SkySpecError, (
            f"SkyPilot rejected the spec of cluster {name!r}: {why}. Check the spelling of provider, "
            "instance_type, region and zone: `sky show-gpus` lists accelerators and where they are offered, "
            "and `sky show-gpus --infra CLOUD` a cloud's instance types."
        )
    if isinstance(exc, errors.CloudError) or type(exc).__name__ == "ConnectionError":
        return SkyError, (
            f"SkyPilot could not reach {cloud or 'a cloud'} or its catalog of machines while {doing} cluster "
            f"{name!r}: {why}. Check this machine's internet access and try again."
        )
    kind = SkyLaunchError if doing in ("launching", "starting") else SkyError
    return kind, f"SkyPilot failed while {doing} cluster {name!r}: {type(exc).__name__}: {why}."
