"""Install the MTZ + NWV library: `pip install -e ".[test]"`."""
from setuptools import setup

setup(
    name="zipvirt",
    version="0.1.0",
    description=("Multi-task zipping (MTZ) and neural weight virtualization (NWV) "
                 "for several deep networks on one small device, in TensorFlow 2."),
    python_requires=">=3.10",
    packages=["mtz", "nwv", "models", "data", "data.tasks"],
    install_requires=[
        "tensorflow>=2.16",
        "keras>=3.0",
        "tensorflow-datasets",
        "importlib_resources",  # imported lazily by TFDS when it downloads
        "numpy",
        "scipy",
        "ortools",  # min-cost flow: optimal page matching on candidate pairs (small pages)
        "absl-py",
        "matplotlib",
        "tqdm",
    ],
    extras_require={
        "test": ["pytest", "pytest-xdist", "nbclient", "nbformat", "ipykernel", "tflite-micro"],
        # TensorFlow Lite Micro's host interpreter: runs nwv.export_tflite(target="micro")
        "micro": ["tflite-micro"],
    },
)
