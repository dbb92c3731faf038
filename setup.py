"""supsup_jax: Supermasks in Superposition in JAX/Flax."""
import setuptools

setuptools.setup(
    name="supsup_jax",
    version="0.1.0",
    description="Supermasks in Superposition (SupSup) and mask methods for "
                "continual learning in JAX/Flax.",
    long_description=open("README.md").read() if __import__("os").path.exists("README.md") else "",
    long_description_content_type="text/markdown",
    # The library only: launch/ (the absl launchers and configs), benchmarks/
    # and tools/ run from a checkout (python -m launch.main ...).
    packages=setuptools.find_packages(include=["supsup_jax", "supsup_jax.*"]),
    python_requires=">=3.10",
    install_requires=[
        "jax>=0.4.30",
        "flax>=0.10",
        "optax>=0.2.3",
        "chex>=0.1.86",
        "absl-py>=2.0",
        "ml_collections>=0.1.1",
        "orbax-checkpoint>=0.6",
        "matplotlib>=3.7",
        "tensorboardX>=2.6",  # TensorBoard scalars without importing TensorFlow
        "numpy>=1.26",
        "scipy>=1.10",  # rank statistics (AUROC) in the uncertainty study
        # Building the official tfds builders (mnist, fashion_mnist, cifar10,
        # cifar100, imagenet2012) and reading ImageFolder needs TensorFlow.
        "tensorflow-datasets>=4.9.4",
        "tensorflow-cpu>=2.16",
        "importlib_resources",  # tfds 4.9 imports it
    ],
    extras_require={
        "test": ["pytest>=7", "pytest-xdist>=3"],
        # The Sphinx site (docs/): python -m sphinx -W -b html docs docs/_build/html
        "docs": ["sphinx>=7.2", "myst-parser>=3", "furo>=2024.1.29"],
    },
)
