from setuptools import find_packages, setup

setup(
    name="mcobjectives",
    version="0.1.0",
    description="Monte Carlo variational objectives (IWAE, MIWAE, CIWAE, PIWAE, RWS, JVI, "
    "STL, DReG) for TensorFlow Probability",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    packages=find_packages(include=["mcobjectives", "mcobjectives.*"]),
    python_requires=">=3.11",
    install_requires=[
        "numpy>=1.26",
        "tensorflow>=2.21,<2.22",
        "tensorflow-probability>=0.25,<0.26",
        "keras>=3",
        "tf-keras>=2.21,<2.22",
    ],
    extras_require={
        "test": ["pytest>=8", "ruff>=0.6"],
        "examples": [
            "tensorflow-datasets==4.9.10",
            "importlib_resources",
            "absl-py",
            "matplotlib",
            "tensorboard",
        ],
        # Peer frameworks timed beside ours by benchmarks/throughput.py (optional).
        "peers": ["jax", "jaxlib", "optax", "torch"],
    },
)
