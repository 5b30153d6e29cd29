"""What a run's settings become on this machine: its defaults, precision, XLA, and a resumed run's settings.

The settings themselves (names, defaults, choices, checks) are in
`cityscapes_unet.settings`; this module adds what needs the machine or
Keras.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass

import keras

from cityscapes_unet.errors import UsageError
from cityscapes_unet.settings import (
    MACHINE_DEFAULTS,
    RESUME_FREE,
    TrainConfig,
    flag_text,
    read_json,
    upgrade_config,
    validate_config,
)


@dataclass(frozen=True)
class Machine:
    """What this machine offers a run: a GPU, and bf16 matrix units on its CPU."""

    gpu: bool
    bf16_units: bool


def gpu_available() -> bool:
    """Whether the active Keras backend sees a GPU."""
    backend = keras.backend.backend()
    if backend == "tensorflow":
        import tensorflow as tf

        return bool(tf.config.list_physical_devices("GPU"))
    if backend == "jax":
        import jax

        return any(d.platform == "gpu" for d in jax.devices())
    if backend == "torch":
        import torch

        return torch.cuda.is_available()
    return False


def cpu_has_bf16_matmul() -> bool:
    """Whether the CPU has bf16 matrix units (AMX) or AVX-512 BF16."""
    try:
        with open("/proc/cpuinfo") as f:
            flags = f.read()
    except OSError:
        return False
    return "amx_bf16" in flags or "avx512_bf16" in flags


def this_machine() -> Machine:
    """The machine this process runs on."""
    return Machine(gpu_available(), cpu_has_bf16_matmul())


def resolve_precision(requested: str, machine: Machine) -> tuple[str, str]:
    """The mixed-precision policy of `--precision REQUESTED`, and why."""
    if requested != "auto":
        return requested, "as requested"
    if machine.gpu:
        return "mixed_float16", "GPU visible: float16 tensor cores, dynamic loss scaling"
    if machine.bf16_units:
        return "mixed_bfloat16", "CPU with bf16 matrix units (AMX / AVX-512 BF16)"
    return "float32", "CPU without bf16 matrix units: bfloat16 would be slower here"


def machine_kind(machine: Machine, policy: str) -> str:
    """The key of `MACHINE_DEFAULTS`: the bf16 defaults need both the units and the policy that uses them."""
    if machine.gpu:
        return "gpu"
    return "cpu_bf16" if policy == "mixed_bfloat16" and machine.bf16_units else "cpu"


def resolve_xla(mode: str, machine: Machine, policy: str = "float32", cpu_replicas: int = 1) -> bool | str:
    """The `jit_compile` of `Model.compile` for `--xla MODE`: True, False or "auto" (Keras decides).

    Keras' own "auto" leaves XLA off on a CPU-only TensorFlow; here `auto`
    turns it on where it is faster: float32, and bfloat16 without bf16
    matrix units. With the units, TensorFlow's oneDNN kernels use them
    directly. XLA cannot run a strategy over several CPU devices (a compiled
    step reaches another replica's variable and fails).

    Raises:
        UsageError: For `on` with several CPU replicas.
    """
    cpu_split = not machine.gpu and cpu_replicas > 1 and keras.backend.backend() == "tensorflow"
    if mode == "on" and cpu_split:
        raise UsageError(
            f"--xla on: XLA cannot compile a step over {cpu_replicas} CPU replicas; use --xla auto or off"
        )
    if mode != "auto":
        return mode == "on"
    if cpu_split:
        return False
    if machine.gpu or keras.backend.backend() != "tensorflow":
        return "auto"
    return "auto" if policy == "mixed_bfloat16" and machine.bf16_units else True


def resolve_config(
    cfg: TrainConfig, machine: Machine, given_by: str = "the command line"
) -> tuple[TrainConfig, str, list[str]]:
    """Fill the machine's defaults and choose the precision.

    Args:
        cfg: Configuration with None for "choose".
        machine: This machine.
        given_by: Where the values set in `cfg` come from, for the reasons.

    Returns:
        `(config, policy, reasons)`: reasons are lines saying what was chosen and why.
    """
    validate_config(cfg)
    policy, why_policy = resolve_precision(cfg.precision, machine)
    kind = machine_kind(machine, policy)
    defaults, why = MACHINE_DEFAULTS[kind]
    notes = dict.fromkeys(defaults, f"{kind} default")
    if cfg.encoder != "unet":
        defaults = {**defaults, "image_size": -(-defaults["image_size"] // 32) * 32}
        notes["image_size"] = f"the {kind} default, a multiple of 32 for {cfg.encoder}"
        notes["base_filters"] = notes["block"] = f"not used by the {cfg.encoder} UNet: its decoder is fixed"
    if cfg.image_size is not None or cfg.encoder != "unet":
        # The first and final sizes belong with the default size they surround.
        defaults = {**defaults, "first_size": 0, "final_size": 0}
        notes["first_size"] = notes["final_size"] = "one size throughout: --image-size or --encoder given"
    reasons = [f"machine = {kind} ({why})"]
    changes = {}
    for key, value in defaults.items():
        if getattr(cfg, key) is None:
            changes[key] = value
            reasons.append(f"{key} = {value} ({notes[key]})")
        else:
            reasons.append(f"{key} = {getattr(cfg, key)} (from {given_by})")
    cfg = dataclasses.replace(cfg, **changes)
    validate_config(cfg)
    return cfg, policy, reasons + [f"precision = {policy} ({why_policy})"]


def resume_config(cfg: TrainConfig, given: frozenset[str] | set[str]) -> tuple[TrainConfig, dict]:
    """The configuration of the run in `cfg.output_dir`, for `--resume`.

    Args:
        cfg: Configuration from the command line.
        given: Names of the settings the user gave.

    Returns:
        `(config, saved)`: the saved configuration (the `RESUME_FREE`
        settings taken from `cfg`), and the saved `config.json` itself.

    Raises:
        UsageError: If there is no run to resume, it used a setting this
            version no longer has, or a given setting contradicts it.
    """
    path = os.path.join(cfg.output_dir, "config.json")
    if not os.path.isfile(path):
        raise UsageError(f"--resume: no config.json in {cfg.output_dir}: there is no run to resume")
    saved = read_json(path, "--resume")
    fields, retired = upgrade_config(saved)
    if retired:
        key, value = next(iter(retired.items()))
        raise UsageError(
            f"--resume: the run in {cfg.output_dir} used {key}={value}, which this version no longer has"
        )
    for key in sorted(given):
        mine, theirs = getattr(cfg, key), fields.get(key)
        if key in RESUME_FREE:
            fields[key] = mine
        elif (
            (os.path.realpath(mine) != os.path.realpath(theirs))
            if key == "data_dir" and theirs
            else mine != theirs
        ):
            raise UsageError(
                f"--resume: {flag_text(key, mine)} contradicts the run in {cfg.output_dir} "
                f"({theirs}); leave the flag out, or start a new run in another --output-dir"
            )
    return TrainConfig(**fields), saved
