"""DCE: Depth-Curvature-Elevation face refinement (Galteri et al., CVIU 2019).

One distribution, one namespace: ``geom/`` installs as ``dce.geom``, ``gan/``
as ``dce.gan`` and ``cli/`` as ``dce.cli``. ``dce`` itself is an implicit
namespace package, so nothing generic such as ``gan`` lands in site-packages.
"""
from setuptools import setup

GEOM = [
    "numpy>=1.24",
    "scipy>=1.10",
    "libigl>=2.5",
    "pymeshlab>=2022.2",
    "numba>=0.58",
    "face-alignment>=1.4",
    "h5py>=3.8",
    "pillow>=9.0",
    "tqdm>=4.60",
]
# No exact torch pin: a GPU user installs their CUDA build first and keeps it.
GAN = ["torch>=2.0", "h5py>=3.8", "numpy>=1.24", "pillow>=9.0"]
DEV = ["pytest>=7.0", "ruff>=0.5", "tensorboard>=2.10"]

setup(
    name="dce",
    version="0.1.0",
    description="Depth-Curvature-Elevation images and progressive conditional GANs "
    "for 3D face refinement",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.9",
    packages=["dce.geom", "dce.gan", "dce.cli"],
    package_dir={"dce.geom": "geom", "dce.gan": "gan", "dce.cli": "cli"},
    install_requires=["numpy>=1.24"],
    extras_require={
        "geom": GEOM,
        "gan": GAN,
        "all": sorted(set(GEOM + GAN)),
        "dev": DEV,
        "tensorboard": ["tensorboard>=2.10"],
    },
    entry_points={
        "console_scripts": [
            "dce-build=dce.cli.build:main",
            "dce-demo=dce.cli.demo:main",
            "dce-eval=dce.cli.evaluate:main",
            "dce-eval-mesh=dce.cli.eval_mesh:main",
            "dce-landmarks=dce.cli.landmarks:main",
            "dce-refine=dce.cli.refine:main",
            "dce-refit=dce.cli.refit:main",
            "dce-train=dce.cli.train:main",
            "dce-train-detail=dce.cli.train_detail:main",
        ],
    },
    license="MIT",
)
