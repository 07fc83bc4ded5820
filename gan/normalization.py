"""The normalization a model is trained with: the build settings that decide
what a pixel value of a pair file means. Checkpoints carry it; a checkpoint
and a pair file (or options) whose normalizations differ are refused."""
from __future__ import annotations

import os

# The build settings that decide what a pixel value means and how a face is
# framed (dce.geom.dataset.BuildConfig): a model trained on a file needs the
# same ones at inference, so checkpoints carry them (:func:`normalization`).
NORMALIZATION_KEYS = ("depth_scale", "curvature_scale", "curvature", "margin", "crop_radius",
                      "median_size")


class NormalizationMismatch(ValueError):
    """A model and a pair file (or an option) whose normalizations differ."""


def normalization(summary: dict) -> dict:
    """The normalization of a pair file from its summary
    (:func:`dce.gan.h5format.validate`): ``channels``, ``size`` [H, W] and
    the :data:`NORMALIZATION_KEYS` its build configuration holds. Trainers
    store it in their checkpoints."""
    config = summary.get("config")
    config = config if isinstance(config, dict) else {}
    out = {"channels": list(summary["channels"]),
           "size": [int(summary["height"]), int(summary["width"])]}
    out.update({key: config[key] for key in NORMALIZATION_KEYS if key in config})
    return out


def check_normalization(model: dict | None, data: dict, model_name, data_name) -> None:
    """NormalizationMismatch naming both sources and both values when a
    :data:`NORMALIZATION_KEYS` value of ``model`` (a checkpoint's
    normalization; None for one from before dce stored it) differs from
    ``data``'s (a pair file's, or options given). Channels and size are not
    compared: a model reads any file that holds its channels, at any
    multiple of its resolution."""
    for key in NORMALIZATION_KEYS:
        if model and key in model and key in data and model[key] != data[key]:
            raise NormalizationMismatch(
                f"{os.fspath(data_name)} has {key}={data[key]!r}, but {os.fspath(model_name)} was "
                f"trained on images with {key}={model[key]!r}: its outputs would be in the wrong "
                "units; use a pair file built with the checkpoint's value, or a checkpoint "
                "trained on this one")
