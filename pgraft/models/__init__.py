"""Adapters over diffusers models and schedules: one denoiser signature for the engine."""

from .denoiser import Denoiser
from .schedule import Schedule
from .unet import ClassConditionalUNet, build_class_unet

__all__ = ["Schedule", "ClassConditionalUNet", "Denoiser", "build_class_unet"]
