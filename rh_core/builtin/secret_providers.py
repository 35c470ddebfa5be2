"""The built-in secret providers ``aws``, ``gcp`` and ``huggingface`` (implemented in
:mod:`rh_core.builtin.credentials`, imported when one is first used), registered through the same
hook a third-party provider uses: the core itself knows no provider by name."""

from rh_core import hookimpl


@hookimpl
def rh_register_secret_providers(register):
    register("aws", "rh_core.builtin.credentials:AwsCredentials")
    register("gcp", "rh_core.builtin.credentials:GcpCredentials")
    register("huggingface", "rh_core.builtin.credentials:HuggingFaceToken", aliases=("hf",))
