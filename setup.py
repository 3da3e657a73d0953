"""Install vlm_spatial: `pip install -e ".[dev]"` (tests, parity against transformers/PyTorch)."""
from setuptools import find_packages, setup

TORCH = "torch==2.13.0"  # the CPU wheel; a bare `torch` pulls a multi-GB CUDA build
# the synthetic set as a TFDS ArrayRecord dataset (no TensorFlow; ~216 MB, mostly pyarrow);
# importlib_resources: tensorflow-datasets 4.9.10 imports it without declaring it (tfds #11212)
TFDS = ["tensorflow-datasets>=4.9.10", "importlib_resources"]

setup(
    name="vlm_spatial",
    version="0.1.0",
    description="JAX/Flax LLaVA-style VLMs with 2D-RoPE image encoders for spatial reasoning research",
    packages=find_packages(include=["vlm_spatial", "vlm_spatial.*"]),
    package_data={"vlm_spatial": ["**/*.json", "**/*.md"]},
    python_requires=">=3.10",
    install_requires=[
        "jax>=0.10",
        "flax>=0.12.8",
        "optax>=0.2.8",
        "orbax-checkpoint>=0.12",
        "transformers>=5.0",
        "tokenizers>=0.22",
        "safetensors>=0.6",
        "grain>=0.2.18",
        "ml-collections>=1.1",
        "absl-py",
        "pillow",
        "numpy",
        "tqdm",
        "tensorboardX",
    ],
    extras_require={
        # torch-side: parity tests against transformers and HF weight conversion
        "torch": [TORCH],
        # tests run the TFDS path and the parquet benchmark loaders (pyarrow) too
        "dev": [TORCH, *TFDS, "pytest", "pytest-xdist", "nbclient", "nbformat", "ipykernel", "matplotlib"],
        "cuda": ["jax[cuda12]"],
        "tpu": ["jax[tpu]"],
        "tfds": TFDS,
    },
)
