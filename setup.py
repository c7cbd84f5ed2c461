import ast
import pathlib

from setuptools import find_packages, setup

ROOT = pathlib.Path(__file__).resolve().parent


def _version() -> str:
    """`__version__` of mcobjectives/_version.py, read without importing the package.

    Importing it would import TensorFlow, which the build environment does not have.
    """
    source = (ROOT / "mcobjectives" / "_version.py").read_text(encoding="utf-8")
    for node in ast.parse(source).body:
        if isinstance(node, ast.Assign) and [t.id for t in node.targets] == ["__version__"]:
            return ast.literal_eval(node.value)
    raise RuntimeError("mcobjectives/_version.py assigns no __version__")


setup(
    name="mcobjectives",
    version=_version(),
    description="Monte Carlo variational objectives (VAE, IWAE, MIWAE, CIWAE, PIWAE, RWS, STL, "
    "DReG, JVI, VIMCO, VR-IWAE, OVIS, DisARM, TVO) for TensorFlow Probability and Keras",
    long_description=(ROOT / "README.md").read_text(encoding="utf-8"),
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    packages=find_packages(include=["mcobjectives", "mcobjectives.*"]),
    # The offline fallback of mcobjectives.experimental.mnist.load_mnist, with its README
    # (contents, provenance and the CC BY-SA 3.0 license of MNIST): installed with the wheel.
    package_data={"mcobjectives.experimental.mnist": ["bundled/*.npz", "bundled/*.md"]},
    python_requires=">=3.11",
    install_requires=[
        "numpy>=1.26",
        "tensorflow>=2.21,<2.22",
        "tensorflow-probability>=0.25,<0.26",
        "keras>=3",
        "tf-keras>=2.21,<2.22",
    ],
    extras_require={
        # `build` makes the wheel that .ci/wheel_smoke.sh installs outside the checkout.
        "test": ["pytest>=8", "pytest-xdist>=3", "ruff>=0.6", "build"],
        "examples": [
            "tensorflow-datasets==4.9.10",
            "importlib_resources",
            "absl-py",
            "matplotlib",
            "tensorboard",
        ],
        # The documentation site (mkdocs.yml) and its executed notebooks.
        "docs": [
            "mkdocs-material",
            "mkdocstrings[python]",
            "mkdocs-jupyter",
            "nbclient",
            "ipykernel",
        ],
        # Peer frameworks timed beside ours by benchmarks/throughput.py (optional).
        "peers": ["jax", "jaxlib", "optax", "torch"],
    },
)
