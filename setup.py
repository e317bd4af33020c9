"""Install with `pip install -e .` (or run `bash quickstart.sh setup`, which also installs torch,
the default model and bubblewrap where they are missing)."""
from pathlib import Path

from setuptools import setup

HERE = Path(__file__).parent


def read_requirements() -> list[str]:
    lines = (HERE / "requirements.txt").read_text().splitlines()
    return [line.strip() for line in lines if line.strip() and not line.startswith("#")]


setup(
    name="adversarial-codegen",
    version="0.1.0",
    description="Adversarial RL for code generation: a multi-stage reasoning Generator against a "
    "test-writing Discriminator, with a secure sandbox and hand-written PPO.",
    long_description=(HERE / "README.md").read_text() if (HERE / "README.md").exists() else "",
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=["common", "sandbox", "reasoning", "data", "models", "scoring", "training", "inference", "evaluation"],
    package_data={"data": ["*.json"]},
    install_requires=read_requirements(),
    extras_require={
        "lora": ["peft"],
        "plot": ["matplotlib"],
        "datasets": ["datasets"],
        "tensorboard": ["tensorboard"],
        "distributed": ["accelerate"],
    },
)
