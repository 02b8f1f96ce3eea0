"""Install the pgraft package.

Builds the C++ extension pgraft._C (torch CppExtension), so torch must be installed first:
    pip install --no-build-isolation -e '.[test]'          # into an environment that has torch
The requirements are the ranges pgraft is tested with: torch 2.11 (the GPU machines' image) to
2.13 (the CPU machines'), triton 3.6 to 3.8. A CPU machine gets the exact stack of
constraints-cpu.txt (the Makefile passes it; there `pip install torch==2.13.0` takes the CPU build
on disk, where any looser torch requirement would pull a multi-GB CUDA build).
"""

import os
import sys

from setuptools import find_packages, setup
from torch.utils.cpp_extension import BuildExtension, CppExtension

HERE = os.path.dirname(os.path.abspath(__file__))
# The extension is built on the machine that runs it (pip install -e .), so it may use that CPU's
# vector units; set PGRAFT_PORTABLE=1 when building a binary for other machines.
NATIVE = [] if os.environ.get("PGRAFT_PORTABLE") == "1" else ["-march=native"]
# at::parallel_for is only parallel when the extension itself is compiled with OpenMP (ATen's
# ParallelOpenMP.h is guarded by _OPENMP); without it every fused C++ loop runs on one thread.
# The extension then uses torch's own libgomp (already loaded, same soname) and its thread count.
# Linux only: Apple's clang has no -fopenmp (and torch's macOS wheels bring their own libomp).
OPENMP = ["-fopenmp"] if sys.platform.startswith("linux") else []

INSTALL_REQUIRES = [
    "torch>=2.11,<2.14",
    "triton>=3.6,<3.9",
    "diffusers>=0.42.1,<0.43",
    "transformers>=5.17,<6",
    "accelerate>=1.15,<2",
    "safetensors>=0.8,<0.9",
    "deepspeed>=0.19.8,<0.20",
    "peft>=0.17,<1",
    "pybind11>=2.12",
    "nvidia-ml-py>=12",
    "scikit-learn>=1.4",
    "scipy>=1.11",
    "numpy>=1.26",
    "matplotlib>=3.8",
    "pydantic>=2.6,<3",
    "pyyaml>=6",
    "tqdm>=4.66",
    "tensorboard>=2.16",
    "ninja",
    "animal-shape-mnist==0.39",  # the animals task's real data (no dependencies)
]

# The molecules task's extra. fcd ships ChemNet's weights in its wheel; pgraft verifies them before
# loading (pgraft/chem/chemnet.py), so the version is exact.
MOLECULES = ["rdkit==2026.9.1", "qm9pack==1.0.3", "fcd==1.2.2"]

setup(
    name="pgraft",
    version="0.1.0",
    description="Fine-tune diffusion and flow models toward a reward: GRAFT, P-GRAFT, inverse noise correction",
    long_description=open(os.path.join(HERE, "README.md")).read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=find_packages(include=["pgraft", "pgraft.*"]),
    # The default bases and judges (`pgraft pretrain --ship`): a fresh install trains nothing.
    package_data={"pgraft": ["tasks/pretrained/*/*/weights.safetensors*", "tasks/data/*"]},
    install_requires=INSTALL_REQUIRES,
    extras_require={
        # the molecules task: RDKit, QM9 (the CSVs inside qm9pack are read by path) and the FCD's ChemNet
        "molecules": MOLECULES,
        "test": ["pytest>=8", "hypothesis>=6", *MOLECULES],
        "gpu": ["xformers==0.0.35"],
        "vqascore": ["t2v_metrics"],  # the paper's reward (downloads its model on first use)
    },
    entry_points={"console_scripts": ["pgraft=pgraft.cli:main"]},
    # pgraft._C: csrc/ (plain C++17) exposed by the pybind11 module in bindings/.
    ext_modules=[
        CppExtension(
            "pgraft._C",
            ["bindings/module.cpp", "bindings/buffer.cpp", "csrc/trajectory_buffer.cpp"],
            include_dirs=[os.path.join(HERE, "csrc")],
            extra_compile_args=["-O3", "-std=c++17", *OPENMP, *NATIVE],
            extra_link_args=OPENMP,
        )
    ],
    cmdclass={"build_ext": BuildExtension},
)
