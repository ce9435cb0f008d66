"""Installs sgllie. The top-level kernels/ (Triton) is installed as the subpackage sgllie.kernels.

The compiled extension sgllie._C (csrc/) is added to EXT_MODULES when its sources exist; until then
the package is pure Python and runs on its reference backend.
"""
from pathlib import Path

from setuptools import setup

ROOT = Path(__file__).parent


def version() -> str:
    for line in (ROOT / "sgllie" / "__init__.py").read_text().splitlines():
        if line.startswith("__version__"):
            return line.split('"')[1]
    raise RuntimeError("sgllie/__init__.py has no __version__")


def ext_modules():
    """C++/CUDA sources under csrc/ built into sgllie._C with torch's cpp_extension and ninja."""
    sources = sorted(str(p) for p in (ROOT / "csrc").rglob("*.cpp"))
    if not sources:
        return [], {}
    from torch.utils.cpp_extension import BuildExtension, CppExtension
    ext = CppExtension("sgllie._C", sources, extra_compile_args={"cxx": ["-O3", "-fopenmp"]},
                       extra_link_args=["-fopenmp"])
    return [ext], {"build_ext": BuildExtension.with_options(use_ninja=True)}


EXT_MODULES, CMDCLASS = ext_modules()

setup(
    name="sgllie",
    version=version(),
    description="SGZ semantic-guided zero-shot low-light image/video enhancement with fused ops",
    long_description=(ROOT / "README.md").read_text(),
    long_description_content_type="text/markdown",
    license="MIT",
    python_requires=">=3.10",
    packages=["sgllie", "sgllie.ops", "sgllie.kernels"],
    package_dir={"sgllie.kernels": "kernels"},
    package_data={"sgllie": ["weights/*.pth", "weights/*.md"]},
    install_requires=["torch>=2.4", "numpy", "opencv-python-headless", "tqdm", "matplotlib", "pillow"],
    extras_require={"test": ["pytest", "pytest-benchmark", "triton; platform_system == 'Linux'"]},
    ext_modules=EXT_MODULES,
    cmdclass=CMDCLASS,
)
